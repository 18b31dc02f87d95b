"""Input settings: how every TOML table of the product is declared, read and validated.

One module serves ``mmtp md`` (:mod:`mmtp_hpc.dynamics.settings`), ``mmtp learn``
(:mod:`mmtp_hpc.active.learn_settings`) and the oracle tables (``[oracle]``,
``[oracle.abinit]``, ``[oracle.vasp]`` in :mod:`mmtp_hpc.active.oracles`). Each of those
declares its sections as dataclasses whose fields carry a default, a one-line description and
a checker (:func:`key`); this module holds what they share:

- the checkers (:func:`real`, :func:`integer`, :func:`choice`, :func:`boolean`, :func:`text`,
  :func:`path_with`, :func:`float_list`, :func:`int_list`, :func:`table`,
  :func:`per_species`, …), which raise :class:`Bad` with what was expected and what was found;
- :func:`read_toml`, which names the file (and the line of a syntax error);
- :func:`failer`, which turns a message, a section and a key into an :class:`InputError`
  naming the file, the line and the field;
- :func:`check_sections` and :func:`build_section`, which refuse unknown sections and keys
  (with the closest allowed name) and run every key's checker;
- :func:`describe_section`, which prints a section's keys, defaults and descriptions for
  ``--help-input`` from the same declarations.

Nothing here knows about MD, learning or DFT: the imports run one way, from the readers to
this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import field
from pathlib import Path
from typing import Any

from mmtp_hpc.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Check = Callable[[Any], Any]
Fail = Callable[..., InputError]


class Bad(ValueError):
    """Raised by checkers; the loader adds file, line and key."""


# --------------------------------------------------------------------------- declarations
def key(default: Any, doc: str, check: Check | None = None, **extra: Any) -> Any:
    """Declare a settings key: default, one-line doc and a checker returning the normalised value.

    ``extra`` goes into the field metadata: ``toml_name`` (the key's name in TOML when it is not
    a Python name, e.g. ``break``), ``resolve`` (a path, or a table of paths, resolved against
    the input file's directory by :func:`build_section`)."""
    meta = {"doc": doc, "check": check, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def toml_name(f: dataclasses.Field) -> str:
    return f.metadata.get("toml_name", f.name)


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def number(value: Any, what: str = "a number") -> float:
    """A finite float from an int or float (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad(f"expected {what}, got {type_name(value)} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise Bad(f"expected a finite number, got {value}")
    return value


# --------------------------------------------------------------------------- checkers
def optional(check: Check) -> Check:
    """``check``, with None (the key's default) passed through."""
    def run(value: Any) -> Any:
        return None if value is None else check(value)
    return run


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         optional: bool = False) -> Check:
    def check(value: Any) -> float | None:
        if value is None and optional:
            return None
        x = number(value)
        if lo is not None and (x < lo or (lo_open and x == lo)):
            raise Bad(f"expected a number {'>' if lo_open else '>='} {lo:g}, got {x:g}")
        if hi is not None and x > hi:
            raise Bad(f"expected a number <= {hi:g}, got {x:g}")
        return x
    return check


def positive(value: Any) -> float:
    """A finite number > 0."""
    x = number(value, "a finite number")
    if x <= 0:
        raise Bad(f"expected a positive number, got {value!r}")
    return x


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Bad(f"expected an integer, got {type_name(value)} {value!r}")
        if lo is not None and value < lo:
            raise Bad(f"expected an integer >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise Bad(f"expected an integer <= {hi}, got {value}")
        return int(value)
    return check


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Bad(f"expected one of {', '.join(map(repr, options))}, got {type_name(value)} {value!r}")
        v = value.lower()
        if v not in options:
            hint = difflib.get_close_matches(v, options, n=1)
            raise Bad(f"expected one of {', '.join(map(repr, options))}, got {value!r}"
                      + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        return v
    return check


def boolean(optional: bool = False) -> Check:
    def check(value: Any) -> bool | None:
        if value is None and optional:
            return None
        if not isinstance(value, bool):
            raise Bad(f"expected true or false, got {type_name(value)} {value!r}")
        return value
    return check


def text(optional: bool = True, nonempty: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or (nonempty and not value):
            raise Bad(f"expected a{' non-empty' if nonempty else ''} string, got {type_name(value)} "
                      f"{value!r}")
        return value
    return check


def path_with(*suffixes: str, optional: bool = True) -> Check:
    """A file name (ending in one of ``suffixes`` when given); "" counts as none."""
    def check(value: Any) -> str | None:
        if value is None or value == "":
            if optional:
                return None
            raise Bad("a file name is required")
        if not isinstance(value, str):
            raise Bad(f"expected a file name, got {type_name(value)} {value!r}")
        if suffixes and Path(value).suffix.lower() not in suffixes:
            raise Bad(f"expected a file name ending in {' or '.join(suffixes)}, got {value!r}")
        return value
    return check


def float_list(what: str, lo: float | None = None, lo_open: bool = False, optional: bool = True,
               ) -> Check:
    """One number or a list of numbers (returned as a list)."""
    def check(value: Any) -> list[float] | None:
        if value is None and optional:
            return None
        values = value if isinstance(value, list) else [value]
        if not values:
            raise Bad(f"expected {what} or a non-empty list of them, got an empty list")
        out = [number(v, what) for v in values]
        if lo is not None:
            for x in out:
                if x < lo or (lo_open and x == lo):
                    raise Bad(f"expected {what} {'>' if lo_open else '>='} {lo:g}, got {x:g}")
        return out
    return check


def int_list(n: int, lo: int | None = None) -> Check:
    """A list of exactly ``n`` integers (each >= ``lo``)."""
    def check(value: Any) -> list[int]:
        what = (f"a list of {n} positive integers" if lo == 1 else
                f"a list of {n} integers" + (f" >= {lo}" if lo is not None else ""))
        if not isinstance(value, list) or len(value) != n:
            raise Bad(f"expected {what}, got {type_name(value)} {value!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)
                   for v in value):
            raise Bad(f"expected {what}, got {value!r}")
        return [int(v) for v in value]
    return check


def interval(what: str = "in μB") -> Check:
    """``[min, max]`` with min < max."""
    def check(value: Any) -> list[float]:
        if not (isinstance(value, list) and len(value) == 2):
            raise Bad(f"expected [min, max] {what}, got {value!r}")
        lo, hi = (number(v, f"a value {what}") for v in value)
        if not lo < hi:
            raise Bad(f"expected [min, max] with min < max, got {value}")
        return [lo, hi]
    return check


def table(value: Any) -> dict:
    """Any TOML table (its values are checked by whoever uses them)."""
    if not isinstance(value, dict):
        raise Bad(f"expected a table, got {type_name(value)} {value!r}")
    return dict(value)


def per_species(check: Check, what: str, single: bool = True) -> Check:
    """One value for every species (when ``single``) or a table ``{Symbol = value}``."""
    def run(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for s, v in value.items():
                try:
                    out[str(s)] = check(v)
                except Bad as exc:
                    raise Bad(f"{s}: {exc}") from None
            return out
        if not single:
            raise Bad(f"expected a table {{Symbol = {what}}}, got {type_name(value)} {value!r}")
        return check(value)
    return run


# --------------------------------------------------------------------------- reading
def read_toml(path: str | Path) -> tuple[dict, str]:
    """The parsed TOML of an input file and its text; errors name the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("input file not found", path=str(path))
    raw = path.read_bytes()
    try:
        text_ = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text: {exc}", path=str(path)) from None
    try:
        return tomllib.loads(text_), text_
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise InputError(f"TOML syntax error: {exc}", path=str(path),
                         line=int(m.group(1)) if m else None) from None


def resolve_path(base_dir: str | Path, value: str | None) -> Path | None:
    """``value`` (``~`` expanded) relative to ``base_dir`` unless absolute; None stays None."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def find_line(text_: str | None, section: str | None, key_: str | None, index: int | None = None,
              array: str | None = None) -> int | None:
    """Line (1-based) of ``key = …`` in ``[section]``, or of the section header when ``key_`` is
    None. With ``array`` (an array of tables such as ``learn.md``) and ``index``, sections named
    ``array`` or ``array.*`` are searched in the ``index``-th ``[[array]]`` only."""
    if text_ is None or section is None:
        return None
    current, count = None, -1
    for lineno, line in enumerate(text_.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?", stripped)
        in_array = False
        if m:
            current = m.group(2)
            if m.group(1) == "[[" and current == array:
                count += 1
            in_array = array is not None and (current == array or current.startswith(array + "."))
            inside = index is None or not in_array or count == index
            if key_ is None and current == section and inside:
                return lineno
            continue
        if current is not None and array is not None:
            in_array = current == array or current.startswith(array + ".")
        inside = index is None or not in_array or count == index
        if current == section and key_ is not None and inside:
            if re.match(rf"^[\"']?{re.escape(key_)}[\"']?\s*=", stripped):
                return lineno
    return None


def failer(source: str | None, text_: str | None = None, array: str | None = None) -> Fail:
    """``fail(message, section=None, key=None, index=None)``: an :class:`InputError` naming the
    input file ``source``, the line of ``section.key`` in ``text_`` and the field
    ``section.key`` (``array[index].…`` inside the ``index``-th ``[[array]]``)."""
    where = source or "<settings>"

    def fail(message: str, section: str | None = None, key_: str | None = None,
             index: int | None = None) -> InputError:
        line = find_line(text_, section, key_, index, array) if text_ is not None else None
        name = None if section is None else (section if key_ is None else f"{section}.{key_}")
        if index is not None and name is not None and array is not None and name.startswith(array):
            name = f"{array}[{index}]" + name[len(array):]
        return InputError(message, path=where, line=line, field=name)
    return fail


def check_sections(data: Any, allowed: Iterable[str], fail: Fail) -> None:
    """``data`` is a table whose keys are all allowed section names (closest one suggested)."""
    allowed = list(allowed)
    if not isinstance(data, dict):
        raise fail("expected a table of sections")
    for name in data:
        if name not in allowed:
            hint = difflib.get_close_matches(name, allowed, n=1)
            raise fail(f"unknown section [{name}]; allowed sections: "
                       f"{', '.join('[' + s + ']' for s in allowed)}"
                       + (f" (did you mean [{hint[0]}]?)" if hint else ""), name)


def section_table(data: dict, name: str, fail: Fail) -> dict:
    """The table of section ``[name]`` ({} when absent); a non-table fails."""
    values = data.get(name, {})
    if not isinstance(values, dict):
        raise fail(f"[{name}] must be a table, got {type_name(values)}", name)
    return values


def build_section(cls: type, name: str, values: Any, fail: Fail, base_dir: str | Path | None = None,
                  index: int | None = None) -> Any:
    """The settings dataclass ``cls`` of section ``[name]`` from its TOML table: unknown keys
    (with a close match suggested) and bad values fail through ``fail(message, section, key)``.
    Keys declared with ``resolve=True`` are paths resolved against ``base_dir`` when given."""
    if not isinstance(values, dict):
        raise fail(f"[{name}] must be a table, got {type_name(values)}", name, None, index)
    fields = {toml_name(f): f for f in dataclasses.fields(cls)}
    for k in values:
        if k not in fields:
            hint = difflib.get_close_matches(k, list(fields), n=1)
            raise fail(f"unknown key {k!r}; allowed keys in [{name}]: {', '.join(fields)}"
                       + (f" (did you mean {hint[0]!r}?)" if hint else ""), name, k, index)
    kwargs = {}
    for k, f in fields.items():
        if k in values:
            kwargs[f.name] = check_value(f, values[k], name, fail, base_dir, index)
    return cls(**kwargs)


def check_value(f: dataclasses.Field, value: Any, section: str, fail: Fail,
                base_dir: str | Path | None = None, index: int | None = None) -> Any:
    """One key's value through its declared checker (and path resolution)."""
    try:
        out = f.metadata["check"](value)
    except Bad as exc:
        raise fail(str(exc), section, toml_name(f), index) from None
    if f.metadata.get("resolve") and base_dir is not None:
        if isinstance(out, str):
            out = str(resolve_path(base_dir, out))
        elif isinstance(out, dict):        # one path per species
            out = {s: str(resolve_path(base_dir, v)) if isinstance(v, str) else v for s, v in out.items()}
    return out


def section_dict(section: Any) -> dict:
    """A settings dataclass as its TOML table (what was resolved, for logs and HDF5 files)."""
    return {toml_name(f): getattr(section, f.name) for f in dataclasses.fields(section)}


def shown_default(f: dataclasses.Field) -> str:
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    if default is None:
        return "(none)"
    if isinstance(default, bool):
        return str(default).lower()
    return repr(default).replace("'", '"')


def describe_section(name: str, cls: type, key_width: int = 20, default_width: int = 14) -> list[str]:
    """``[name]`` and one line per key: name, default and description (for ``--help-input``)."""
    lines = [f"[{name}]"]
    for f in dataclasses.fields(cls):
        lines.append(f"  {toml_name(f):<{key_width}} = {shown_default(f):<{default_width}} "
                     f"# {f.metadata['doc']}")
    return lines
