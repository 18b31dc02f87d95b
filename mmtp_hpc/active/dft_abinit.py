r"""ABINIT constrained-moment (cDFT) inputs and outputs for the ``abinit`` oracle writer.

This module's single job is the file interface to ABINIT 9.6 (Debian package ``abinit``,
PAW data in ``abinit-data``): :func:`write_abinit_input` writes one ground-state input
whose collinear atomic moments are constrained to the configuration's target moments, and
:func:`read_abinit_output` / :func:`label_from_abinit` read the result back as a labelled
:class:`~mmtp_hpc.system.configuration.Configuration`.

The constraint (ABINIT's constrained DFT, Gonze et al., PRB 106, 235108 (2022))
--------------------------------------------------------------------------------
``constraint_kind 1`` per atom type constrains the magnetisation integrated in a sphere of
radius ``ratsph`` (bohr) around each atom to the ``spinat`` value (μB); for ``nsppol 2``
this is the signed z moment, i.e. MLIP-3's collinear ``m_i``. The constraint is exact (a
Lagrange multiplier is iterated inside the SCF cycle, ``iscf 7`` = Pulay mixing of the
potential), so there is no penalty strength λ to ramp up: the oracle runs ABINIT once.
``ratsph`` must be at least the PAW radius of the dataset (2.1153 bohr for the JTH
``Fe.xml`` of ``abinit-data``); by default it is that radius rounded up to 0.01 bohr, read
from the dataset file. Neighbouring spheres must not overlap (bcc Fe: half the nearest-
neighbour distance is 2.34 bohr).

What is parsed, and the units and signs of the result
----------------------------------------------------
From the ``-outvars`` echo *after computation* (full precision) and the final tables:

=====================  =====================  =============================================
ABINIT                 unit in the file        label (unit)
=====================  =====================  =============================================
``etotal``             Ha                      ``energy`` (eV); with ``occopt`` 3 the free
                                               energy, the quantity the forces derive from
``fcart``              Ha/bohr                 ``forces`` (eV/Å), −∂E/∂r
``strten``             Ha/bohr³, Voigt order   ``virial`` = −V·σ (eV, PlusStress); ABINIT's σ
                       11 22 33 23 13 12       has ASE's sign (negative under compression)
``grspin`` (z)         Ha/μB                   ``magnetic_gradient`` (eV/μB) = **+∂E/∂m**
Diff(up-dn) column of  μB                      ``magmoms``: the moments actually reached
"Integrated electronic
and magnetization
densities in atomic
spheres"
=====================  =====================  =============================================

``grspin`` is the derivative of the total energy with respect to the constrained target
("Gradient with respect to target"), printed with MLIP-3's sign: checked here by central
finite differences of ``etotal`` over two constrained moments of a 2-atom bcc Fe cell
(−4.25e-3 Ha/μB from the energies, −4.28e-3 Ha/μB printed; ``tests/test_oracles.py`` repeats
the check whenever ``abinit`` is installed). Runs that did not converge (ABINIT's
"nstep=… was not enough SCF cycles to converge") or did not finish are errors.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmtp_hpc.active.dft_common import DFTCodeError, SCFNotConverged, constrained_inputs
from mmtp_hpc.errors import InputError
from mmtp_hpc.settings import integer, int_list, optional, path_with, per_species, positive, table, text
from mmtp_hpc.settings import key as _key
from mmtp_hpc.system.configuration import Configuration

HARTREE_EV = 27.211386245988        # eV (CODATA 2018)
BOHR_ANGSTROM = 0.529177210903      # Å (CODATA 2018)

INPUT_NAME = "run.abi"
# first line of a mirrored input's marker (see write_abinit_input)
MIRROR_MARK = "# mmtp_hpc: moments mirrored (M -> -M; the label negates the moments and dE/dm back)"
OUTPUT_NAME = "run.abo"
EFS_BY = "abinit"

_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_path = path_with()


@dataclass
class AbinitSettings:
    """Settings of the ABINIT writer (the ``[oracle.abinit]`` table). Units: Ha, bohr, Å⁻¹.

    ``pseudos`` maps every chemical symbol to its PAW dataset: an absolute path, a name in
    ``pp_dirpath`` when that is set, else a path relative to the TOML file when such a file
    exists there, else a name in the run directory (copied from the template directory).
    """

    pseudos: dict[str, str] = _key({},
        "PAW dataset per species, e.g. {Fe = \"/usr/share/abinit/psp/Fe.xml\"}: absolute, a name in "
        "pp_dirpath, a path relative to the TOML file, or a name copied in from the template",
        per_species(text(optional=False, nonempty=True), '"dataset"', single=False))
    pp_dirpath: str | None = _key(None,
        "directory of the datasets named in pseudos (written as pp_dirpath)", _path, resolve=True)
    ecut: float = _key(12.0, "plane-wave cutoff (Ha)", positive)
    pawecutdg: float | None = _key(None,
        "cutoff of the PAW double grid (Ha); default 2·ecut", optional(positive))
    ngkpt: list[int] | None = _key(None,
        "Γ-centred Monkhorst–Pack grid (3 integers); default from kspacing", optional(int_list(3, 1)))
    kspacing: float = _key(0.25,
        "k spacing (Å⁻¹, VASP's definition with 2π): n_i = max(1, ceil(2π|b_i|/kspacing))",
        positive)
    occopt: int = _key(3, "occupation option (3: Fermi–Dirac)", integer())
    tsmear: float = _key(0.01, "smearing (Ha)", positive)
    nstep: int = _key(100, "maximum SCF steps", integer(1))
    toldfe: float = _key(1e-8, "SCF energy tolerance (Ha)", positive)
    ratsph: float | dict[str, float] | None = _key(None,
        "integration-sphere radius (bohr), one value or per species; default the PAW radius "
        "rounded up to 0.01 bohr", optional(per_species(positive, "radius")))
    constraint_kind: int | dict[str, int] = _key(1,
        "ABINIT constraint_kind, one value or per species (1: constrain the moment)",
        per_species(integer(), "kind"))
    iscf: int = _key(7, "SCF algorithm (7: Pulay mixing of the potential, needed by constraint_kind)",
                     integer())
    extra: dict[str, Any] = _key({},
        "further ABINIT variables written verbatim, e.g. {ixc = 11, nband = 24}", table)


# =====================================================================================
# writing
# =====================================================================================
def kpoint_grid(cell: np.ndarray, kspacing: float) -> list[int]:
    """Γ-centred grid sizes n_i = max(1, ⌈2π|b_i|/kspacing⌉) with b the reciprocal vectors (1/Å)."""
    recip = np.linalg.inv(np.asarray(cell, dtype=float)).T      # rows b_i with a_i·b_j = δ_ij
    return [max(1, math.ceil(2.0 * math.pi * float(np.linalg.norm(b)) / kspacing - 1e-9))
            for b in recip]


def paw_radius(path: str | os.PathLike) -> float | None:
    """PAW radius (bohr) recorded in a dataset: PAW-XML ``<paw_radius rc=…>`` or ABINIT's
    ``r_cut(PAW)`` line; None when the file states none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(400_000)
    except OSError:
        return None
    m = re.search(r"<paw_radius\s+rc\s*=\s*\"\s*([0-9.eEdD+-]+)\s*\"", head)
    if m:
        return float(m.group(1).replace("d", "e").replace("D", "e"))
    m = re.search(r"^\s*([0-9.eEdD+-]+)\s*:\s*r_cut\(PAW\)", head, re.MULTILINE)
    if m:
        return float(m.group(1).replace("d", "e").replace("D", "e"))
    return None


def _per_species(value: Any, symbol: str, name: str) -> Any:
    if isinstance(value, Mapping):
        if symbol not in value:
            raise InputError(f"no value for species {symbol!r} (have {sorted(value)})", field=name)
        return value[symbol]
    return value


def _dataset_path(settings: AbinitSettings, symbol: str, directory: Path) -> Path:
    name = settings.pseudos[symbol]
    p = Path(name)
    if p.is_absolute():
        return p
    if settings.pp_dirpath is not None:
        return Path(settings.pp_dirpath) / p
    return directory / p


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value if re.fullmatch(r"[\w.+*-]+", value) else '"' + value.replace('"', "") + '"'
    if isinstance(value, (list, tuple)):
        return " ".join(_format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_abinit_input(cfg: Configuration, directory: str | os.PathLike, species: Sequence[str],
                       settings: AbinitSettings, target_moments: np.ndarray | None = None,
                       comment: str = "", constrained: bool = True) -> Path:
    """Write ``run.abi`` for ``cfg`` in ``directory`` and return its path.

    ``species[t]`` is the chemical symbol of type ``t``. The moments ``target_moments`` (default
    ``cfg.magmoms``, μB) become ``spinat`` (z) and the constraint targets. Only the species present
    are written as ABINIT types (in type order). The cell and positions are written in bohr.
    With ``constrained=False`` the moments are only the starting guess (``constraint_kind 0``):
    the unconstrained magnetic ground state, used to validate a potential's relaxed moments.

    A configuration whose moments sum to less than zero is written mirrored (M → −M, marked by
    :data:`MIRROR_MARK` in ``run.abi``): ABINIT sizes its default band count for the majority
    spin from a positive ``spinat`` sum only, and stops ("not enough bands to get charge balance
    right") on a strongly negative one. Without spin–orbit coupling E(−M) = E(M), forces and
    stress are unchanged and the moments and ∂E/∂m change sign, which :func:`unmirror` applies
    to the result (:func:`is_mirrored` reads the mark back). The mirror keeps every label on the
    same band rule as its positive twin; a user ``nband`` in ``extra`` is written as given.
    """
    from ase.data import atomic_numbers

    directory = Path(directory)
    n = len(cfg)
    m, present, symbols = constrained_inputs(cfg, species, target_moments, "ABINIT")
    mirrored = bool(m.sum() < 0.0)
    if mirrored:
        m = -m
    for s in symbols:
        if s not in atomic_numbers:
            raise InputError(f"{s!r} is not a chemical symbol", field="species")
        if s not in settings.pseudos:
            raise InputError(f"no PAW dataset for species {s!r}: set pseudos.{s}", field="pseudos")
    abinit_type = {t: k + 1 for k, t in enumerate(present)}
    ratsph = []
    for s in symbols:
        r = _per_species(settings.ratsph, s, "ratsph") if settings.ratsph is not None else None
        if r is None:
            rpaw = paw_radius(_dataset_path(settings, s, directory))
            if rpaw is None:
                raise InputError(f"cannot read the PAW radius of {s}'s dataset "
                                 f"{_dataset_path(settings, s, directory)}; set ratsph", field="ratsph")
            r = math.ceil(rpaw * 100.0 - 1e-9) / 100.0
        ratsph.append(float(r))
    kinds = [int(_per_species(settings.constraint_kind, s, "constraint_kind")) if constrained else 0
             for s in symbols]
    ngkpt = list(settings.ngkpt) if settings.ngkpt is not None else kpoint_grid(cfg.cell, settings.kspacing)
    cell_bohr = cfg.cell / BOHR_ANGSTROM
    pos_bohr = cfg.positions / BOHR_ANGSTROM

    lines = ["# constrained-moment ground state written by mmtp_hpc.active.dft_abinit"]
    if comment:
        lines += ["# " + line for line in comment.splitlines()]
    if mirrored:
        lines.append(MIRROR_MARK)
    lines += [f"natom {n}", f"ntypat {len(present)}",
              "typat " + " ".join(str(abinit_type[t]) for t in cfg.types.tolist()),
              "znucl " + " ".join(str(atomic_numbers[s]) for s in symbols),
              "acell 3*1.0", "rprim"]
    lines += ["  " + " ".join(f"{v: .12f}" for v in row) for row in cell_bohr]
    lines.append("xcart")
    lines += ["  " + " ".join(f"{v: .12f}" for v in row) for row in pos_bohr]
    # chksymtnons 0: a displaced cell keeps symmetries whose fractional translations are not
    # multiples of 1/8 or 1/12 (e.g. inversion about a shifted centre); ABINIT 9.6 stops on them by
    # default (a check meant for GW/BSE), which would reject most MD-sampled configurations.
    lines += ["chkprim 0", "chksymtnons 0", "nsppol 2", "spinat"]
    lines += [f"  0.0 0.0 {v: .10f}" for v in m]
    lines += ["constraint_kind " + " ".join(str(k) for k in kinds),
              "ratsph " + " ".join(f"{r:.4f}" for r in ratsph),
              f"iscf {settings.iscf}",
              f"ecut {settings.ecut!r}",
              f"pawecutdg {(settings.pawecutdg if settings.pawecutdg is not None else 2 * settings.ecut)!r}",
              "ngkpt " + " ".join(str(int(k)) for k in ngkpt), "nshiftk 1", "shiftk 0.0 0.0 0.0",
              f"occopt {settings.occopt}", f"tsmear {settings.tsmear!r}",
              f"nstep {settings.nstep}", f"toldfe {settings.toldfe!r}",
              "optforces 1", "optstress 1"]
    if settings.pp_dirpath is not None:
        lines.append(f'pp_dirpath "{settings.pp_dirpath}"')
    lines.append('pseudos "' + ", ".join(settings.pseudos[s] for s in symbols) + '"')
    lines += [f'output_file "{OUTPUT_NAME}"', 'outdata_prefix "runo"', 'tmpdata_prefix "runt"',
              "prtwf 0", "prtden 0", "prteig 0", "prtgsr 0", "prtebands 0"]
    for key, value in settings.extra.items():
        lines.append(f"{key} {_format_value(value)}")
    path = directory / INPUT_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# =====================================================================================
# reading
# =====================================================================================
@dataclass
class AbinitResult:
    """Numbers of one finished ABINIT ground state, converted to eV, Å, μB."""

    energy: float                        # eV
    forces: np.ndarray                   # (N, 3) eV/Å
    stress: np.ndarray | None            # (3, 3) eV/Å³, ASE sign (negative under compression)
    magmoms: np.ndarray                  # (N,) μB integrated in the ratsph spheres
    magnetic_gradient: np.ndarray | None  # (N,) eV/μB, +∂E/∂m (from grspin), None without it


def _outvars_after(lines: list[str], name: str) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Variables of the ``-outvars: echo values of variables after computation`` block."""
    start = None
    for k, line in enumerate(lines):
        if "echo values of variables after computation" in line:
            start = k + 1
    if start is None:
        raise InputError("no '-outvars: echo values of variables after computation' block: the run "
                         "did not finish", path=name)
    values: dict[str, list[float]] = {}
    where: dict[str, int] = {}
    key = None
    for k in range(start, len(lines)):
        line = lines[k]
        if not line.strip():
            break
        body = line[1:] if line[:1] not in (" ", "") else line   # column 1 holds a marker (-, P, …)
        tokens = body.split()
        if not tokens:
            continue
        if re.fullmatch(r"[a-z_][a-z0-9_]*", tokens[0]):
            key = tokens[0]
            tokens = tokens[1:]
            values[key] = []
            where[key] = k + 1
        if key is None:
            continue
        for tok in tokens:
            try:
                values[key].append(float(tok.replace("D", "E").replace("d", "e")))
            except ValueError:
                pass    # unit names (Hartree, Bohr, …) and element symbols
    return values, where


def _sphere_moments(lines: list[str], name: str) -> np.ndarray:
    """Diff(up-dn) column of the last "Integrated ... densities in atomic spheres" table."""
    start = None
    for k, line in enumerate(lines):
        if "Integrated electronic and magnetization densities in atomic spheres" in line:
            start = k
    if start is None:
        raise InputError("no 'Integrated electronic and magnetization densities in atomic spheres' "
                         "table (is nsppol 2 set?)", path=name)
    header = None
    for k in range(start, min(start + 8, len(lines))):
        if lines[k].split()[:1] == ["Atom"]:
            header = k
            break
    if header is None or "Diff(up-dn)" not in lines[header]:
        raise InputError("unexpected sphere-moment table header (collinear nsppol 2 expected)",
                         path=name, line=(header or start) + 1)
    col = lines[header].split().index("Diff(up-dn)")
    moments = []
    for k in range(header + 1, len(lines)):
        tokens = lines[k].split()
        if not tokens or not tokens[0].isdigit():
            break
        try:
            moments.append(float(tokens[col]))
        except (IndexError, ValueError):
            raise InputError("malformed sphere-moment row", path=name, line=k + 1) from None
    return np.array(moments)


def abinit_errors(text: str) -> list[str]:
    """The messages of ABINIT's ``--- !ERROR`` (and ``!BUG``) YAML blocks in a log or output, each
    as ``file:line: first lines of the message``; empty when there are none."""
    out = []
    lines = text.splitlines()
    for k, line in enumerate(lines):
        m = re.match(r"^\s*(\w+): (ERROR|BUG) -\s*$", line)
        if m:       # the old-style paragraph that usually says what is wrong
            body = [t.strip() for t in lines[k + 1:k + 6] if t.strip()][:3]
            out.append(f"{m.group(2)} in {m.group(1)}: " + " ".join(body))
            continue
        if line.strip() not in ("--- !ERROR", "--- !BUG"):
            continue
        src = where = ""
        message: list[str] = []
        in_message = False
        for body in lines[k + 1:k + 80]:
            stripped = body.strip()
            if stripped == "...":
                break
            if stripped.startswith("src_file:"):
                src = stripped.split(":", 1)[1].strip()
            elif stripped.startswith("src_line:"):
                where = stripped.split(":", 1)[1].strip()
            elif stripped.startswith("message:"):
                in_message = True
                rest = stripped.split(":", 1)[1].strip()
                if rest and rest != "|":
                    message.append(rest)
            elif in_message and stripped:
                message.append(stripped)
        text_msg = " ".join(message[:4]) or "(no message)"
        label = line.strip()[5:]
        out.append(f"{label} {src}:{where}: {text_msg}" if src else f"{label}: {text_msg}")
    seen: list[str] = []
    for e in out:               # every rank prints the same block
        if e not in seen:
            seen.append(e)
    return seen


def read_abinit_output(path: str | os.PathLike, log: str | os.PathLike | None = None) -> AbinitResult:
    """Parse an ABINIT 9 main output file (``.abo``) of one collinear (constrained) ground state.

    A run that stopped on an ABINIT error raises :class:`DFTCodeError` with ABINIT's message
    (looked for in the ``.abo`` and in ``log``, ABINIT's log/stdout, when given); one whose SCF
    cycle ran out of steps raises :class:`SCFNotConverged`.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise InputError(f"cannot read the ABINIT output: {exc.strerror}", path=name) from None
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if "was not enough SCF cycles to converge" in line:
            raise SCFNotConverged("the SCF cycle did not converge (" + line.strip() + "); raise nstep "
                                  "or change the mixing", path=name, line=k + 1)
    if "Calculation completed." not in text:
        errors = abinit_errors(text)
        if log is not None and Path(log).is_file():
            errors += [e for e in abinit_errors(Path(log).read_text(encoding="utf-8", errors="replace"))
                       if e not in errors]
        if errors:
            raise DFTCodeError("ABINIT stopped with " + "; ".join(errors), path=name)
        if not text:
            raise InputError("no ABINIT output (the run did not start or wrote elsewhere)", path=name)
        raise InputError("the run did not finish ('Calculation completed.' missing)", path=name)
    values, where = _outvars_after(lines, name)
    if any(re.fullmatch(r"etotal\d+", k) for k in values):
        raise InputError("multi-dataset outputs are not supported (one ground state per run)",
                         path=name, field="etotal")

    def need(key: str, size: int | None = None) -> np.ndarray:
        if key not in values:
            raise InputError(f"{key} missing from the outvars echo", path=name, field=key)
        arr = np.array(values[key])
        if size is not None and arr.size != size:
            raise InputError(f"expected {size} numbers, got {arr.size}", path=name,
                             line=where[key], field=key)
        return arr

    natom = int(need("natom", 1)[0])
    energy = float(need("etotal", 1)[0]) * HARTREE_EV
    forces = need("fcart", 3 * natom).reshape(natom, 3) * (HARTREE_EV / BOHR_ANGSTROM)
    stress = None
    if "strten" in values:
        voigt = need("strten", 6) * (HARTREE_EV / BOHR_ANGSTROM**3)
        stress = np.zeros((3, 3))
        for v, (a, b) in zip(voigt, _VOIGT, strict=True):
            stress[a, b] = stress[b, a] = v
    gradient = None
    if "grspin" in values:
        gradient = need("grspin", 3 * natom).reshape(natom, 3)[:, 2] * HARTREE_EV
    moments = _sphere_moments(lines, name)
    if moments.size != natom:
        raise InputError(f"the sphere-moment table has {moments.size} atoms, natom is {natom}",
                         path=name)
    return AbinitResult(energy=energy, forces=forces, stress=stress, magmoms=moments,
                        magnetic_gradient=gradient)


def is_mirrored(input_path: str | os.PathLike) -> bool:
    """Whether the ABINIT input ``input_path`` was written mirrored (M → −M) by
    :func:`write_abinit_input`; False for an input that does not exist or lacks the mark."""
    try:
        with open(input_path, encoding="utf-8", errors="replace") as fh:
            return any(line.rstrip("\n") == MIRROR_MARK for line in fh)
    except OSError:
        return False


def unmirror(result: AbinitResult) -> AbinitResult:
    """The result of the configuration whose mirror image (M → −M) ABINIT computed: energy, forces
    and stress unchanged (no spin–orbit coupling), moments and ∂E/∂m negated."""
    return AbinitResult(energy=result.energy, forces=result.forces, stress=result.stress,
                        magmoms=-result.magmoms,
                        magnetic_gradient=None if result.magnetic_gradient is None
                        else -result.magnetic_gradient)


def label_from_abinit(cfg: Configuration, result: AbinitResult, source: str = "") -> Configuration:
    """Copy of ``cfg`` with the labels of ``result`` (atoms in the same order as written)."""
    n = len(cfg)
    if len(result.forces) != n:
        raise InputError(f"ABINIT output has {len(result.forces)} atoms, the configuration {n}",
                         path=source or None)
    out = cfg.copy()
    out.clear_labels()
    out.energy = result.energy
    out.forces = result.forces.copy()
    if result.stress is not None and cfg.pbc.all():
        out.virial = -result.stress * cfg.volume
    out.magmoms = result.magmoms.copy()
    out.magnetic_gradient = None if result.magnetic_gradient is None else result.magnetic_gradient.copy()
    out.features = dict(out.features)
    out.features["EFS_by"] = EFS_BY
    return out
