r"""VASP soft-constrained-moment inputs and outputs for the ``vasp`` oracle writer.

This module's single job is the file interface to VASP's constrained local moments:
:func:`write_vasp_inputs` writes INCAR, POSCAR and KPOINTS (and POTCAR when datasets are
given) whose penalty drives each atom's moment to the configuration's target, and
:func:`read_vasp_outputs` / :func:`label_from_vasp` read OUTCAR (or vasprun.xml) and the
constraint block of OSZICAR/OUTCAR back into a labelled
:class:`~mmtp_hpc.system.configuration.Configuration`.

The penalty (VASP wiki, ``I_CONSTRAINED_M``) and the choice made here
--------------------------------------------------------------------
``I_CONSTRAINED_M = 1`` penalises only the *direction* of the integrated moment, so it
cannot hold a collinear moment at a chosen *size*. Magnitude constraints need
``I_CONSTRAINED_M = 2``:

    E = E_DFT + λ Σ_I |M_I − M_I⁰|²,

with M_I the (smoothed) moment integrated in a sphere of radius ``RWIGS`` around atom I and
M_I⁰ the ``M_CONSTR`` vector. VASP implements the constraint only in its non-collinear code
(``vasp_ncl``), so the writer sets ``LNONCOLLINEAR = .TRUE.`` and writes each collinear
target m_i as the vector (0, 0, m_i) along z, in both ``M_CONSTR`` and the starting
``MAGMOM``; ``ISYM = 0`` because the targets break the symmetry. VASP treats a zero
``M_CONSTR`` vector as "no constraint", so a target of exactly 0 is written as 1e-4 μB.
``LAMBDA`` (eV/μB²) is the rung of the oracle's λ ladder.

Labels (units and signs)
------------------------
- ``magmoms``: the z component of ``MW_int`` (the integrated moment that enters the penalty),
  from the last constraint block; without one, the ``tot`` column of the last
  ``magnetization (z)`` (non-collinear) or ``magnetization (x)`` (collinear) table.
- ``magnetic_gradient`` = **+∂E_DFT/∂m** (MLIP-3 sign). At the self-consistent minimum of
  E_DFT + λ Σ|M − M⁰|² the two gradients balance: ∂E_DFT/∂M_I = **−2λ (M_I − M_I⁰)** (z
  component). Check of the sign: a moment held *above* its target is pulled down by the
  penalty, so the DFT energy alone falls as the moment grows, ∂E_DFT/∂m < 0 = −2λ(M − M⁰).
- ``energy`` = ``free energy TOTEN`` − ``E_p`` (the penalty energy is part of TOTEN; the label
  is the DFT energy at the moments reached). The free energy is used because VASP's forces
  derive from it.
- ``forces``: ``TOTAL-FORCE`` (eV/Å); ``virial`` (eV, PlusStress) = V · s(kB) · 0.1 GPa/kB /
  160.21766 GPa·Å³/eV, since VASP's "in kB" line is positive under compression (ASE's
  stress is its negative); components XX YY ZZ XY YZ ZX. Both are VASP's and so carry the
  penalty's small share, which vanishes as λ grows (E_p ≈ h²/4λ for a constraining field h).

OSZICAR prints ``MW_int`` with three decimals, so ∂E/∂m carries a rounding of up to
λ·1e-3 eV/μB (0.02 eV/μB at λ = 20). The reader was written against VASP's documented
layout and a hand-written fixture in that layout; it has not met real VASP output here.

Atoms are written to POSCAR grouped by species (stable sort by type, as POSCAR requires)
and the outputs are mapped back to the configuration's order with the same permutation.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmtp_hpc.active.dft_common import SCFNotConverged, constrained_inputs
from mmtp_hpc.errors import InputError
from mmtp_hpc.settings import integer, int_list, optional, path_with, per_species, positive, table
from mmtp_hpc.settings import key as _key
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA, Configuration

EFS_BY = "vasp"
ZERO_TARGET = 1e-4          # μB written for a target of exactly 0 (a zero M_CONSTR means "free")
KBAR_TO_GPA = 0.1
_path = path_with(optional=False)


@dataclass
class VaspSettings:
    """Settings of the VASP writer (the ``[oracle.vasp]`` table). Units: eV, Å."""

    rwigs: float | dict[str, float] | None = _key(None,
        "integration-sphere radius RWIGS (Å), one value or per species (required)",
        optional(per_species(positive, "radius")))
    encut: float = _key(400.0, "plane-wave cutoff ENCUT (eV)", positive)
    kpoints: list[int] | None = _key(None,
        "Γ-centred grid (3 integers); default from kspacing", optional(int_list(3, 1)))
    kspacing: float = _key(0.25,
        "k spacing (Å⁻¹, with 2π): n_i = max(1, ceil(2π|b_i|/kspacing))", positive)
    ismear: int = _key(1, "ISMEAR", integer())
    sigma: float = _key(0.1, "SIGMA (eV)", positive)
    ediff: float = _key(1e-6, "EDIFF (eV)", positive)
    nelm: int = _key(200, "NELM (maximum SCF steps)", integer(1))
    potcars: dict[str, str] = _key({},
        "POTCAR file per species, concatenated into POTCAR (else the template directory must "
        "provide POTCAR)", per_species(_path, '"path"', single=False), resolve=True)
    extra: dict[str, Any] = _key({},
        "further INCAR tags written verbatim, e.g. {GGA = \"PE\", NCORE = 4}", table)


def poscar_order(cfg: Configuration) -> np.ndarray:
    """Permutation (stable sort by type): POSCAR atom k is configuration atom ``order[k]``."""
    return np.argsort(cfg.types, kind="stable")


def _incar_value(value: Any) -> str:
    if isinstance(value, bool):
        return ".TRUE." if value else ".FALSE."
    if isinstance(value, (list, tuple)):
        return " ".join(_incar_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _kgrid(cell: np.ndarray, kspacing: float) -> list[int]:
    recip = np.linalg.inv(np.asarray(cell, dtype=float)).T
    return [max(1, math.ceil(2.0 * math.pi * float(np.linalg.norm(b)) / kspacing - 1e-9))
            for b in recip]


def constraint_targets(magmoms: np.ndarray) -> np.ndarray:
    """The z components written to M_CONSTR: the targets, exact zeros replaced by ZERO_TARGET."""
    m = np.array(magmoms, dtype=float)
    m[m == 0.0] = ZERO_TARGET
    return m


def write_vasp_inputs(cfg: Configuration, directory: str | os.PathLike, species: Sequence[str],
                      settings: VaspSettings, lambda_: float,
                      target_moments: np.ndarray | None = None, comment: str = "") -> list[Path]:
    """Write INCAR, POSCAR, KPOINTS (and POTCAR when ``settings.potcars`` is set) in ``directory``.

    ``species[t]`` is the chemical symbol of type ``t``; ``lambda_`` the penalty LAMBDA
    (eV/μB²); ``target_moments`` (default ``cfg.magmoms``, μB) the collinear targets.
    """
    directory = Path(directory)
    m, present, symbols = constrained_inputs(cfg, species, target_moments, "VASP")
    if not (lambda_ > 0 and math.isfinite(lambda_)):
        raise InputError(f"LAMBDA must be a positive number, got {lambda_!r}", field="lambdas")
    counts = [int(np.sum(cfg.types == t)) for t in present]
    order = poscar_order(cfg)
    if settings.rwigs is None:
        raise InputError("RWIGS (Å) is needed for the constrained moments: set rwigs", field="rwigs")
    rwigs = []
    for s in symbols:
        if isinstance(settings.rwigs, dict):
            if s not in settings.rwigs:
                raise InputError(f"no RWIGS for species {s!r}", field="rwigs")
            rwigs.append(float(settings.rwigs[s]))
        else:
            rwigs.append(float(settings.rwigs))
    targets = constraint_targets(m[order])
    vec = " ".join(f"0 0 {v:.6f}" for v in targets)
    kpts = list(settings.kpoints) if settings.kpoints is not None else _kgrid(cfg.cell, settings.kspacing)

    tags: dict[str, Any] = {
        "SYSTEM": (comment.splitlines()[0] if comment else "mmtp_hpc constrained moments"),
        "PREC": "Accurate", "ENCUT": settings.encut, "EDIFF": settings.ediff, "NELM": settings.nelm,
        "ISMEAR": settings.ismear, "SIGMA": settings.sigma,
        "NSW": 0, "IBRION": -1, "ISIF": 2, "ISYM": 0, "LORBIT": 11,
        "LWAVE": False, "LCHARG": False,
        "LNONCOLLINEAR": True, "SAXIS": "0 0 1", "MAGMOM": vec,
        "I_CONSTRAINED_M": 2, "M_CONSTR": vec, "LAMBDA": float(lambda_),
        "RWIGS": " ".join(f"{r:.4f}" for r in rwigs),
    }
    for key, value in settings.extra.items():
        tags[str(key).upper()] = value
    incar = directory / "INCAR"
    incar.write_text("".join(f"{k} = {_incar_value(v)}\n" for k, v in tags.items()), encoding="utf-8")

    poscar = directory / "POSCAR"
    lines = [(comment.splitlines()[0] if comment else "mmtp_hpc configuration"), "1.0"]
    lines += ["  " + " ".join(f"{v: .12f}" for v in row) for row in cfg.cell]
    lines += ["  " + " ".join(symbols), "  " + " ".join(str(c) for c in counts), "Cartesian"]
    lines += ["  " + " ".join(f"{v: .12f}" for v in cfg.positions[k]) for k in order]
    poscar.write_text("\n".join(lines) + "\n", encoding="utf-8")

    kpoints = directory / "KPOINTS"
    kpoints.write_text("mmtp_hpc Gamma-centred grid\n0\nGamma\n  " + " ".join(str(int(k)) for k in kpts)
                       + "\n  0 0 0\n", encoding="utf-8")
    written = [incar, poscar, kpoints]
    if settings.potcars:
        missing = [s for s in symbols if s not in settings.potcars]
        if missing:
            raise InputError(f"no POTCAR for species {missing}", field="potcars")
        potcar = directory / "POTCAR"
        with open(potcar, "w", encoding="utf-8") as out:
            for s in symbols:
                try:
                    out.write(Path(settings.potcars[s]).read_text(encoding="utf-8", errors="replace"))
                except OSError as exc:
                    raise InputError(f"cannot read POTCAR of {s}: {exc.strerror}",
                                     path=settings.potcars[s], field="potcars") from None
        written.append(potcar)
    return written


def read_incar(path: str | os.PathLike) -> dict[str, str]:
    """INCAR tags as ``{TAG: raw value string}`` (comments after ``#``/``!`` dropped)."""
    tags: dict[str, str] = {}
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = re.split(r"[#!]", raw, maxsplit=1)[0]
        for part in line.split(";"):
            if not part.strip():
                continue
            if "=" not in part:
                raise InputError(f"expected TAG = value, got {part.strip()!r}", path=str(path), line=lineno)
            key, value = part.split("=", 1)
            tags[key.strip().upper()] = value.strip()
    return tags


def read_poscar(path: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(cell (3, 3) Å, symbol of every atom, Cartesian positions (N, 3) Å) of a VASP 5 POSCAR."""
    name = str(path)
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    try:
        scale = float(lines[1].split()[0])
        cell = np.array([[float(x) for x in lines[k].split()[:3]] for k in (2, 3, 4)]) * scale
        symbols = lines[5].split()
        counts = [int(x) for x in lines[6].split()]
        mode = lines[7].strip().lower()
        rows = lines[8:8 + sum(counts)]
        frac = np.array([[float(x) for x in r.split()[:3]] for r in rows])
    except (IndexError, ValueError):
        raise InputError("not a VASP 5 POSCAR (symbols line expected on line 6)", path=name) from None
    positions = frac @ cell if mode.startswith("d") else frac * scale
    expanded = [s for s, c in zip(symbols, counts, strict=True) for _ in range(c)]
    return cell, expanded, positions


# =====================================================================================
# reading
# =====================================================================================
@dataclass
class VaspResult:
    """Numbers of one VASP run in POSCAR order, in eV, Å, μB (see the module doc for signs)."""

    free_energy: float                     # TOTEN (eV), penalty included
    penalty_energy: float                  # E_p (eV), 0 without constraint block
    forces: np.ndarray                     # (N, 3) eV/Å
    stress_kbar: np.ndarray | None         # (3, 3) kB, positive under compression
    magmoms: np.ndarray | None             # (N,) μB
    mw_int: np.ndarray | None              # (N, 3) μB, smoothed integrated moments
    lambda_: float | None                  # LAMBDA of the constraint block
    converged: bool

    @property
    def energy(self) -> float:
        """DFT energy at the moments reached: TOTEN − E_p (eV)."""
        return self.free_energy - self.penalty_energy


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?"


def _floats(line: str) -> list[float]:
    return [float(x.replace("D", "E").replace("d", "e")) for x in re.findall(_FLOAT, line)]


def _parse_outcar(text: str, name: str, n: int) -> dict:
    lines = text.splitlines()
    out: dict = {}
    for k, line in enumerate(lines):
        if "free  energy   TOTEN" in line or "free energy    TOTEN" in line:
            out["free_energy"] = _floats(line.split("=", 1)[1])[0]
        elif "TOTAL-FORCE (eV/Angst)" in line:
            rows = lines[k + 2:k + 2 + n]
            try:
                out["forces"] = np.array([_floats(r)[3:6] for r in rows], dtype=float).reshape(n, 3)
            except ValueError:
                raise InputError("malformed TOTAL-FORCE block", path=name, line=k + 1) from None
        elif line.strip().startswith("in kB"):
            vals = _floats(line.split("kB", 1)[1])
            if len(vals) != 6:
                raise InputError("expected 6 stress components after 'in kB'", path=name, line=k + 1)
            xx, yy, zz, xy, yz, zx = vals
            out["stress_kbar"] = np.array([[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]])
        elif re.match(r"^\s*magnetization \(([xyz])\)\s*$", line):
            axis = line.strip()[-2]
            moments = []
            j = k + 1
            while j < len(lines) and not lines[j].startswith("# of ion"):
                j += 1
            for r in lines[j + 2:j + 2 + n]:
                vals = r.split()
                if not vals or not vals[0].isdigit():
                    break
                moments.append(float(vals[-1]))
            if len(moments) == n:
                out[f"magnetization_{axis}"] = np.array(moments)
        elif "aborting loop because EDIFF is reached" in line:
            out["converged"] = True
    return out


def _parse_constraint(text: str, n: int) -> dict | None:
    """The last ``E_p = … lambda = …`` block with its ``MW_int M_int`` table (OSZICAR or OUTCAR)."""
    lines = text.splitlines()
    last = None
    for k, line in enumerate(lines):
        if line.strip().startswith("E_p ="):
            last = k
    if last is None:
        return None
    m = re.search(r"E_p\s*=\s*(" + _FLOAT + r")\s+lambda\s*=\s*(" + _FLOAT + ")", lines[last])
    if m is None:
        return None
    block = {"penalty_energy": float(m.group(1).replace("D", "E")),
             "lambda_": float(m.group(2).replace("D", "E"))}
    for k in range(last + 1, min(last + 8, len(lines))):
        if "MW_int" in lines[k]:
            rows = []
            for r in lines[k + 1:k + 1 + n]:
                vals = _floats(r)
                if len(vals) < 7:
                    break
                rows.append(vals[1:7])
            if len(rows) == n:
                arr = np.array(rows)
                block["mw_int"] = arr[:, :3]
                block["m_int"] = arr[:, 3:]
            break
    return block


def read_vasprun(path: str | os.PathLike) -> dict:
    """Final ``e_fr_energy`` (eV), forces (N, 3) eV/Å and stress (3, 3) kB of a vasprun.xml."""
    name = str(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise InputError(f"cannot read vasprun.xml: {exc}", path=name) from None
    calcs = root.findall("calculation")
    if not calcs:
        raise InputError("no <calculation> in vasprun.xml", path=name)
    calc = calcs[-1]
    out: dict = {}
    for e in calc.findall("energy/i"):
        if e.get("name") == "e_fr_energy":
            out["free_energy"] = float(e.text)
    for arr in calc.findall("varray"):
        rows = np.array([[float(x) for x in v.text.split()] for v in arr.findall("v")])
        if arr.get("name") == "forces":
            out["forces"] = rows
        elif arr.get("name") == "stress":
            out["stress_kbar"] = rows
    return out


def read_vasp_outputs(directory: str | os.PathLike, n_atoms: int) -> VaspResult:
    """Parse a finished run in ``directory`` (OUTCAR, else vasprun.xml; OSZICAR for the constraint)."""
    directory = Path(directory)
    outcar, vasprun, oszicar = directory / "OUTCAR", directory / "vasprun.xml", directory / "OSZICAR"
    texts = {}
    data: dict = {}
    if outcar.is_file():
        texts["OUTCAR"] = outcar.read_text(encoding="utf-8", errors="replace")
        data = _parse_outcar(texts["OUTCAR"], str(outcar), n_atoms)
        source = outcar
    elif vasprun.is_file():
        data = read_vasprun(vasprun)
        data["converged"] = True        # vasprun.xml has no EDIFF message: trusted as finished
        source = vasprun
    else:
        raise InputError(f"neither OUTCAR nor vasprun.xml in {directory}", path=str(directory))
    for key, what in (("free_energy", "free energy TOTEN"), ("forces", "TOTAL-FORCE block")):
        if key not in data:
            raise InputError(f"no {what} found: the run did not finish", path=str(source))
    if source == outcar and not data.get("converged", False):
        raise SCFNotConverged("the electronic SCF did not converge ('aborting loop because EDIFF is "
                         "reached' missing): raise NELM or check the constraint", path=str(outcar))
    constraint = None
    if oszicar.is_file():
        constraint = _parse_constraint(oszicar.read_text(encoding="utf-8", errors="replace"), n_atoms)
    if constraint is None and "OUTCAR" in texts:
        constraint = _parse_constraint(texts["OUTCAR"], n_atoms)
    magmoms = None
    mw_int = None
    if constraint is not None and "mw_int" in constraint:
        mw_int = constraint["mw_int"]
        magmoms = mw_int[:, 2].copy()
    elif "magnetization_z" in data:
        magmoms = data["magnetization_z"]
    elif "magnetization_x" in data:
        magmoms = data["magnetization_x"]
    if len(data["forces"]) != n_atoms:
        raise InputError(f"expected forces on {n_atoms} atoms, got {len(data['forces'])}", path=str(source))
    return VaspResult(free_energy=float(data["free_energy"]),
                      penalty_energy=float(constraint["penalty_energy"]) if constraint else 0.0,
                      forces=np.asarray(data["forces"], dtype=float),
                      stress_kbar=data.get("stress_kbar"), magmoms=magmoms, mw_int=mw_int,
                      lambda_=constraint["lambda_"] if constraint else None,
                      converged=bool(data.get("converged", False)))


def label_from_vasp(cfg: Configuration, directory: str | os.PathLike) -> Configuration:
    """Copy of ``cfg`` labelled from the VASP run in ``directory`` (inputs written by
    :func:`write_vasp_inputs`: the INCAR there gives the targets M_CONSTR and LAMBDA)."""
    directory = Path(directory)
    n = len(cfg)
    res = read_vasp_outputs(directory, n)
    order = poscar_order(cfg)
    out = cfg.copy()
    out.clear_labels()
    out.energy = res.energy
    forces = np.empty((n, 3))
    forces[order] = res.forces
    out.forces = forces
    if res.stress_kbar is not None and cfg.pbc.all():
        out.virial = res.stress_kbar * KBAR_TO_GPA * cfg.volume / EV_PER_A3_TO_GPA
    if res.magmoms is not None:
        m = np.empty(n)
        m[order] = res.magmoms
        out.magmoms = m
    if res.mw_int is not None:
        incar = read_incar(directory / "INCAR")
        try:
            constr = np.array([float(x) for x in incar["M_CONSTR"].split()]).reshape(n, 3)
            lam = float(incar["LAMBDA"])
        except (KeyError, ValueError):
            raise InputError("INCAR lacks a readable M_CONSTR (3 per atom) and LAMBDA",
                             path=str(directory / "INCAR")) from None
        if res.lambda_ is not None and not math.isclose(res.lambda_, lam, rel_tol=1e-3):
            raise InputError(f"LAMBDA {lam:g} in INCAR but {res.lambda_:g} in the output",
                             path=str(directory / "INCAR"), field="LAMBDA")
        grad = np.empty(n)
        grad[order] = -2.0 * lam * (res.mw_int[:, 2] - constr[:, 2])
        out.magnetic_gradient = grad
    out.features = dict(out.features)
    out.features["EFS_by"] = EFS_BY
    return out
