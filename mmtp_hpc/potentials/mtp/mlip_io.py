"""Read and write MLIP-3 potential files (``.mtp``, ``.mtpr``, ``.almtp``) without loss.

This module's single job is the translation between MLIP-3's text format (plus the
binary active-set block of ``.almtp`` files) and :class:`MTPPotential`.

Reading
-------
The file is read as a token stream: indentation and line breaks between statements
carry no meaning (MLIP-3 itself reads with ``operator>>``). Statements are

* the header word ``MTP`` (first token),
* ``key = value`` -- scalars take one token, ``potential_name`` / ``potential_tag``
  take the rest of the line (the tag may be empty), lists are ``{...}`` and may be
  nested (``{{0, 0, 0, 0}, ...}``) and may span lines,
* ``radial_coeffs`` followed by C×C blocks, each a label ``a-b`` (species of the
  central atom, then of the neighbour) and K rows ``{R·M² numbers}``; the number at
  position ``k·M² + b·M + c`` of row μ of block ``a-b`` is ``C[a, b, μ, k, b', c']``
  of :class:`MTPPotential` (shape (C, C, K, R, M, M)).

Everything from ``<<<`` to the end of a line is a comment. Windows line ends are fine.
The magnetic interval is read in all three spellings in use:

* MLIP-3: ``magnetic_basis_type = BChebyshev`` then ``min_val``, ``max_val``, ``basis_size``;
* motep (1): ``min``, ``max``, ``size`` after ``magnetic_basis_type`` (motep also uses
  ``min``/``max``/``size`` after ``radial_basis_type`` for min_dist/max_dist/radial_basis_size);
* motep (2): flat ``min_mag``, ``max_mag``, ``mag_basis_size`` (anywhere, usually inside
  the radial block; ``magnetic_basis_type`` may then be absent, BChebyshev is implied).

As in MLIP-3, ``min_val``/``max_val``/``basis_size`` after ``radial_basis_type`` are
accepted for the radial basis, and a ``scaling`` inside the radial block multiplies the
global ``scaling``. ``scaling`` defaults to 1, ``potential_name``/``potential_tag`` are
optional. Without ``radial_coeffs`` (or with an empty ``radial_coeffs`` list, as
MLIP-3 itself saves untrained potentials) the potential is untrained and
``radial_coeffs`` is ``None``; ``species_coeffs`` and ``moment_coeffs`` come together
or not at all. Call :meth:`MTPPotential.init_default_params` for MLIP-3's defaults.

Every problem raises :class:`~mmtp_hpc.errors.InputError` naming file, line and key:
unknown keys (the message lists the known ones), duplicate or missing required keys,
counts that disagree with their ``*_count`` key, wrong row lengths, NaN/inf numbers.
Only the basis types the engine evaluates are accepted (``RBChebyshev`` radial,
``BChebyshev`` magnetic); ``radial_coeffs`` labels must be species indices 0..C-1
(MLIP-3's absolute atomic-number labels are rejected).

Extension keys (not MLIP-3)
---------------------------
MLIP-3 rejects keys it does not know, so these are written only when the potential
needs them, and a file that has them is readable by this package only:

* ``species_names = {Fe, Al}`` -- chemical symbols of types 0..C-1; written after
  ``potential_tag`` when :attr:`MTPPotential.species_names` is set.
* ``symmetric = true`` -- evaluate the spin-symmetrised energy ½[E(M) + E(−M)];
  written after ``potential_tag`` (and ``species_names``) only when true.
* ``species_min_val = {…}`` / ``species_max_val = {…}`` -- per-species magnetic
  interval (C values each, μB), written in the magnetic block *instead of*
  ``min_val``/``max_val`` only when the intervals differ between species; a file may
  not give both spellings.

Writing
-------
:func:`write_mtp` writes MLIP-3's spelling and layout (tabs, key order, ``a-b``
blocks). Numbers are written with 17 significant digits (``%.16e``; MLIP-3 itself
writes ``%.15e``, which is not always exact), so read → write → read is
bit-identical. ``scaling`` is written only when it differs from 1, as MLIP-3 does.

Active set (``.almtp``)
-----------------------
Everything from the line ``#MVS_v1.1`` to the end of the file is MLIP-3's MaxVol
selection state, partly binary. It is kept byte for byte in
``MTPPotential.active_set`` as an :class:`ActiveSetBlock` and written back unchanged.
Its layout, as MLIP-3 writes it (``CfgSelection::Save``, ``MaxVol::WriteData``)::

    #MVS_v1.1\\n
    energy_weight %.16e\\n  force_weight %.16e\\n  stress_weight %.16e\\n
    site_en_weight %.16e\\n  weight_scaling %d\\n        (one per line)
    #  A (n×n float64)  invA (n×n float64)  \\n#\\n        (raw, native = little-endian, row-major)
    "cfg_index eqn_index\\n" × n                          (-1 -1: initial row 1e-6·e_j)
    #\\n
    the active-set configurations as .cfg text (BEGIN_CFG ... END_CFG)

n is the number of parameters (``MTPPotential.n_params``). Row i of A is the i-th
selected row b (∂E/∂θ scaled, or ∂E_i/∂θ), stored invA is A⁻ᵀ (``A @ invA.T = I``;
MLIP-3 computes grades as ``max |B · invAᵀ|``). Equation indices within a
configuration of N atoms: 0 energy, 1..3N forces (1 + 3j + a), 1+3N..9+3N the 3×3
stress, 10+3N+j the site energy of atom j.

Dispatch
--------
:func:`load_potential` / :func:`save_potential` choose the format from the file
extension (``.mtp``, ``.mtpr``, ``.almtp`` here; ``.h5``/``.hdf5`` through
:mod:`mmtp_hpc.potentials.mtp.hdf5_io`); saving is atomic (:func:`mmtp_hpc.io.atomic.atomic_path`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.potentials.mtp.parameters import MAX_CUTOFF, MTPPotential

__all__ = [
    "ActiveSetBlock",
    "parse_active_set",
    "read_mtp",
    "write_mtp",
    "loads_mtp",
    "dumps_mtp",
    "load_potential",
    "save_potential",
    "MTP_EXTENSIONS",
    "H5_EXTENSIONS",
]

MTP_EXTENSIONS = (".mtp", ".mtpr", ".almtp")
H5_EXTENSIONS = (".h5", ".hdf5")

MVS_MARKER = b"#MVS_v1.1"
_FLOAT_FMT = "%.16e"     # 17 significant digits: every float64 survives the round trip

# --------------------------------------------------------------------------- keys
# canonical key -> kind. Kinds: "str" one token, "rest" rest of line, "int", "float",
# "bool", "nested_int" list of 4-int rows, "int_list", "float_list", "name_list".
_KIND = {
    "version": "str", "potential_name": "rest", "potential_tag": "rest",
    "scaling": "float", "radial_scaling": "float", "mag_scaling": "float",
    "species_count": "int",
    "radial_basis_type": "str", "min_dist": "float", "max_dist": "float", "radial_basis_size": "int",
    "magnetic_basis_type": "str", "mag_min": "float", "mag_max": "float", "mag_basis_size": "int",
    "species_mag_min": "float_list", "species_mag_max": "float_list",
    "radial_funcs_count": "int",
    "alpha_moments_count": "int", "alpha_index_basic_count": "int", "alpha_index_basic": "nested_int",
    "alpha_index_times_count": "int", "alpha_index_times": "nested_int",
    "alpha_scalar_moments": "int", "alpha_moment_mapping": "int_list",
    "species_coeffs": "float_list", "moment_coeffs": "float_list",
    "species_names": "name_list", "symmetric": "bool",
}

# spellings valid anywhere -> canonical key
_PLAIN = {k: k for k in (
    "version", "potential_name", "potential_tag", "species_count",
    "radial_basis_type", "min_dist", "max_dist", "radial_basis_size",
    "magnetic_basis_type", "radial_funcs_count",
    "alpha_moments_count", "alpha_index_basic_count", "alpha_index_basic",
    "alpha_index_times_count", "alpha_index_times", "alpha_scalar_moments",
    "alpha_moment_mapping", "species_coeffs", "moment_coeffs",
    "species_names", "symmetric")}
_PLAIN.update({"min_mag": "mag_min", "max_mag": "mag_max", "mag_basis_size": "mag_basis_size",
               "species_min_val": "species_mag_min", "species_max_val": "species_mag_max"})
# spellings whose meaning depends on the last *_basis_type seen
_CONTEXT = {
    "top": {"scaling": "scaling"},
    "radial": {"scaling": "radial_scaling", "min_val": "min_dist", "max_val": "max_dist",
               "basis_size": "radial_basis_size", "min": "min_dist", "max": "max_dist",
               "size": "radial_basis_size"},
    "magnetic": {"scaling": "mag_scaling", "min_val": "mag_min", "max_val": "mag_max",
                 "basis_size": "mag_basis_size", "min": "mag_min", "max": "mag_max",
                 "size": "mag_basis_size"},
}
_KNOWN_SPELLINGS = sorted(set(_PLAIN) | {k for d in _CONTEXT.values() for k in d} | {"MTP", "radial_coeffs"})

# order of the keys in a file (MLIP-3's), used to say where a missing key belongs
_ORDER = [
    "version", "potential_name", "scaling", "species_count", "potential_tag", "species_names",
    "symmetric", "radial_basis_type", "radial_scaling", "min_dist", "max_dist", "radial_basis_size",
    "magnetic_basis_type", "mag_scaling", "mag_min", "species_mag_min", "mag_max", "species_mag_max",
    "mag_basis_size", "radial_funcs_count", "radial_coeffs", "alpha_moments_count",
    "alpha_index_basic_count", "alpha_index_basic", "alpha_index_times_count", "alpha_index_times",
    "alpha_scalar_moments", "alpha_moment_mapping", "species_coeffs", "moment_coeffs",
]
_REQUIRED = [
    "version", "species_count", "radial_basis_type", "min_dist", "max_dist", "radial_basis_size",
    "radial_funcs_count", "alpha_moments_count", "alpha_index_basic_count", "alpha_index_basic",
    "alpha_index_times_count", "alpha_index_times", "alpha_scalar_moments", "alpha_moment_mapping",
]
_SPELLING = {"mag_min": "min_val", "mag_max": "max_val", "mag_basis_size": "basis_size",
             "species_mag_min": "species_min_val", "species_mag_max": "species_max_val",
             "radial_scaling": "scaling", "mag_scaling": "scaling"}

_STMT = re.compile(
    r"[ \t\r\n]*(?:(?P<word>[A-Za-z_][A-Za-z0-9_]*)(?P<eq>[ \t]*=)?"
    r"|(?P<brace>\{)|(?P<other>\S+)|(?P<end>\Z))")
_TOKEN = re.compile(r"[ \t]*([^\s{}]*)")
_REST = re.compile(r"[^\r\n]*")
_LABEL = re.compile(r"[ \t\r\n]*(\d+)-(\d+)(?=\s)")
_ROW_START = re.compile(r"[ \t\r\n]*\{")
_FLAT_LIST = re.compile(r"[ \t\r\n]*(\{[^{}]*\})")
_NESTED_LIST = re.compile(r"[ \t\r\n]*(\{\s*(?:\{[^{}]*\}\s*(?:,\s*\{[^{}]*\}\s*)*)?\})")
_INNER = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_COMMENT = re.compile(r"<<<[^\r\n]*")


class _Lines:
    """Line numbers (1-based) of character offsets, fast for increasing offsets."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1

    def at(self, pos: int) -> int:
        if pos < self.pos:
            self.pos, self.line = 0, 1
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


@dataclass
class _Item:
    value: object
    line: int
    spelling: str


# --------------------------------------------------------------------------- active set
@dataclass(eq=False)
class ActiveSetBlock:
    """MLIP-3's MaxVol selection state (the ``#MVS_v1.1`` block of an ``.almtp``).

    ``raw`` is the block byte for byte (from ``#MVS_v1.1`` to the end of the file);
    :meth:`to_bytes` returns it, so a potential read and written again keeps it
    exactly. The parsed fields (``None`` when only raw bytes are known):

    * ``energy_weight``, ``force_weight``, ``stress_weight``, ``site_en_weight``,
      ``weight_scaling`` -- MLIP-3's selection weights;
    * ``matrix`` -- A (n, n), row i = the i-th active-set row b;
    * ``inverse`` -- MLIP-3's stored ``invA`` = A⁻ᵀ, so ``matrix @ inverse.T = I``
      and the grade of a row b is ``max |inverse @ b|`` (use :attr:`inv_matrix` for A⁻¹);
    * ``cfg_indices``, ``eqn_indices`` (n,) -- row i comes from equation
      ``eqn_indices[i]`` of configuration ``cfg_indices[i]`` of ``cfg_text``
      (both -1 for an initial row 1e-6·e_j);
    * ``cfg_text`` -- the active-set configurations in MLIP-3 ``.cfg`` format.
    """

    raw: bytes
    energy_weight: float | None = None
    force_weight: float | None = None
    stress_weight: float | None = None
    site_en_weight: float | None = None
    weight_scaling: int | None = None
    matrix: np.ndarray | None = None
    inverse: np.ndarray | None = None
    cfg_indices: np.ndarray | None = None
    eqn_indices: np.ndarray | None = None
    cfg_text: str | None = None

    def to_bytes(self) -> bytes:
        return self.raw

    @property
    def n(self) -> int | None:
        return None if self.matrix is None else int(self.matrix.shape[0])

    @property
    def inv_matrix(self) -> np.ndarray:
        """A⁻¹ (the transpose of the stored ``inverse``)."""
        return self.inverse.T

    @property
    def n_configurations(self) -> int:
        return 0 if self.cfg_text is None else self.cfg_text.count("BEGIN_CFG")

    def inverse_residual(self) -> float:
        """max |A · invAᵀ − I| (round-off size for a consistent block)."""
        n = self.matrix.shape[0]
        return float(np.abs(self.matrix @ self.inverse.T - np.eye(n)).max())

    @classmethod
    def from_parts(cls, matrix: np.ndarray, inverse: np.ndarray, cfg_indices: np.ndarray,
                   eqn_indices: np.ndarray, cfg_text: str, *, energy_weight: float = 0.0,
                   force_weight: float = 0.0, stress_weight: float = 0.0,
                   site_en_weight: float = 1.0, weight_scaling: int = 2) -> ActiveSetBlock:
        """Build a block in MLIP-3's layout (``inverse`` is A⁻ᵀ, as MLIP-3 stores it)."""
        matrix = np.ascontiguousarray(matrix, dtype="<f8")
        inverse = np.ascontiguousarray(inverse, dtype="<f8")
        n = matrix.shape[0]
        if matrix.shape != (n, n) or inverse.shape != (n, n):
            raise ValueError("matrix and inverse must be square and of equal shape, "
                             f"got {matrix.shape}, {inverse.shape}")
        cfg_indices = np.asarray(cfg_indices, dtype=np.int64).reshape(n)
        eqn_indices = np.asarray(eqn_indices, dtype=np.int64).reshape(n)
        head = (f"#MVS_v1.1\nenergy_weight {_FLOAT_FMT % energy_weight}\n"
                f"force_weight {_FLOAT_FMT % force_weight}\nstress_weight {_FLOAT_FMT % stress_weight}\n"
                f"site_en_weight {_FLOAT_FMT % site_en_weight}\nweight_scaling {int(weight_scaling)}\n#")
        links = "".join(f"{c} {e}\n" for c, e in zip(cfg_indices.tolist(), eqn_indices.tolist(),
                                                                 strict=True))
        raw = b"".join([head.encode(), matrix.tobytes(), inverse.tobytes(), b"\n#\n", links.encode(),
                        b"#\n", cfg_text.encode("utf-8", "surrogateescape")])
        return cls(raw, float(energy_weight), float(force_weight), float(stress_weight),
                   float(site_en_weight), int(weight_scaling), matrix.copy(), inverse.copy(),
                   cfg_indices, eqn_indices, cfg_text)


def _links(body: bytes, start: int, n: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Parse n lines 'cfg eqn' and the closing '#\\n' from body[start:]; None if not there."""
    pos = start
    cfg = np.empty(n, dtype=np.int64)
    eqn = np.empty(n, dtype=np.int64)
    for i in range(n):
        end = body.find(b"\n", pos)
        if end < 0:
            return None
        parts = body[pos:end].split()
        if len(parts) != 2:
            return None
        try:
            cfg[i], eqn[i] = int(parts[0]), int(parts[1])
        except ValueError:
            return None
        pos = end + 1
    if body[pos:pos + 2] != b"#\n":
        return None
    return cfg, eqn, pos + 2


def parse_active_set(raw: bytes, n: int | None = None, path: str | None = None,
                     line: int | None = None) -> ActiveSetBlock:
    """Parse MLIP-3's ``#MVS_v1.1`` block (layout in the module docstring).

    ``n`` is the number of potential parameters; when ``None`` it is found from the
    layout. ``path``/``line`` only label error messages.
    """
    raw = bytes(raw)
    field = "#MVS_v1.1"

    def fail(msg: str) -> InputError:
        return InputError(msg, path=path, line=line, field=field)

    if not raw.startswith(MVS_MARKER):
        raise fail("active-set block must start with '#MVS_v1.1'")
    weights: dict[str, str] = {}
    pos = raw.find(b"\n") + 1
    if pos == 0:
        raise fail("active-set block ends after its first line")
    while raw[pos:pos + 1] != b"#":
        end = raw.find(b"\n", pos)
        if end < 0:
            raise fail("no '#' after the selection weights")
        parts = raw[pos:end].decode("ascii", "replace").split()
        if len(parts) != 2:
            raise fail(f"malformed weight line {raw[pos:end]!r}")
        weights[parts[0]] = parts[1]
        pos = end + 1
    names = ["energy_weight", "force_weight", "stress_weight", "site_en_weight", "weight_scaling"]
    if sorted(weights) != sorted(names):
        raise fail(f"expected weights {names}, got {list(weights)}")
    try:
        w = [float(weights[k]) for k in names[:4]]
        wscale = int(weights["weight_scaling"])
    except ValueError as exc:
        raise fail(f"bad selection weight: {exc}") from None
    body_start = pos + 1                       # first byte of A
    size = len(raw) - body_start

    candidates = [n] if n is not None else range(1, int(math.isqrt(max(size, 0) // 16)) + 1)
    for m in candidates:
        mat_end = body_start + 16 * m * m
        if raw[mat_end:mat_end + 3] != b"\n#\n":
            continue
        got = _links(raw, mat_end + 3, m)
        if got is None:
            continue
        cfg, eqn, cfg_start = got
        break
    else:
        if n is not None:
            raise fail(f"layout does not match n = {n} parameters: expected 2·n² float64 "
                       f"followed by '\\n#\\n' and n link lines")
        raise fail("cannot find the matrices / links layout")
    A = np.frombuffer(raw, dtype="<f8", count=m * m, offset=body_start).reshape(m, m).copy()
    invA = np.frombuffer(raw, dtype="<f8", count=m * m, offset=body_start + 8 * m * m).reshape(m, m).copy()
    if not (np.isfinite(A).all() and np.isfinite(invA).all() and all(math.isfinite(x) for x in w)):
        raise fail("non-finite numbers (NaN or inf) in the active set: grades from it would be "
                   "meaningless")
    residual = float(np.abs(A @ invA.T - np.eye(m)).max()) if m else 0.0
    if not residual <= 1e-5:
        raise fail(f"the stored inverse does not invert the active-set matrix (max |A·invAᵀ − I| = "
                   f"{residual:.3g}): the block is corrupted")
    cfg_text = raw[cfg_start:].decode("utf-8", "surrogateescape")
    n_cfg = cfg_text.count("BEGIN_CFG")
    if cfg.max(initial=-1) >= n_cfg or np.any(cfg < -1):
        raise fail(f"links refer to configuration {cfg.max()} but the block holds {n_cfg}")
    return ActiveSetBlock(raw, w[0], w[1], w[2], w[3], wscale, A, invA, cfg, eqn, cfg_text)


# --------------------------------------------------------------------------- reading
def read_mtp(path: str | os.PathLike) -> MTPPotential:
    """Read an MLIP-3 potential (``.mtp``, ``.mtpr`` or ``.almtp``)."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    return loads_mtp(data, path=path)


def _split_active_set(data: bytes) -> tuple[bytes, bytes | None]:
    m = re.search(rb"(?m)^[ \t]*(#MVS_v1\.1)", data)
    if m is None:
        return data, None
    return data[:m.start(1)], data[m.start(1):]


def loads_mtp(data: bytes | str, path: str | None = None) -> MTPPotential:
    """Parse the contents of an MLIP-3 potential file; ``path`` labels errors."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    path = "<string>" if path is None else str(path)
    head, raw_as = _split_active_set(data)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = head[:exc.start].count(b"\n") + 1
        raise InputError("potential text is not UTF-8/ASCII (binary data before '#MVS_v1.1'?)",
                         path=path, line=line) from None
    text = _COMMENT.sub("", text)
    items, radial = _tokenize(text, path)
    pot = _build(items, radial, path, text)
    if raw_as is not None:
        line = head.count(b"\n") + 1
        pot.active_set = parse_active_set(raw_as, n=pot.n_params, path=path, line=line)
    return pot


def _tokenize(text: str, path: str) -> tuple[dict[str, _Item], dict | None]:
    lines = _Lines(text)
    items: dict[str, _Item] = {}
    radial: dict | None = None
    context = "top"
    pos = 0
    first = True

    def err(msg: str, at: int, key: str | None) -> InputError:
        return InputError(msg, path=path, line=lines.at(at), field=key)

    while True:
        m = _STMT.match(text, pos)
        if m.group("end") is not None:
            if first:
                raise err("empty file: expected the header 'MTP'", m.start("end"), "MTP")
            break
        if m.group("word") is None:
            tok_start = m.start("brace") if m.group("brace") else m.start("other")
            tok = text[tok_start:tok_start + 40].split()[0] if text[tok_start:].strip() else ""
            raise err(f"unexpected token {tok!r}; expected 'key = value'", tok_start,
                      "MTP" if first else None)
        word = m.group("word")
        wpos = m.start("word")
        if first:
            if word != "MTP" or m.group("eq"):
                raise err(f"not an MTP potential: first token must be 'MTP', got {word!r}", wpos, "MTP")
            first = False
            pos = m.end()
            continue
        if not m.group("eq"):
            if word == "radial_coeffs":
                if radial is not None:
                    raise err("duplicate key", wpos, "radial_coeffs")
                radial, pos = _read_radial_blocks(text, m.end(), lines, path)
                radial["line"] = lines.at(wpos)
                continue
            if word == "MTP":
                raise err("'MTP' may appear only as the first token", wpos, "MTP")
            if word in _KNOWN_SPELLINGS:
                raise err("expected '=' after the key", wpos, word)
            raise err(f"unknown key; known keys: {', '.join(_KNOWN_SPELLINGS)}", wpos, word)
        key = _CONTEXT[context].get(word) or _PLAIN.get(word)
        if key is None:
            where = "" if word not in {k for d in _CONTEXT.values() for k in d} else \
                f" (not valid in the {context} block)"
            raise err(f"unknown key{where}; known keys: {', '.join(_KNOWN_SPELLINGS)}", wpos, word)
        if key in items:
            raise err(f"duplicate key (first given on line {items[key].line})", wpos, word)
        kind = _KIND[key]
        vstart = m.end()
        line = lines.at(wpos)
        if kind == "rest":
            r = _REST.match(text, vstart)
            value: object = r.group().strip()
            pos = r.end()
        elif kind in ("nested_int", "int_list", "float_list", "name_list"):
            rx = _NESTED_LIST if kind == "nested_int" else _FLAT_LIST
            r = rx.match(text, vstart)
            if r is None:
                what = "a list of {i, j, k, l} rows" if kind == "nested_int" else "a list {...}"
                raise err(f"expected {what}", vstart, word)
            value = _parse_list(r.group(1), kind, word, path, lines.at(r.start(1)))
            pos = r.end()
        else:
            r = _TOKEN.match(text, vstart)
            tok = r.group(1)
            if not tok:
                raise err("missing value", vstart, word)
            value = _parse_scalar(tok, kind, word, path, line)
            pos = r.end()
        items[key] = _Item(value, line, word)
        if key == "radial_basis_type":
            context = "radial"
        elif key == "magnetic_basis_type":
            context = "magnetic"
    return items, radial


def _parse_scalar(tok: str, kind: str, key: str, path: str, line: int) -> object:
    try:
        if kind == "int":
            return int(tok)
        if kind == "float":
            v = float(tok)
            if not math.isfinite(v):
                raise InputError(f"value is {tok}, must be finite", path=path, line=line, field=key)
            return v
    except ValueError:
        raise InputError(f"expected {'an integer' if kind == 'int' else 'a number'}, got {tok!r}",
                         path=path, line=line, field=key) from None
    if kind == "bool":
        low = tok.lower()
        if low not in ("true", "false"):
            raise InputError(f"expected true or false, got {tok!r}", path=path, line=line, field=key)
        return low == "true"
    return tok


def _floats(items: list[str], key: str, path: str, line: int) -> np.ndarray:
    try:
        arr = np.array([float(x) for x in items], dtype=np.float64)
    except ValueError:
        bad = next(x for x in items if not _is_float(x))
        raise InputError(f"expected a number, got {bad.strip()!r}", path=path, line=line, field=key) from None
    if not np.all(np.isfinite(arr)):
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InputError(f"entry {i} is {items[i].strip()}, must be finite", path=path, line=line, field=key)
    return arr


def _parses(kind: type, x: str) -> bool:
    try:
        kind(x)
        return True
    except ValueError:
        return False


def _is_float(x: str) -> bool:
    return _parses(float, x)


def _ints(items: list[str], key: str, path: str, line: int) -> np.ndarray:
    try:
        return np.array([int(x) for x in items], dtype=np.int64)
    except ValueError:
        item = next((x for x in items if not _parses(int, x)), "?")
        raise InputError(f"expected an integer, got {item!r}", path=path, line=line,
                         field=key) from None


def _parse_list(src: str, kind: str, key: str, path: str, line: int) -> object:
    if kind == "nested_int":
        groups = _INNER.findall(src[1:-1])
        if not groups:
            return np.zeros((0, 4), dtype=np.int64)
        flat = ",".join(groups).split(",")
        if len(flat) != 4 * len(groups):
            i = next(i for i, g in enumerate(groups) if g.count(",") != 3)
            raise InputError(f"row {i} {{{groups[i].strip()}}} must have 4 integers", path=path,
                             line=line, field=key)
        return _ints(flat, key, path, line).reshape(-1, 4)
    inner = src[1:-1]
    if not inner.strip():
        parts: list[str] = []
    else:
        parts = inner.split(",")
    if kind == "int_list":
        return _ints(parts, key, path, line)
    if kind == "float_list":
        return _floats(parts, key, path, line)
    names = [p.strip() for p in parts]
    for nm in names:
        if not _NAME.fullmatch(nm):
            raise InputError(f"species name {nm!r} is not a symbol", path=path, line=line, field=key)
    return names


def _read_radial_blocks(text: str, pos: int, lines: _Lines, path: str) -> tuple[dict, int]:
    """Blocks after ``radial_coeffs``: label ``a-b`` then rows ``{...}``; stops at the next key."""
    blocks = []
    while True:
        lab = _LABEL.match(text, pos)
        if lab is None:
            r = _ROW_START.match(text, pos)
            if r is not None:
                raise InputError("coefficient row before any 'a-b' block label", path=path,
                                 line=lines.at(r.end() - 1), field="radial_coeffs")
            break
        a, b = int(lab.group(1)), int(lab.group(2))
        label_line = lines.at(lab.start(1))
        pos = lab.end()
        rows = []
        while True:
            r = _FLAT_LIST.match(text, pos)
            if r is None:
                if _ROW_START.match(text, pos):
                    rs = _ROW_START.match(text, pos).end() - 1
                    raise InputError("unterminated or nested coefficient row", path=path,
                                     line=lines.at(rs), field="radial_coeffs")
                break
            row_line = lines.at(r.start(1))
            inner = r.group(1)[1:-1]
            items = inner.split(",") if inner.strip() else []
            rows.append((row_line, items))
            pos = r.end()
        blocks.append(((a, b), label_line, rows))
    return {"blocks": blocks}, pos


# --------------------------------------------------------------------------- building
def _build(items: dict[str, _Item], radial: dict | None, path: str, text: str) -> MTPPotential:
    last_line = text.count("\n") + 1

    def line_of(key: str) -> int | None:
        return items[key].line if key in items else None

    def get(key: str, default: object = None) -> object:
        return items[key].value if key in items else default

    def missing(key: str, spelling: str | None = None) -> InputError:
        # the first present key that comes after it in MLIP-3's order says where it belongs
        idx = _ORDER.index(key)
        later = [items[k].line for k in _ORDER[idx + 1:] if k in items]
        if key != "radial_coeffs" and radial is not None and _ORDER.index("radial_coeffs") > idx:
            later.append(radial["line"])
        line = min(later) if later else last_line
        name = spelling or _SPELLING.get(key, key)
        return InputError(f"required key not found (expected before line {line})", path=path,
                          line=line, field=name)

    for key in _REQUIRED:
        if key not in items:
            raise missing(key)
    if get("version") != "1.1.0":
        raise InputError(f"unsupported version {get('version')!r}; MLIP-3 files have 1.1.0",
                         path=path, line=line_of("version"), field="version")

    def positive(key: str, allow_zero: bool = False) -> int:
        v = int(get(key))
        if v < (0 if allow_zero else 1):
            raise InputError(f"must be {'>= 0' if allow_zero else '>= 1'}, got {v}", path=path,
                             line=line_of(key), field=items[key].spelling)
        return v

    def bounded(key: str, hi: int) -> int:
        v = positive(key)
        if v > hi:
            raise InputError(f"{v} is implausibly large (at most {hi}): a corrupted count?", path=path,
                             line=line_of(key), field=items[key].spelling)
        return v

    C = bounded("species_count", 128)
    R = bounded("radial_basis_size", 256)
    K = bounded("radial_funcs_count", 4096)
    n_moments = bounded("alpha_moments_count", 1_000_000)
    if get("radial_basis_type") != "RBChebyshev":
        raise InputError(f"radial basis {get('radial_basis_type')!r} is not supported (only RBChebyshev)",
                         path=path, line=line_of("radial_basis_type"), field="radial_basis_type")

    # magnetic block (three spellings)
    mag_keys = [k for k in ("magnetic_basis_type", "mag_min", "mag_max", "mag_basis_size",
                            "species_mag_min", "species_mag_max", "mag_scaling") if k in items]
    magnetic = bool(mag_keys)
    M = 1
    mag_min = mag_max = None
    if magnetic:
        mtype = get("magnetic_basis_type", "BChebyshev")
        if mtype != "BChebyshev":
            raise InputError(f"magnetic basis {mtype!r} is not supported (only BChebyshev)", path=path,
                             line=line_of("magnetic_basis_type"), field="magnetic_basis_type")
        if get("mag_scaling", 1.0) != 1.0:
            raise InputError("a scaling of the magnetic basis is not supported (must be 1)", path=path,
                             line=line_of("mag_scaling"), field="scaling")
        if "mag_basis_size" not in items:
            raise missing("mag_basis_size")
        M = bounded("mag_basis_size", 64)
        for single, per in (("mag_min", "species_mag_min"), ("mag_max", "species_mag_max")):
            if single in items and per in items:
                raise InputError(f"give either {items[single].spelling} or {_SPELLING[per]}, not both",
                                 path=path, line=line_of(per), field=_SPELLING[per])
            if single not in items and per not in items:
                raise missing(single)
            if per in items:
                vals = get(per)
                if len(vals) != C:
                    raise InputError(f"has {len(vals)} values, species_count = {C}", path=path,
                                     line=line_of(per), field=_SPELLING[per])
        mag_min = get("species_mag_min") if "species_mag_min" in items else np.full(C, get("mag_min"))
        mag_max = get("species_mag_max") if "species_mag_max" in items else np.full(C, get("mag_max"))
        if np.any(np.asarray(mag_max) <= np.asarray(mag_min)):
            key = "species_mag_max" if "species_mag_max" in items else "mag_max"
            raise InputError("magnetic interval needs max > min", path=path, line=line_of(key),
                             field=items[key].spelling)

    scaling = float(get("scaling", 1.0)) * float(get("radial_scaling", 1.0))
    min_dist, max_dist = float(get("min_dist")), float(get("max_dist"))
    if not 0 <= min_dist < max_dist:
        raise InputError(f"need 0 <= min_dist < max_dist, got {min_dist}, {max_dist}", path=path,
                         line=line_of("max_dist"), field="max_dist")
    if max_dist > MAX_CUTOFF:
        raise InputError(f"max_dist = {max_dist:g} Å: an interatomic cutoff is at most {MAX_CUTOFF:g} Å",
                         path=path, line=line_of("max_dist"), field="max_dist")

    def count_check(list_key: str, count_key: str, n: int, what: str) -> None:
        if n != int(get(count_key)):
            raise InputError(f"has {n} {what} but {items[count_key].spelling} = {get(count_key)} "
                             f"(line {line_of(count_key)})", path=path, line=line_of(list_key),
                             field=list_key)

    basic = get("alpha_index_basic")
    times = get("alpha_index_times")
    mapping = get("alpha_moment_mapping")
    positive("alpha_index_basic_count", allow_zero=True)
    positive("alpha_index_times_count", allow_zero=True)
    count_check("alpha_index_basic", "alpha_index_basic_count", len(basic), "rows")
    count_check("alpha_index_times", "alpha_index_times_count", len(times), "rows")
    count_check("alpha_moment_mapping", "alpha_scalar_moments", len(mapping), "entries")
    if len(basic) and (basic.min() < 0 or basic[:, 0].max() >= K):
        raise InputError(f"radial function index must be in 0..{K - 1} (radial_funcs_count = {K})",
                         path=path, line=line_of("alpha_index_basic"), field="alpha_index_basic")
    if len(basic) > n_moments:
        raise InputError(f"more basic moments than alpha_moments_count = {n_moments}", path=path,
                         line=line_of("alpha_index_basic"), field="alpha_index_basic")
    if len(times):
        refs = times[:, [0, 1, 3]]
        if refs.min() < 0 or refs.max() >= n_moments:
            raise InputError(f"moment index must be in 0..{n_moments - 1} (alpha_moments_count)",
                             path=path, line=line_of("alpha_index_times"), field="alpha_index_times")
        if np.any(times[:, 3] < len(basic)):
            raise InputError("a product writes into a basic moment", path=path,
                             line=line_of("alpha_index_times"), field="alpha_index_times")
    if len(mapping) and (mapping.min() < 0 or mapping.max() >= n_moments):
        raise InputError(f"moment index must be in 0..{n_moments - 1} (alpha_moments_count)", path=path,
                         line=line_of("alpha_moment_mapping"), field="alpha_moment_mapping")

    # radial coefficients
    radial_coeffs = None
    if radial is not None and radial["blocks"]:
        blocks = radial["blocks"]
        if len(blocks) != C * C:
            raise InputError(f"has {len(blocks)} blocks, expected species_count² = {C * C}", path=path,
                             line=radial["line"], field="radial_coeffs")
        seen: dict[tuple[int, int], int] = {}
        width = R * M * M
        for (a, b), label_line, rows in blocks:     # check the layout before allocating anything
            if len(rows) == K and any(len(vals) != width for _, vals in rows):
                row_line, vals = next((ln, v) for ln, v in rows if len(v) != width)
                expl = f"radial_basis_size·basis_size² = {R}·{M}²" if magnetic else \
                    f"radial_basis_size = {R}"
                raise InputError(f"row has {len(vals)} numbers, expected {expl} = {width}",
                                 path=path, line=row_line, field="radial_coeffs")
        radial_coeffs = np.empty((C, C, K, R * M * M))
        for (a, b), label_line, rows in blocks:
            if a >= C or b >= C:
                raise InputError(f"block label '{a}-{b}' is not a pair of species indices 0..{C - 1}",
                                 path=path, line=label_line, field="radial_coeffs")
            if (a, b) in seen:
                raise InputError(f"block '{a}-{b}' given twice (first on line {seen[(a, b)]})", path=path,
                                 line=label_line, field="radial_coeffs")
            seen[(a, b)] = label_line
            if len(rows) != K:
                raise InputError(f"block '{a}-{b}' has {len(rows)} rows, expected radial_funcs_count = {K}",
                                 path=path, line=label_line, field="radial_coeffs")
            for mu, (row_line, vals) in enumerate(rows):
                if len(vals) != width:
                    expl = f"radial_basis_size·basis_size² = {R}·{M}²" if magnetic else \
                        f"radial_basis_size = {R}"
                    raise InputError(f"row has {len(vals)} numbers, expected {expl} = {width}",
                                     path=path, line=row_line, field="radial_coeffs")
                radial_coeffs[a, b, mu] = _floats(vals, "radial_coeffs", path, row_line)
        radial_coeffs = radial_coeffs.reshape(C, C, K, R, M, M)

    species_coeffs = get("species_coeffs")
    moment_coeffs = get("moment_coeffs")
    if (species_coeffs is None) != (moment_coeffs is None):
        have, lack = ("species_coeffs", "moment_coeffs") if moment_coeffs is None else \
            ("moment_coeffs", "species_coeffs")
        raise InputError(f"{have} given without {lack}", path=path, line=line_of(have), field=lack)
    if species_coeffs is not None:
        if len(species_coeffs) != C:
            raise InputError(f"has {len(species_coeffs)} values, species_count = {C} "
                             f"(line {line_of('species_count')})", path=path,
                             line=line_of("species_coeffs"), field="species_coeffs")
        if len(moment_coeffs) != len(mapping):
            raise InputError(f"has {len(moment_coeffs)} values, alpha_scalar_moments = {len(mapping)}",
                             path=path, line=line_of("moment_coeffs"), field="moment_coeffs")

    names = get("species_names")
    if names is not None and len(names) != C:
        raise InputError(f"has {len(names)} names, species_count = {C}", path=path,
                         line=line_of("species_names"), field="species_names")

    try:
        return MTPPotential(
            species_count=C, min_dist=min_dist, max_dist=max_dist, radial_basis_size=R,
            radial_funcs_count=K, alpha_index_basic=basic, alpha_index_times=times,
            alpha_moment_mapping=mapping, alpha_moments_count=n_moments,
            radial_coeffs=radial_coeffs, species_coeffs=species_coeffs, moment_coeffs=moment_coeffs,
            scaling=scaling, magnetic=magnetic, mag_basis_size=M, mag_min=mag_min, mag_max=mag_max,
            symmetric=bool(get("symmetric", False)), potential_name=get("potential_name", ""),
            potential_tag=get("potential_tag", ""), version=get("version"), species_names=names,
            radial_basis_type=get("radial_basis_type"),
            magnetic_basis_type=get("magnetic_basis_type", "BChebyshev"),
        )
    except InputError as exc:      # a consistency rule of MTPPotential not checked above
        raise InputError(exc.reason, path=path, field=exc.field) from None


# --------------------------------------------------------------------------- writing
def _fmt_list(values: np.ndarray) -> str:
    flat = np.asarray(values, dtype=np.float64).ravel().tolist()
    return "{" + ", ".join(_FLOAT_FMT % v for v in flat) + "}"


def _fmt_rows(rows: np.ndarray) -> str:
    return "{" + ", ".join(f"{{{i}, {j}, {w}, {k}}}" for i, j, w, k in np.asarray(rows).tolist()) + "}"


def dumps_mtp(pot: MTPPotential) -> bytes:
    """The file contents :func:`write_mtp` writes (text, then the active-set bytes if any)."""
    pot.validate()
    name = pot.potential_name or ""
    if any(ch.isspace() for ch in name) or "#" in name:
        raise InputError(f"potential_name {name!r} must be one word without '#' (MLIP-3 reads one token)",
                         field="potential_name")
    tag = pot.potential_tag or ""
    if "\n" in tag or "\r" in tag or "#" in tag or "<<<" in tag:
        raise InputError(f"potential_tag {tag!r} must be one line without '#' or '<<<'",
                         field="potential_tag")
    C = pot.species_count
    out = ["MTP", "version = 1.1.0"]
    if name:
        out.append(f"potential_name = {name}")
    if pot.scaling != 1.0:
        out.append(f"scaling = {_FLOAT_FMT % pot.scaling}")
    out.append(f"species_count = {C}")
    out.append(f"potential_tag = {tag}")
    if pot.species_names is not None:
        names = list(pot.species_names)
        if len(names) != C or not all(_NAME.fullmatch(str(n)) for n in names):
            raise InputError(f"species_names {names!r} must be {C} chemical symbols", field="species_names")
        out.append("species_names = {" + ", ".join(map(str, names)) + "}")
    if pot.symmetric:
        out.append("symmetric = true")
    out.append(f"radial_basis_type = {pot.radial_basis_type}")
    out.append(f"\tmin_dist = {_FLOAT_FMT % pot.min_dist}")
    out.append(f"\tmax_dist = {_FLOAT_FMT % pot.max_dist}")
    out.append(f"\tradial_basis_size = {pot.radial_basis_size}")
    if pot.magnetic:
        out.append(f"magnetic_basis_type = {pot.magnetic_basis_type}")
        if pot.global_interval:
            out.append(f"\tmin_val = {_FLOAT_FMT % pot.mag_min[0]}")
            out.append(f"\tmax_val = {_FLOAT_FMT % pot.mag_max[0]}")
        else:
            out.append(f"\tspecies_min_val = {_fmt_list(pot.mag_min)}")
            out.append(f"\tspecies_max_val = {_fmt_list(pot.mag_max)}")
        out.append(f"\tbasis_size = {pot.mag_basis_size}")
    out.append(f"\tradial_funcs_count = {pot.radial_funcs_count}")
    if pot.radial_coeffs is not None:
        out.append("\tradial_coeffs")
        K = pot.radial_funcs_count
        rc = pot.radial_coeffs.reshape(C, C, K, -1)
        for a in range(C):
            for b in range(C):
                out.append(f"\t\t{a}-{b}")
                for mu in range(K):
                    out.append("\t\t\t" + _fmt_list(rc[a, b, mu]))
    out.append(f"alpha_moments_count = {pot.alpha_moments_count}")
    out.append(f"alpha_index_basic_count = {len(pot.alpha_index_basic)}")
    out.append(f"alpha_index_basic = {_fmt_rows(pot.alpha_index_basic)}")
    out.append(f"alpha_index_times_count = {len(pot.alpha_index_times)}")
    out.append(f"alpha_index_times = {_fmt_rows(pot.alpha_index_times)}")
    out.append(f"alpha_scalar_moments = {pot.n_basis}")
    out.append("alpha_moment_mapping = {" + ", ".join(map(str, pot.alpha_moment_mapping.tolist())) + "}")
    if (pot.species_coeffs is None) != (pot.moment_coeffs is None):
        raise InputError("species_coeffs and moment_coeffs must be both set or both None",
                         field="species_coeffs")
    if pot.species_coeffs is not None:
        out.append(f"species_coeffs = {_fmt_list(pot.species_coeffs)}")
        out.append(f"moment_coeffs = {_fmt_list(pot.moment_coeffs)}")
    for label, arr in (("radial_coeffs", pot.radial_coeffs), ("species_coeffs", pot.species_coeffs),
                       ("moment_coeffs", pot.moment_coeffs), ("magnetic interval", pot.mag_min),
                       ("magnetic interval", pot.mag_max)):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise InputError("contains NaN or inf; refusing to write", field=label)
    body = ("\n".join(out) + "\n").encode("utf-8")
    if pot.active_set is not None:
        body += _active_set_bytes(pot.active_set)
    return body


def _active_set_bytes(active_set: object) -> bytes:
    if isinstance(active_set, ActiveSetBlock):
        raw = active_set.to_bytes()
    elif isinstance(active_set, (bytes, bytearray, memoryview)):
        raw = bytes(active_set)
    elif hasattr(active_set, "to_bytes"):
        raw = active_set.to_bytes()
    else:
        raise InputError(f"active_set of type {type(active_set).__name__} cannot be written",
                         field="active_set")
    if not raw.startswith(MVS_MARKER):
        raise InputError("active-set bytes must start with '#MVS_v1.1'", field="active_set")
    return raw


def write_mtp(pot: MTPPotential, path: str | os.PathLike) -> None:
    """Write ``pot`` in MLIP-3's format (with the active-set block, if any)."""
    data = dumps_mtp(pot)
    with open(os.fspath(path), "wb") as fh:
        fh.write(data)


# --------------------------------------------------------------------------- dispatch
def _extension(path: str | os.PathLike) -> str:
    return Path(os.fspath(path)).suffix.lower()


def load_potential(path: str | os.PathLike) -> MTPPotential:
    """Read a potential, choosing the format from the extension (.mtp/.mtpr/.almtp/.h5/.hdf5)."""
    ext = _extension(path)
    if ext not in MTP_EXTENSIONS + H5_EXTENSIONS:
        raise InputError(f"unknown potential file extension {ext or '(none)'!r}; use one of "
                         f"{', '.join(MTP_EXTENSIONS + H5_EXTENSIONS)}", path=os.fspath(path))
    if not os.path.isfile(path):
        what = "is a directory, not a potential file" if os.path.isdir(path) else "potential file not found"
        raise InputError(what, path=os.fspath(path))
    if ext in MTP_EXTENSIONS:
        return read_mtp(path)
    from mmtp_hpc.potentials.mtp.hdf5_io import read_potential_h5
    return read_potential_h5(path)


def save_potential(pot: MTPPotential, path: str | os.PathLike) -> None:
    """Write a potential atomically, choosing the format from the extension."""
    ext = _extension(path)
    if ext in MTP_EXTENSIONS:
        data = dumps_mtp(pot)            # format first: a failure leaves the old file alone
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    elif ext in H5_EXTENSIONS:
        from mmtp_hpc.potentials.mtp.hdf5_io import write_potential_h5
        with atomic_path(path) as tmp:
            write_potential_h5(pot, tmp)
    else:
        raise InputError(f"unknown potential file extension {ext or '(none)'!r}; use one of "
                         f"{', '.join(MTP_EXTENSIONS + H5_EXTENSIONS)}", path=os.fspath(path))
