"""Read and write MLIP-3 ``.cfg`` configuration files (spec §3.2) without loss.

Format, one block per configuration::

    BEGIN_CFG
     Size
        N
     Supercell                      1-3 rows = lattice vectors; absent = molecule
        a1x a1y a1z
     AtomData:  id type cartes_x cartes_y cartes_z [site_en] [fx fy fz] ...
        N lines, columns read by name in any order
     Energy
        E
     PlusStress:  xx yy zz yz xz xy   (names read in any order)
        Sxx Syy Szz Syz Sxz Sxy
     Feature   key<TAB>value          kept verbatim, repeated keys kept
    END_CFG

Decisions worth knowing:

- **Fewer Supercell rows** mean fewer periodic directions: k rows give
  ``pbc = [True]*k + [False]*(3-k)`` and the missing cell rows are zeros. No
  Supercell gives a molecule (zero cell, no periodicity). On writing, only the rows
  of periodic directions are written, in order; a configuration whose periodic
  directions are not the leading ones (say ``pbc = [F, T, T]``) is therefore
  re-read with its lattice vectors renumbered (same geometry, since positions are
  Cartesian), and a non-periodic direction's cell row is dropped.
- **Direct coordinates** (``direct_x/y/z``) need a three-row Supercell; they are
  converted to Cartesian on reading, and the writer always writes Cartesian.
- **Moments are collinear**: ``magmom_x`` is the moment; a non-zero ``magmom_y/z``
  (or ``en_der_my/mz``) is an error rather than being dropped.
- **Sign of en_der**: MLIP-3 stores +∂E/∂m. Some data sets store the magnetic
  force −∂E/∂m instead, so the reader takes ``en_der_sign`` (+1 or −1, the caller
  decides; nothing is guessed) and stores ``en_der_sign * en_der_mx`` as
  ``Configuration.magnetic_gradient``. The writer always writes MLIP-3's sign.
- **Feature values** are the text after the single tab/space that follows the key,
  up to the end of the line, so ``MV_grade\\t 1.37`` keeps its leading space.
  A repeated key becomes a list of values (in file order); on writing, all values of
  one key are written together at the key's first position.
- The non-standard MLIP-3 column ``ghost`` (true/false, written by neighbourhood
  selection) is kept in ``Configuration.ghost``.
- Floats are written with ``%.16e`` (17 significant digits), which re-reads to the
  identical float64, so a write/read round trip is bit-exact.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator
from typing import TextIO

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.system.configuration import Configuration

# Order in which MLIP-3 writes the AtomData columns (ref_alfe_efs.cfg, 04_graded.cfg;
# ``ghost`` precedes ``nbh_grades`` in preselected.cfg).
COLUMN_ORDER = ("id", "type", "cartes_x", "cartes_y", "cartes_z", "site_en", "fx", "fy", "fz",
                "magmom_x", "magmom_y", "magmom_z", "en_der_mx", "en_der_my", "en_der_mz",
                "ghost", "nbh_grades")
KNOWN_COLUMNS = frozenset(COLUMN_ORDER) | {"direct_x", "direct_y", "direct_z"}
# Columns that only make sense as a complete group.
COLUMN_GROUPS = (("cartes_x", "cartes_y", "cartes_z"), ("direct_x", "direct_y", "direct_z"),
                 ("fx", "fy", "fz"))
STRESS_ORDER = ("xx", "yy", "zz", "yz", "xz", "xy")
STRESS_INDEX = {"xx": (0, 0), "yy": (1, 1), "zz": (2, 2), "yz": (1, 2), "xz": (0, 2), "xy": (0, 1)}
KEYWORDS = frozenset({"BEGIN_CFG", "END_CFG", "Size", "Supercell", "AtomData:", "Energy",
                      "PlusStress:", "Feature"})
GHOST_VALUES = {"true": True, "false": False, "1": True, "0": False}

_FEATURE_RE = re.compile(r"\s*Feature[ \t]+(\S+)(?:[ \t](.*))?\Z", re.DOTALL)


# ===================================================================== reading
def read_cfg(path: str | os.PathLike | TextIO, en_der_sign: int = +1) -> list[Configuration]:
    """All configurations of an MLIP-3 ``.cfg`` file.

    ``en_der_sign``: +1 when the file's ``en_der_*`` columns hold +∂E/∂m (MLIP-3), −1
    when they hold the magnetic force −∂E/∂m.
    """
    return list(iter_cfg(path, en_der_sign=en_der_sign))


def iter_cfg(path: str | os.PathLike | TextIO, en_der_sign: int = +1) -> Iterator[Configuration]:
    """Yield the configurations of a ``.cfg`` file one at a time (constant memory)."""
    # checked here, not inside the generator, so a bad option fails at the call
    return _iter_path(path, _check_sign(en_der_sign))


def _iter_path(path: str | os.PathLike | TextIO, sign: float) -> Iterator[Configuration]:
    if isinstance(path, (str, os.PathLike)):
        with open(path, encoding="utf-8") as f:
            yield from _iter_stream(f, str(path), sign)
    else:
        yield from _iter_stream(path, str(getattr(path, "name", "<stream>")), sign)


def _check_sign(en_der_sign: int) -> float:
    if en_der_sign not in (1, -1):
        raise InputError(f"must be +1 or -1, got {en_der_sign!r}", field="en_der_sign")
    return float(en_der_sign)


class _Lines:
    """Numbered lines of a text stream with push-back (so a section can end on a peek); bytes
    that are not UTF-8 are an error naming the file and line."""

    def __init__(self, stream: Iterable[str], name: str = "<stream>"):
        self._it = self._checked(iter(stream))
        self._back: list[tuple[int, str]] = []
        self.lineno = 0            # number of the last line taken from the stream
        self.name = name

    def _checked(self, it: Iterator[str]) -> Iterator[str]:
        while True:
            try:
                line = next(it)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start} of the buffer)",
                                 path=self.name, line=self.lineno + 1) from None
            yield line

    def next(self) -> tuple[int, str] | None:
        if self._back:
            return self._back.pop()
        line = next(self._it, None)
        if line is None:
            return None
        self.lineno += 1
        return self.lineno, line

    def push(self, item: tuple[int, str]) -> None:
        self._back.append(item)

    def take(self, n: int) -> tuple[int, list[str]]:
        """The next n raw lines (fewer at end of file) and the number of the first."""
        first = self.lineno + 1
        if self._back:  # only if a section peeked just before AtomData
            first = self._back[-1][0]
            head = []
            while self._back and len(head) < n:
                head.append(self._back.pop()[1])
            rest = list(itertools.islice(self._it, n - len(head)))
            self.lineno += len(rest)
            return first, head + rest
        lines = list(itertools.islice(self._it, n))
        self.lineno += len(lines)
        return first, lines


def _iter_stream(stream: Iterable[str], name: str, sign: float) -> Iterator[Configuration]:
    lines = _Lines(stream, name)
    while (item := lines.next()) is not None:
        lineno, line = item
        tokens = line.split()
        if not tokens:
            continue
        if tokens != ["BEGIN_CFG"]:
            raise InputError(f"expected BEGIN_CFG, found {line.strip()[:60]!r}", path=name, line=lineno)
        yield _read_one(lines, name, lineno, sign)


def _parse_float(token: str, name: str, lineno: int, field: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"non-numeric value {token!r}", path=name, line=lineno, field=field) from None
    if not math.isfinite(value):
        raise InputError(f"value {token!r} is not a finite number", path=name, line=lineno,
                         field=field)
    return value


def _value_line(lines: _Lines, name: str, key_line: int, field: str, count: int) -> list[float]:
    """Read the line after a keyword line; it must hold exactly ``count`` finite numbers."""
    item = lines.next()
    if item is None:
        raise InputError(f"end of file where the {field} value was expected", path=name,
                         line=key_line, field=field)
    lineno, line = item
    tokens = line.split()
    if len(tokens) != count:
        raise InputError(f"expected {count} value{'s' if count > 1 else ''}, got {len(tokens)}",
                         path=name, line=lineno, field=field)
    return [_parse_float(t, name, lineno, field) for t in tokens]


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class _Block:
    """What has been read of one configuration so far."""

    def __init__(self, begin: int):
        self.begin = begin
        self.size: int | None = None
        self.size_line = 0
        self.cell_rows: list[list[float]] | None = None
        self.cell_line = 0
        self.columns: list[str] | None = None
        self.data: np.ndarray | None = None
        self.ghost: np.ndarray | None = None
        self.first_atom_line = 0
        self.energy: float | None = None
        self.virial: np.ndarray | None = None
        self.features: dict = {}
        self.seen: dict[str, int] = {}
        self.last_key = "BEGIN_CFG"


def _note_key(blk: _Block, key: str, name: str, lineno: int) -> None:
    """A key may appear once per configuration (Feature lines excepted)."""
    if key in blk.seen and key != "Feature":
        raise InputError(f"{key} given twice in one configuration (first at line {blk.seen[key]})",
                         path=name, line=lineno, field=key)
    blk.seen[key] = lineno


def _common_key(blk: _Block, lines: _Lines, name: str, lineno: int, line: str, tokens: list[str]) -> bool:
    """Size, Supercell, Energy, PlusStress and Feature lines (and what follows them) into ``blk``;
    False for any other key."""
    key = tokens[0]
    if key == "Size" and len(tokens) == 1:
        (value,) = _value_line(lines, name, lineno, "Size", 1)
        if not value.is_integer() or value < 0 or value > 2**40:
            raise InputError(f"Size must be a non-negative integer, got {value!r}", path=name,
                             line=lines.lineno, field="Size")
        blk.size, blk.size_line = int(value), lines.lineno
    elif key == "Supercell" and len(tokens) == 1:
        blk.cell_rows, blk.cell_line = _read_supercell(lines, name, lineno), lineno
    elif key == "Energy" and len(tokens) == 1:
        (blk.energy,) = _value_line(lines, name, lineno, "Energy", 1)
    elif key == "PlusStress:":
        blk.virial = _read_stress(lines, name, lineno, tokens[1:])
    elif key == "Feature":
        _add_feature(blk.features, line, name, lineno)
    else:
        return False
    return True


def _read_one(lines: _Lines, name: str, begin: int, sign: float) -> Configuration:
    blk = _Block(begin)
    while True:
        item = lines.next()
        if item is None:
            raise InputError(f"end of file before END_CFG (configuration begins at line {begin})",
                             path=name, line=lines.lineno, field="END_CFG")
        lineno, line = item
        tokens = line.split()
        if not tokens:
            continue
        key = tokens[0]
        if key == "END_CFG" and len(tokens) == 1:
            return _finish(blk, name, lineno, sign)
        if key == "BEGIN_CFG":
            raise InputError(f"BEGIN_CFG before END_CFG (configuration begins at line {begin})",
                             path=name, line=lineno, field="END_CFG")
        _note_key(blk, key, name, lineno)
        if _common_key(blk, lines, name, lineno, line, tokens):
            pass
        elif key == "AtomData:":
            _read_atom_data(lines, name, lineno, tokens[1:], blk)
        elif blk.last_key == "AtomData:" and _looks_numeric(key):
            raise InputError(f"more atom lines than Size = {blk.size} (line {blk.size_line})",
                             path=name, line=lineno, field="Size")
        else:
            raise InputError(f"unknown key or misplaced line {line.strip()[:60]!r}", path=name,
                             line=lineno, field=key)
        blk.last_key = key


def _read_supercell(lines: _Lines, name: str, key_line: int) -> list[list[float]]:
    rows: list[list[float]] = []
    while len(rows) < 3:
        item = lines.next()
        if item is None:
            break
        tokens = item[1].split()
        if not tokens or not _looks_numeric(tokens[0]):
            lines.push(item)
            break
        if len(tokens) != 3:
            raise InputError(f"a Supercell row needs 3 values, got {len(tokens)}", path=name,
                             line=item[0], field="Supercell")
        rows.append([_parse_float(t, name, item[0], "Supercell") for t in tokens])
    if not rows:
        raise InputError("Supercell without lattice vectors", path=name, line=key_line,
                         field="Supercell")
    return rows


def _read_stress(lines: _Lines, name: str, key_line: int, names: list[str]) -> np.ndarray:
    if sorted(names) != sorted(STRESS_ORDER):
        raise InputError(f"PlusStress needs the components {' '.join(STRESS_ORDER)} (any order), "
                         f"got {' '.join(names) or 'none'}", path=name, line=key_line,
                         field="PlusStress")
    values = _value_line(lines, name, key_line, "PlusStress", 6)
    virial = np.empty((3, 3))
    for comp, value in zip(names, values, strict=True):
        a, b = STRESS_INDEX[comp]
        virial[a, b] = virial[b, a] = value
    return virial


def _add_feature(features: dict, line: str, name: str, lineno: int) -> None:
    m = _FEATURE_RE.match(line.rstrip("\r\n"))
    if m is None:
        raise InputError("Feature line without a name", path=name, line=lineno, field="Feature")
    key, value = m.group(1), m.group(2) or ""
    if key not in features:
        features[key] = value
    elif isinstance(features[key], list):
        features[key].append(value)
    else:
        features[key] = [features[key], value]


def _check_columns(columns: list[str], name: str, lineno: int) -> None:
    def fail(message: str, field: str = "AtomData") -> None:
        raise InputError(message, path=name, line=lineno, field=field)

    for col in columns:
        if col not in KNOWN_COLUMNS:
            fail(f"unknown column {col!r} (known: {' '.join(COLUMN_ORDER)} direct_x direct_y direct_z)")
        if columns.count(col) > 1:
            fail(f"column {col!r} given twice")
    for group in COLUMN_GROUPS:
        present = [c for c in group if c in columns]
        if present and len(present) < 3:
            fail(f"incomplete column group: has {' '.join(present)}, needs {' '.join(group)}")
    # y/z of moments and en_der are optional (they must be zero), x is the value.
    for main, others in (("magmom_x", ("magmom_y", "magmom_z")),
                         ("en_der_mx", ("en_der_my", "en_der_mz"))):
        if main not in columns and any(c in columns for c in others):
            fail(f"{' / '.join(c for c in others if c in columns)} without {main}")
    if "type" not in columns:
        fail("AtomData needs a 'type' column")
    has_cart, has_direct = "cartes_x" in columns, "direct_x" in columns
    if has_cart == has_direct:
        fail("AtomData needs either cartes_x/y/z or direct_x/y/z columns (exactly one set)")


def _read_atom_data(lines: _Lines, name: str, lineno: int, columns: list[str], blk: _Block) -> None:
    _check_columns(columns, name, lineno)
    if blk.size is None:
        raise InputError("AtomData before Size", path=name, line=lineno, field="Size")
    size, ncol = blk.size, len(columns)
    first, raw = lines.take(size)
    blk.columns, blk.first_atom_line = columns, first
    if size == 0:
        blk.data = np.empty((0, ncol - ("ghost" in columns)))
        blk.ghost = np.empty(0, dtype=bool) if "ghost" in columns else None
        return
    data, ghost = _parse_atom_lines(raw, columns) if len(raw) == size else (None, None)
    if data is None or data.shape != (size, ncol - (ghost is not None)) \
            or not np.isfinite(data).all():
        _raise_atom_error(raw, first, columns, blk, name, lines.lineno)
    num_cols = [c for c in columns if c != "ghost"]
    for col in ("id", "type"):
        values = data[:, num_cols.index(col)] if col in num_cols else None
        if values is not None and (np.any(values != np.round(values)) or
                                   (col == "type" and np.any(values < 0))):
            _raise_atom_error(raw, first, columns, blk, name, lines.lineno)
    blk.data, blk.ghost = data, ghost


def _parse_atom_lines(raw: list[str], columns: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Fast path: the whole block in one NumPy call; (None, None) when anything is off."""
    if "ghost" not in columns:
        try:
            # loadtxt checks that every row has the same number of columns; blank lines
            # are skipped by it and show up as a short row count.
            return np.loadtxt(raw, dtype=np.float64, comments=None, ndmin=2), None
        except ValueError:
            return None, None
    # The ghost column holds words, so this (rare) layout goes through strings.
    rows = [line.split() for line in raw]
    if any(len(r) != len(columns) for r in rows):
        return None, None
    table = np.array(rows, dtype=str)
    g = columns.index("ghost")
    words = np.char.lower(table[:, g])
    if not np.isin(words, list(GHOST_VALUES)).all():
        return None, None
    try:
        data = np.delete(table, g, axis=1).astype(np.float64)
    except ValueError:
        return None, None
    return data, np.isin(words, ["true", "1"])


def _raise_atom_error(raw: list[str], first: int, columns: list[str], blk: _Block, name: str,
                      last_line: int) -> None:
    """Slow path: find the first bad atom line and say exactly what is wrong with it."""
    size, ncol = blk.size, len(columns)
    for i, line in enumerate(raw):
        lineno = first + i
        tokens = line.split()
        if not tokens:
            raise InputError("blank line inside AtomData", path=name, line=lineno, field="AtomData")
        if tokens[0] in KEYWORDS:
            raise InputError(f"Size = {size} (line {blk.size_line}) but AtomData has only {i} atom "
                             f"lines", path=name, line=lineno, field="Size")
        if len(tokens) != ncol:
            raise InputError(f"expected {ncol} columns ({' '.join(columns)}), got {len(tokens)}",
                             path=name, line=lineno, field="AtomData")
        for token, col in zip(tokens, columns, strict=True):
            if col == "ghost":
                if token.lower() not in GHOST_VALUES:
                    raise InputError(f"expected true or false, got {token!r}", path=name,
                                     line=lineno, field=col)
                continue
            value = _parse_float(token, name, lineno, col)
            if col in ("id", "type") and not value.is_integer():
                raise InputError(f"must be an integer, got {token!r}", path=name, line=lineno,
                                 field=col)
            if col == "type" and value < 0:
                raise InputError(f"must be >= 0, got {token!r}", path=name, line=lineno, field=col)
    if len(raw) < size:
        raise InputError(f"end of file inside AtomData: Size = {size} (line {blk.size_line}) but "
                         f"only {len(raw)} atom lines", path=name, line=last_line, field="Size")
    raise InputError("malformed AtomData block", path=name, line=first, field="AtomData")


def _finish(blk: _Block, name: str, end_line: int, sign: float) -> Configuration:
    if blk.size is None:
        raise InputError(f"configuration beginning at line {blk.begin} has no Size", path=name,
                         line=end_line, field="Size")
    if blk.columns is None:
        if blk.size:
            raise InputError(f"configuration beginning at line {blk.begin} has no AtomData",
                             path=name, line=end_line, field="AtomData")
        blk.columns, blk.data = ["id", "type", "cartes_x", "cartes_y", "cartes_z"], np.empty((0, 5))
    cols = [c for c in blk.columns if c != "ghost"]
    data = blk.data

    def col(c: str) -> np.ndarray:
        return data[:, cols.index(c)]

    def cols3(names: tuple[str, str, str]) -> np.ndarray:
        return data[:, [cols.index(c) for c in names]]

    n_rows = 0 if blk.cell_rows is None else len(blk.cell_rows)
    cell = np.zeros((3, 3))
    if n_rows:
        cell[:n_rows] = blk.cell_rows
    pbc = np.arange(3) < n_rows
    if "cartes_x" in cols:
        positions = cols3(("cartes_x", "cartes_y", "cartes_z"))
    else:
        if n_rows != 3:
            raise InputError("direct coordinates need a Supercell with 3 rows", path=name,
                             line=blk.cell_line or blk.first_atom_line - 1, field="direct_x")
        positions = direct_to_cartesian(cols3(("direct_x", "direct_y", "direct_z")), cell)

    for c in ("magmom_y", "magmom_z", "en_der_my", "en_der_mz"):
        if c in cols and np.any(col(c) != 0):
            i = int(np.flatnonzero(col(c))[0])
            raise InputError(f"non-collinear value {float(col(c)[i])!r}; only collinear moments "
                             "(along x, y = z = 0) are supported", path=name,
                             line=blk.first_atom_line + i, field=c)

    def optional(c: str) -> np.ndarray | None:
        return col(c) if c in cols else None

    magnetic_gradient = optional("en_der_mx")
    if magnetic_gradient is not None:
        magnetic_gradient = sign * magnetic_gradient
    return Configuration(
        cell=cell, positions=positions, types=col("type").astype(np.int64), pbc=pbc,
        ids=col("id").astype(np.int64) if "id" in cols else None,
        magmoms=optional("magmom_x"), energy=blk.energy,
        forces=cols3(("fx", "fy", "fz")) if "fx" in cols else None,
        virial=blk.virial, site_energies=optional("site_en"),
        magnetic_gradient=magnetic_gradient, nbh_grades=optional("nbh_grades"),
        features=blk.features, ghost=blk.ghost)


def direct_to_cartesian(direct: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """``direct @ cell`` written out term by term, so that the result of a row does not depend on
    how many rows are converted at once (a chunked reader gives the same floats)."""
    d = np.asarray(direct, dtype=np.float64)
    return (d[:, 0:1] * cell[0][None, :] + d[:, 1:2] * cell[1][None, :]) + d[:, 2:3] * cell[2][None, :]


class CfgAtomStream:
    """One configuration of an MLIP-3 file, its atoms read a chunk at a time (distributed MD
    set-up: rank 0 reads, the chunks go to the owners), so the reader never holds more than
    one chunk of atoms.

    The header up to ``AtomData`` is read at construction: ``size``, ``cell``, ``pbc``,
    ``has_moments``. :meth:`chunks` then yields dicts ``ids``, ``types``, ``positions``,
    ``magmoms`` (or None) with the values :func:`read_cfg` gives for the same atoms (labels
    are skipped; ids default to 1, 2, … as in :class:`Configuration`), and checks the rest of
    the block. Errors are the same :class:`InputError` s, with file and line.

    :class:`NotStreamable` is raised at construction for a layout this reader does not
    handle (no ``Size`` or ``Supercell`` before ``AtomData``, or a ``ghost`` column); the
    caller reads the file whole then.
    """

    class NotStreamable(Exception):
        pass

    def __init__(self, path: str | os.PathLike, index: int = 0):
        self.name = str(path)
        self._file = open(path, encoding="utf-8")
        try:
            self._lines = _Lines(self._file, self.name)
            self._header(int(index))
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CfgAtomStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _header(self, index: int) -> None:
        lines, name = self._lines, self.name
        seen = -1
        begin = 0
        while seen < index:
            item = lines.next()
            if item is None:
                raise InputError(f"structure_index {index} but the file holds {seen + 1} configuration(s)",
                                 path=name, field="system.structure_index")
            if item[1].split() == ["BEGIN_CFG"]:
                seen += 1
                begin = item[0]
        blk = _Block(begin)
        while True:
            item = lines.next()
            if item is None:
                raise InputError(f"end of file before END_CFG (configuration begins at line {begin})",
                                 path=name, line=lines.lineno, field="END_CFG")
            lineno, line = item
            tokens = line.split()
            if not tokens:
                continue
            key = tokens[0]
            if key in ("END_CFG", "BEGIN_CFG"):
                raise self.NotStreamable(f"no AtomData in the configuration at line {begin}")
            _note_key(blk, key, name, lineno)
            if _common_key(blk, lines, name, lineno, line, tokens):
                continue
            if key == "AtomData:":
                columns = tokens[1:]
                _check_columns(columns, name, lineno)
                if blk.size is None:
                    raise InputError("AtomData before Size", path=name, line=lineno, field="Size")
                if blk.cell_rows is None or "ghost" in columns:
                    raise self.NotStreamable("Supercell after AtomData, or a ghost column")
                blk.columns = columns
                break
            raise InputError(f"unknown key or misplaced line {line.strip()[:60]!r}", path=name,
                             line=lineno, field=key)
        n_rows = len(blk.cell_rows)
        self.cell = np.zeros((3, 3))
        self.cell[:n_rows] = blk.cell_rows
        self.pbc = np.arange(3) < n_rows
        if "cartes_x" not in blk.columns and n_rows != 3:
            raise InputError("direct coordinates need a Supercell with 3 rows", path=name,
                             line=blk.cell_line, field="direct_x")
        self.size = int(blk.size)
        self.columns = list(blk.columns)
        self.has_moments = "magmom_x" in self.columns
        self._blk = blk
        self._done = 0

    def chunks(self, chunk_atoms: int) -> Iterator[dict[str, np.ndarray | None]]:
        lines, name, blk, cols = self._lines, self.name, self._blk, self.columns
        chunk_atoms = max(1, int(chunk_atoms))
        while self._done < self.size:
            want = min(chunk_atoms, self.size - self._done)
            first, raw = lines.take(want)
            data = _parse_atom_lines(raw, cols)[0] if len(raw) == want else None
            bad = data is None or data.shape != (want, len(cols)) or not np.isfinite(data).all()
            if not bad:
                for c in ("id", "type"):
                    if c in cols:
                        v = data[:, cols.index(c)]
                        bad = bad or bool(np.any(v != np.round(v))) or (c == "type" and bool(np.any(v < 0)))
            if bad:
                part = _Block(blk.begin)
                part.size, part.size_line = want, blk.size_line
                _raise_atom_error(raw, first, cols, part, name, lines.lineno)

            def col(c: str) -> np.ndarray:
                return data[:, cols.index(c)]

            for c in ("magmom_y", "magmom_z"):
                if c in cols and np.any(col(c) != 0):
                    i = int(np.flatnonzero(col(c))[0])
                    raise InputError(f"non-collinear value {float(col(c)[i])!r}; only collinear moments "
                                     "(along x, y = z = 0) are supported", path=name, line=first + i, field=c)
            if "cartes_x" in cols:
                positions = data[:, [cols.index(c) for c in ("cartes_x", "cartes_y", "cartes_z")]]
            else:
                positions = direct_to_cartesian(
                    data[:, [cols.index(c) for c in ("direct_x", "direct_y", "direct_z")]], self.cell)
            ids = (col("id").astype(np.int64) if "id" in cols
                   else np.arange(self._done + 1, self._done + want + 1, dtype=np.int64))
            self._done += want
            yield {"ids": ids, "types": col("type").astype(np.int64),
                   "positions": np.ascontiguousarray(positions),
                   "magmoms": np.array(col("magmom_x")) if self.has_moments else None}
        self._finish_block()

    def _finish_block(self) -> None:
        """The rest of the block up to END_CFG: known keys only, no extra atom lines."""
        lines, name, blk = self._lines, self.name, self._blk
        last = "AtomData:"
        while True:
            item = lines.next()
            if item is None:
                raise InputError(f"end of file before END_CFG (configuration begins at line {blk.begin})",
                                 path=name, line=lines.lineno, field="END_CFG")
            lineno, line = item
            tokens = line.split()
            if not tokens:
                continue
            key = tokens[0]
            if key == "END_CFG" and len(tokens) == 1:
                return
            if key == "BEGIN_CFG":
                raise InputError(f"BEGIN_CFG before END_CFG (configuration begins at line {blk.begin})",
                                 path=name, line=lineno, field="END_CFG")
            _note_key(blk, key, name, lineno)
            if key in ("Energy", "PlusStress:", "Feature") and _common_key(blk, lines, name, lineno, line, tokens):
                pass
            elif last == "AtomData:" and _looks_numeric(key):
                raise InputError(f"more atom lines than Size = {blk.size} (line {blk.size_line})",
                                 path=name, line=lineno, field="Size")
            else:
                raise InputError(f"unknown key or misplaced line {line.strip()[:60]!r}", path=name,
                                 line=lineno, field=key)
            last = key


# ===================================================================== writing
def write_cfg(path_or_textfile: str | os.PathLike | TextIO,
              configs: Configuration | Iterable[Configuration], fmt: str = "%.16e",
              append: bool = False) -> int:
    """Write configurations in MLIP-3 ``.cfg`` format; return how many were written.

    Only the columns and sections a configuration has are written. A path is written
    atomically (temporary file + rename); ``append=True`` adds to an existing file.
    ``fmt`` is the printf format of every float; the default is exact for float64.
    """
    if isinstance(configs, Configuration):
        configs = [configs]
    if isinstance(path_or_textfile, (str, os.PathLike)):
        with atomic_path(path_or_textfile, copy_existing=append) as tmp:
            with open(tmp, "a" if append else "w", encoding="utf-8") as f:
                return _write_stream(f, configs, fmt)
    return _write_stream(path_or_textfile, configs, fmt)


def format_cfg(configs: Configuration | Iterable[Configuration], fmt: str = "%.16e") -> str:
    """The ``.cfg`` text of configurations (handy for tests and small outputs)."""
    buf = io.StringIO()
    write_cfg(buf, configs, fmt)
    return buf.getvalue()


def _write_stream(f: TextIO, configs: Iterable[Configuration], fmt: str) -> int:
    count = 0
    for cfg in configs:
        f.write(_format_one(cfg, fmt))
        count += 1
    return count


# Header text of each AtomData column group as MLIP-3 prints it (so files written here
# diff cleanly against MLIP-3's own full-precision output).
_HEADERS = {
    "cartes": "       cartes_x      cartes_y      cartes_z",
    "site_en": "            site_en",
    "forces": "           fx          fy          fz",
    "magmom": "      magmom_x     magmom_y     magmom_z",
    "en_der": "      en_der_mx     en_der_my     en_der_mz",
    "ghost": "     ghost",
    "nbh_grades": "       nbh_grades",
}


def _format_one(cfg: Configuration, fmt: str) -> str:
    out = ["BEGIN_CFG", " Size", f"    {cfg.n_atoms}"]
    rows = cfg.cell[cfg.pbc]
    if len(rows):
        out.append(" Supercell")
        out.extend("    " + " ".join(fmt % v for v in row) for row in rows)

    n = cfg.n_atoms
    zeros = [0.0] * n
    # (header, formats, columns): a group is printed after two spaces, its values
    # separated by one, as MLIP-3 does.
    groups: list[tuple[str, list[str], list[list]]] = []

    def add(header: str, *columns: np.ndarray | list, col_fmt: str = fmt) -> None:
        groups.append((_HEADERS[header], [col_fmt] * len(columns),
                       [c.tolist() if isinstance(c, np.ndarray) else c for c in columns]))

    add("cartes", *cfg.positions.T)
    if cfg.site_energies is not None:
        add("site_en", cfg.site_energies)
    if cfg.forces is not None:
        add("forces", *cfg.forces.T)
    if cfg.magmoms is not None:
        add("magmom", cfg.magmoms, zeros, zeros)
    if cfg.magnetic_gradient is not None:
        add("en_der", cfg.magnetic_gradient, zeros, zeros)
    if cfg.ghost is not None:
        add("ghost", ["true" if g else "false" for g in cfg.ghost.tolist()], col_fmt="%s")
    if cfg.nbh_grades is not None:
        add("nbh_grades", cfg.nbh_grades)

    out.append(" AtomData:  id type" + "".join(header for header, _, _ in groups))
    row_fmt = "    %d %d" + "".join("  " + " ".join(fmts) for _, fmts, _ in groups)
    columns = [cfg.ids.tolist(), cfg.types.tolist()] + [c for _, _, cols in groups for c in cols]
    out.extend(row_fmt % row for row in zip(*columns, strict=True))

    if cfg.energy is not None:
        out += [" Energy", "    " + fmt % cfg.energy]
    if cfg.virial is not None:
        out.append(" PlusStress:  " + "".join(f"{c:<12}" for c in STRESS_ORDER).rstrip())
        out.append("     " + " ".join(fmt % cfg.virial[STRESS_INDEX[c]] for c in STRESS_ORDER))
    for key, value in cfg.features.items():
        if not key or any(ch.isspace() for ch in key):
            raise InputError(f"feature name {key!r} cannot be written to a .cfg (empty or has "
                             "whitespace)", field="Feature")
        for v in value if isinstance(value, list) else [value]:
            v = str(v)
            if "\n" in v or "\r" in v:
                raise InputError(f"value of feature {key!r} spans lines", field="Feature")
            out.append(f" Feature   {key}\t{v}")
    out += ["END_CFG", "", ""]
    return "\n".join(out)
