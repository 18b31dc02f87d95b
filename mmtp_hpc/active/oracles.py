r"""Oracles of the active-learning loop: label selected configurations behind one interface.

This module's single job is turning configurations (positions, cell, types, *target*
moments) into labelled ones: energy (eV), forces (eV/Å), virial (PlusStress, eV; periodic
cells), the moments actually reached (μB) and, when the oracle provides it, the magnetic
gradient **+∂E/∂m** (eV/μB, MLIP-3's ``en_der`` sign). Spec §5.

Oracles
-------
- :class:`AnalyticOracle` — the built-in analytic Fe–Al model
  (:class:`~mmtp_hpc.potentials.analytic.AnalyticMagneticModel`): moments held at their
  targets (constrained DFT stand-in) or relaxed. For tests, demos and benchmarks.
- :class:`ASEOracle` — any ASE calculator. Moments from ``get_magnetic_moments()`` when the
  calculator has them (else the targets), ∂E/∂m from ``results["magnetic_gradient"]``.
- :class:`CommandOracle` — an external program run once per configuration (and per λ rung)
  in its own directory: the writer (``"cfg"``, ``"vasp"``, ``"abinit"``) puts the inputs
  there, the template directory's files (job script, POTCAR, datasets) are copied beside
  them, the command runs as an argument list (never through a shell) with
  ``subprocess``-level timeout, and the writer parses the outputs.

Soft constraints (arXiv 2605.26897 SI)
--------------------------------------
DFT holds the moments at m_target with a penalty λ Σ_i (m_i − m_target,i)². A finite λ
leaves the moments short of the target, so the command oracle climbs a ladder of λ values,
one run per rung in ``step_00``, ``step_01``, … until every |m_i − m_target,i| ≤
``moment_tolerance``. The label is the configuration at the moments actually reached, with
∂E/∂m from the constraining field; if the ladder ends first, the last rung's result is
kept and ``features['oracle_warning']`` says by how much the moments missed. Writers with an
exact constraint (ABINIT's ``constraint_kind``) run once.

The ``cfg`` writer
------------------
``input.cfg`` (MLIP-3 format: the configuration with its target moments, no labels, and
``Feature constraint_lambda λ`` on a λ rung) is written in the run directory; the command
must write ``output.cfg`` with one labelled configuration (same atoms, same order):
``Energy``, forces, optionally ``PlusStress``, ``magmom_x`` (the moments reached; default the
targets) and ``en_der_mx`` (+∂E/∂m). Any program, e.g. ``mlp calc-efs``, can so be an oracle.

Placeholders in the command
---------------------------
``{workdir}`` (the run directory, also the working directory), ``{cfgdir}`` (the
configuration's directory), ``{index}`` (position in the batch), ``{step}`` (λ rung) and
``{lambda}`` are replaced inside argument strings; anything else is passed literally. The
same values are in the environment as ``MMTP_WORKDIR``, ``MMTP_CFGDIR``, ``MMTP_INDEX``,
``MMTP_STEP``, ``MMTP_LAMBDA``.

Resumable batches
-----------------
:func:`label_all` labels configuration k in ``workdir/cfg_{k:05d}/`` and writes the result
atomically to ``labelled.cfg`` there; each λ rung keeps its parsed result in
``step_XX/step_result.cfg``. A rerun reads both back instead of recomputing, so a killed
batch loses at most the runs that were in flight.

TOML (the ``[oracle]`` table, read by :func:`oracle_from_settings`)::

    [oracle]
    kind = "command"                       # "analytic" | "ase" | "command"
    command = ["mpirun", "-n", "4", "vasp_ncl"]
    writer = "vasp"                        # "cfg" | "vasp" | "abinit"
    template_dir = "vasp_template"         # relative to the TOML file
    timeout = 7200                         # s per run
    lambdas = [10.0, 20.0, 50.0]           # eV/μB², the soft-constraint ladder
    moment_tolerance = 0.05                # μB
    missed_constraint = "keep"             # or "reject" (ABINIT's default): beyond the tolerance
    retry = [{nelm = 400}]                 # reruns after an SCF that did not converge
    workers = 2                            # configurations labelled at the same time
    cores = 4                              # cores of one run (default: mpirun's -np)
    [oracle.vasp]
    rwigs = {Fe = 1.3, Al = 1.4}
    encut = 450

    # kind = "analytic": model = "default" | "path.json", relax = false
    # kind = "ase": calculator = "package.module:ClassOrFactory", parameters = {...},
    #               path_parameters = ["potential"] (resolved relative to the TOML file),
    #               magnetic = true
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import importlib
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmtp_hpc.active import dft_abinit
from mmtp_hpc.active.dft_abinit import (
    AbinitSettings,
    label_from_abinit,
    read_abinit_output,
    write_abinit_input,
)
from mmtp_hpc.active.dft_common import DFTCodeError, SCFNotConverged
from mmtp_hpc.active.dft_vasp import VaspSettings, label_from_vasp, write_vasp_inputs
from mmtp_hpc.errors import InputError, MMTPError
from mmtp_hpc.io.cfg import read_cfg, write_cfg
from mmtp_hpc.settings import (
    Bad,
    boolean,
    build_section,
    check_value,
    describe_section,
    failer,
    integer,
    path_with,
    positive,
    resolve_path,
    type_name,
)
from mmtp_hpc.settings import text as _text
from mmtp_hpc.settings import table as table_
from mmtp_hpc.system.configuration import Configuration

WRITERS = ("cfg", "vasp", "abinit")
KINDS = ("analytic", "ase", "command")
LABELLED_NAME = "labelled.cfg"
STEP_RESULT_NAME = "step_result.cfg"
CFG_INPUT = "input.cfg"
CFG_OUTPUT = "output.cfg"
DEFAULT_VASP_LAMBDAS = (10.0, 20.0, 50.0, 100.0)
_PLACEHOLDER = re.compile(r"\{(workdir|cfgdir|index|step|lambda)\}")


FAILURE_KINDS = ("scf", "constraint", "code", "timeout", "command", "other")
# failures that belong to the configuration (the physics or the DFT code on this input): a batch
# may record and skip them; the others (the program cannot start, no output, ...) stop the batch
SKIPPABLE = ("scf", "constraint", "code", "timeout")


class OracleError(MMTPError):
    """Labelling failed; names the configuration index and its working directory.

    ``kind``: ``"scf"`` (the SCF did not converge, retries included), ``"constraint"`` (the moments
    missed their targets), ``"code"`` (the DFT code reported an error), ``"timeout"``,
    ``"command"`` (the program failed to start or to write its output) or ``"other"``.
    """

    def __init__(self, message: str, index: int | None = None,
                 workdir: str | os.PathLike | None = None, kind: str = "other"):
        self.reason = message
        self.index = index
        self.kind = kind if kind in FAILURE_KINDS else "other"
        self.workdir = None if workdir is None else Path(workdir)
        parts = []
        if index is not None:
            parts.append(f"configuration {index}")
        if workdir is not None:
            parts.append(f"workdir {workdir}")
        super().__init__(f"{', '.join(parts)}: {message}" if parts else message)


# =====================================================================================
# interface
# =====================================================================================
class Oracle:
    """Base class: ``label(cfg, workdir)`` returns a labelled copy of ``cfg``.

    The copy carries energy, forces, virial (periodic cells; PlusStress eV), ``magmoms`` = the
    moments actually reached, ``magnetic_gradient`` = +∂E/∂m (eV/μB) when the oracle provides
    it (else None), ``features['EFS_by']`` and ``features['oracle'] = self.name``. The target
    moments are ``cfg.magmoms``.
    """

    name: str = "oracle"

    def label(self, cfg: Configuration, workdir: Path | None = None) -> Configuration:
        raise NotImplementedError

    def free_species(self) -> list[str]:
        """Species whose moments the oracle does not hold at the targets (constrained DFT with
        those atoms unconstrained): their labels carry the oracle's own moments."""
        writer = getattr(self, "writer", None)
        return writer.free_species() if writer is not None else []

    def label_at(self, cfg: Configuration, workdir: Path | None, index: int) -> Configuration:
        """``label`` for the ``index``-th configuration of a batch (used by :func:`label_all`)."""
        return self.label(cfg, workdir)

    def _finish(self, out: Configuration, efs_by: str) -> Configuration:
        out.features = dict(out.features)
        out.features["EFS_by"] = efs_by
        out.features["oracle"] = self.name
        out.nbh_grades = None
        return out


class AnalyticOracle(Oracle):
    """The built-in analytic magnetic model: ``model.label(cfg, relax=relax)``."""

    def __init__(self, model: Any, relax: bool = False, name: str = "analytic"):
        self.model = model
        self.relax = bool(relax)
        self.name = name

    def label(self, cfg: Configuration, workdir: Path | None = None) -> Configuration:
        out = self.model.label(cfg, relax=self.relax)
        return self._finish(out, out.features.get("EFS_by", "mmtp_analytic"))


class ASEOracle(Oracle):
    """Any ASE calculator (see the module doc). ``species[t]`` is the symbol of type ``t``
    (default: the calculator's ``species`` attribute, as :class:`mmtp_hpc.ase.MMTPCalculator`
    has). With ``magnetic``, the targets are set as initial moments; ``workdir`` becomes the
    calculator's ``directory`` when it has one (file-based DFT calculators)."""

    def __init__(self, calculator: Any, magnetic: bool = True, species: Sequence[str] | None = None,
                 name: str = "ase"):
        if not (hasattr(calculator, "get_property") or hasattr(calculator, "get_potential_energy")):
            raise InputError(f"expected an ASE calculator, got {type(calculator).__name__}",
                             field="calculator")
        self.calculator = calculator
        self.magnetic = bool(magnetic)
        if species is None:
            species = getattr(calculator, "species", None)
        self.species = None if species is None else [str(s) for s in species]
        self.name = name

    def label(self, cfg: Configuration, workdir: Path | None = None) -> Configuration:
        from ase import Atoms
        from ase.calculators.calculator import PropertyNotImplementedError

        if self.species is None:
            raise InputError("the ASE oracle needs the chemical symbols of the types: pass species",
                             field="species")
        if len(cfg) and cfg.types.max() >= len(self.species):
            raise InputError(f"atom type {int(cfg.types.max())} has no symbol in species {self.species}",
                             field="species")
        atoms = Atoms(symbols=[self.species[t] for t in cfg.types.tolist()], positions=cfg.positions,
                      cell=cfg.cell, pbc=cfg.pbc)
        if self.magnetic and cfg.magmoms is not None:
            atoms.set_initial_magnetic_moments(cfg.magmoms)
        calc = self.calculator
        if workdir is not None and hasattr(calc, "directory"):
            calc.directory = str(workdir)
        atoms.calc = calc
        out = cfg.copy()
        out.clear_labels()
        out.energy = float(atoms.get_potential_energy())
        out.forces = np.array(atoms.get_forces(), dtype=float)
        if cfg.pbc.all():
            try:
                stress = np.array(atoms.get_stress(voigt=False), dtype=float)   # eV/Å³, ASE sign
            except (PropertyNotImplementedError, NotImplementedError):
                stress = None
            if stress is not None:
                out.virial = -stress * cfg.volume
        results = getattr(calc, "results", {}) or {}
        if "energies" in results:
            out.site_energies = np.array(results["energies"], dtype=float)
        if self.magnetic:
            try:
                m = np.array(atoms.get_magnetic_moments(), dtype=float)
            except (PropertyNotImplementedError, NotImplementedError, AttributeError):
                m = None
            if m is not None:
                if m.ndim != 1:
                    raise OracleError("the calculator returned non-collinear moments; a collinear "
                                      "(one value per atom) calculator is needed")
                out.magmoms = m
            grad = results.get("magnetic_gradient")
            out.magnetic_gradient = None if grad is None else np.array(grad, dtype=float)
        return self._finish(out, f"ase:{type(calc).__name__}")


# =====================================================================================
# command oracle
# =====================================================================================
def _with_overrides(settings: Any, overrides: Mapping[str, Any] | None) -> Any:
    """``settings`` (a writer's dataclass) with ``overrides`` applied: keys that are fields replace
    them, any other key goes to ``extra`` (written verbatim to the DFT input)."""
    if not overrides:
        return settings
    names = {f.name for f in dataclasses.fields(settings)}
    direct = {k: v for k, v in overrides.items() if k in names and k != "extra"}
    extra = dict(settings.extra)
    extra.update({k: v for k, v in overrides.items() if k not in names})
    return dataclasses.replace(settings, extra=extra, **direct)


class _Writer:
    """Inputs and outputs of one external program; see the module doc."""

    name = "cfg"
    uses_lambda = True
    default_lambdas: tuple[float, ...] | None = None
    missed_constraint = "keep"       # the label at the moments reached is consistent (penalty)

    def default_retry(self) -> list[dict]:
        """Settings of the reruns after an SCF that did not converge (none: the program's own)."""
        return []

    def constrained_mask(self, cfg: Configuration) -> np.ndarray:
        """Atoms whose moments the program holds at their targets (the others relax freely)."""
        return np.ones(len(cfg), dtype=bool)

    def free_species(self) -> list[str]:
        """Species whose moments the program leaves free (labels carry its own moments there)."""
        return []

    def write(self, cfg: Configuration, directory: Path, lambda_: float | None, comment: str,
              overrides: Mapping[str, Any] | None = None, constrained: bool = True) -> None:
        clean = cfg.copy()
        clean.clear_labels()
        clean.features = {k: v for k, v in clean.features.items() if k != "constraint_lambda"}
        if lambda_ is not None:
            clean.features["constraint_lambda"] = repr(float(lambda_))
        if not constrained:
            clean.features["constrained"] = "0"     # the moments are a starting guess
        for key, value in (overrides or {}).items():
            clean.features[f"retry_{key}"] = str(value)
        write_cfg(directory / CFG_INPUT, clean)

    def read(self, cfg: Configuration, directory: Path) -> Configuration:
        path = directory / CFG_OUTPUT
        if not path.is_file():
            raise OracleError(f"the command did not write {CFG_OUTPUT}")
        got = read_cfg(path)
        if len(got) != 1:
            raise InputError(f"expected one configuration, got {len(got)}", path=str(path))
        res = got[0]
        if len(res) != len(cfg) or not np.array_equal(res.types, cfg.types):
            raise InputError(f"the output has {len(res)} atoms of types {sorted(set(res.types.tolist()))}, "
                             f"the input {len(cfg)} of {sorted(set(cfg.types.tolist()))}", path=str(path))
        if np.max(np.abs(res.positions - cfg.positions), initial=0.0) > 1e-6:
            raise InputError("the output's positions differ from the input's (atoms reordered or "
                             "moved?)", path=str(path))
        if res.energy is None or res.forces is None:
            raise InputError("the output needs Energy and forces (fx fy fz)", path=str(path))
        out = cfg.copy()
        out.clear_labels()
        out.energy, out.forces = res.energy, res.forces
        out.site_energies = res.site_energies
        out.virial = res.virial if cfg.pbc.all() else None
        if res.magmoms is not None:
            out.magmoms = res.magmoms
        out.magnetic_gradient = res.magnetic_gradient
        out.features = dict(out.features)
        for key, value in res.features.items():
            if key not in ("constraint_lambda",):
                out.features[key] = value
        out.features.setdefault("EFS_by", "command")
        if str(out.features.get("scf_converged", "1")).strip() in ("0", "false", "False"):
            raise SCFNotConverged("the program reports an SCF that did not converge "
                                  "(Feature scf_converged 0)", path=str(path))
        return out


class _VaspWriter(_Writer):
    name = "vasp"
    uses_lambda = True
    default_lambdas = DEFAULT_VASP_LAMBDAS

    def __init__(self, settings: VaspSettings, species: Sequence[str]):
        self.settings = settings
        self.species = list(species)

    def default_retry(self) -> list[dict]:
        n = 2 * self.settings.nelm     # then VASP's recipe for magnetic systems that slosh
        return [{"nelm": n}, {"nelm": n, "AMIX": 0.1, "BMIX": 0.0001, "AMIX_MAG": 0.4,
                              "BMIX_MAG": 0.0001}]

    def write(self, cfg: Configuration, directory: Path, lambda_: float | None, comment: str,
              overrides: Mapping[str, Any] | None = None, constrained: bool = True) -> None:
        if cfg.magmoms is None:
            raise InputError("the configuration has no target moments (the VASP writer constrains "
                             "moments)", field="magmoms")
        if not constrained:
            raise InputError("the VASP writer has no unconstrained mode; give the ground-state moments "
                             "as targets", field="writer")
        write_vasp_inputs(cfg, directory, self.species, _with_overrides(self.settings, overrides),
                          float(lambda_), comment=comment)

    def read(self, cfg: Configuration, directory: Path) -> Configuration:
        return label_from_vasp(cfg, directory)


class _AbinitWriter(_Writer):
    name = "abinit"
    uses_lambda = False
    # an exact constraint that missed its target stopped before the Lagrange multipliers
    # converged: the printed dE/dm does not belong to the moments reached
    missed_constraint = "reject"

    def __init__(self, settings: AbinitSettings, species: Sequence[str]):
        self.settings = settings
        self.species = list(species)

    def constrained_mask(self, cfg: Configuration) -> np.ndarray:
        kinds = self.settings.constraint_kind
        if not isinstance(kinds, Mapping):
            return np.full(len(cfg), int(kinds) != 0)
        free = {t for t, sym in enumerate(self.species) if int(kinds.get(sym, 1)) == 0}
        return np.array([t not in free for t in cfg.types.tolist()], dtype=bool)

    def free_species(self) -> list[str]:
        kinds = self.settings.constraint_kind
        if not isinstance(kinds, Mapping):
            return [] if int(kinds) != 0 else list(self.species)
        return [sym for sym in self.species if int(kinds.get(sym, 1)) == 0]

    def default_retry(self) -> list[dict]:
        n = 2 * self.settings.nstep     # more steps; then gentler mixing of density and magnetisation
        return [{"nstep": n}, {"nstep": n, "diemix": 0.3, "diemixmag": 0.3}]

    def write(self, cfg: Configuration, directory: Path, lambda_: float | None, comment: str,
              overrides: Mapping[str, Any] | None = None, constrained: bool = True) -> None:
        if cfg.magmoms is None:
            raise InputError("the configuration has no target moments (the ABINIT writer "
                             "constrains moments)", field="magmoms")
        write_abinit_input(cfg, directory, self.species, _with_overrides(self.settings, overrides),
                           comment=comment, constrained=constrained)

    def read(self, cfg: Configuration, directory: Path) -> Configuration:
        path = directory / dft_abinit.OUTPUT_NAME
        # ABINIT's log: its stdout here, or what a batch job script wrote (abinit.log)
        log = next((directory / n for n in ("abinit.log", "stdout.txt") if (directory / n).is_file()), None)
        result = read_abinit_output(path, log=log)
        if dft_abinit.is_mirrored(directory / dft_abinit.INPUT_NAME):
            result = dft_abinit.unmirror(result)
        return label_from_abinit(cfg, result, source=str(path))


def _substitute(arg: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], arg)


def _tail(path: Path, n_chars: int = 1500) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    text = text.strip()
    return text if len(text) <= n_chars else "…" + text[-n_chars:]


def _output_tail(directory: Path) -> str:
    """The end of the command's stderr, or of its stdout when stderr is empty (ABINIT logs there)."""
    err = _tail(directory / "stderr.txt")
    if err:
        return f"stderr: {err}"
    out = _tail(directory / "stdout.txt")
    return f"stdout: {out}" if out else "no output on stdout or stderr"


def _as_settings(cls: type, value: Any, what: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return build_section(cls, what, dict(value), failer(None), Path("."))
    raise InputError(f"expected {cls.__name__} or a table, got {type(value).__name__}", field=what)


class CommandOracle(Oracle):
    """An external command per configuration (see the module doc).

    ``command`` argv list with placeholders; ``writer`` ``"cfg"`` | ``"vasp"`` | ``"abinit"``;
    ``template_dir`` files copied into every run directory; ``timeout`` seconds per run;
    ``lambdas`` the soft-constraint ladder (eV/μB²; default VASP (10, 20, 50, 100), none for
    ``cfg`` unless given, not allowed for ABINIT's exact constraint); ``moment_tolerance`` μB;
    ``species`` symbols of types 0, 1, … (needed by the DFT writers); ``vasp`` / ``abinit``
    writer settings (dataclass or table); ``env`` extra environment variables.

    Real DFT is messy:

    - ``retry``: settings of the reruns after an SCF that did not converge, one table per rerun,
      applied over the writer's settings (``[{nstep = 200}, {nstep = 200, diemix = 0.3}]``; keys
      that are not writer settings are written verbatim to the input). Default: the writer's
      (ABINIT: twice ``nstep``, then also ``diemix = diemixmag = 0.3``; VASP: twice ``NELM``,
      then ``AMIX 0.1, BMIX 1e-4, AMIX_MAG 0.4, BMIX_MAG 1e-4``). After the last one the
      configuration fails with kind ``"scf"``.
    - ``missed_constraint``: ``"reject"`` (fail with kind ``"constraint"``) or ``"keep"`` (label
      at the moments actually reached, with ``oracle_warning``) when max|m − m_target| exceeds
      ``moment_tolerance``. Default: ``"reject"`` for ABINIT (an exact constraint that missed
      stopped before its Lagrange multipliers converged, so its ∂E/∂m is not that of the moments
      reached), ``"keep"`` otherwise (a penalty's field is consistent with the moments reached).
    - ``workers``: configurations labelled at the same time by :func:`label_batch`; ``cores``:
      cores one run uses (default: the ``-np``/``-n`` of an ``mpirun``/``mpiexec``/``srun``
      command, else 1), for the core-hours in the logs.
    - ``constrained=False``: the target moments are only the starting guess (the unconstrained
      ground state; ABINIT only), to validate a potential's relaxed moments.
    """

    parallel_safe = True

    def __init__(self, command: Sequence[str], writer: str = "cfg", template_dir: Path | None = None,
                 timeout: float = 3600.0, lambdas: Sequence[float] | None = None,
                 moment_tolerance: float = 0.05, *, species: Sequence[str] | None = None,
                 vasp: VaspSettings | Mapping | None = None,
                 abinit: AbinitSettings | Mapping | None = None,
                 env: Mapping[str, str] | None = None, name: str | None = None,
                 retry: Sequence[Mapping[str, Any]] | None = None,
                 missed_constraint: str | None = None, workers: int = 1, cores: int | None = None,
                 constrained: bool = True):
        if isinstance(command, str) or not command or not all(isinstance(a, str) for a in command):
            raise InputError(f"expected a non-empty list of strings (argv), got {command!r}",
                             field="command")
        if writer not in WRITERS:
            raise InputError(f"expected one of {WRITERS}, got {writer!r}", field="writer")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InputError(f"expected a positive number of seconds, got {timeout!r}", field="timeout")
        if not (moment_tolerance > 0):
            raise InputError(f"expected a positive tolerance (μB), got {moment_tolerance!r}",
                             field="moment_tolerance")
        if missed_constraint not in (None, "keep", "reject"):
            raise InputError(f"expected \"keep\" or \"reject\", got {missed_constraint!r}",
                             field="missed_constraint")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"expected a positive integer, got {workers!r}", field="workers")
        if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int) or cores < 1):
            raise InputError(f"expected a positive integer, got {cores!r}", field="cores")
        self.command = list(command)
        self.template_dir = None if template_dir is None else Path(template_dir)
        if self.template_dir is not None and not self.template_dir.is_dir():
            raise InputError(f"template directory {self.template_dir} does not exist",
                             field="template_dir")
        self.timeout = float(timeout)
        self.moment_tolerance = float(moment_tolerance)
        self.species = None if species is None else [str(s) for s in species]
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        if writer == "cfg":
            self.writer: _Writer = _Writer()
        else:
            if self.species is None:
                raise InputError(f"the {writer} writer needs the chemical symbols of the types",
                                 field="species")
            if writer == "vasp":
                self.writer = _VaspWriter(_as_settings(VaspSettings, vasp, "vasp"), self.species)
            else:
                self.writer = _AbinitWriter(_as_settings(AbinitSettings, abinit, "abinit"), self.species)
        if lambdas is not None:
            lambdas = [float(x) for x in lambdas]
            if not self.writer.uses_lambda:
                raise InputError("ABINIT's constraint_kind constraint is exact (a Lagrange multiplier); "
                                 "it has no λ ladder: drop lambdas", field="lambdas")
            if not lambdas or any(not (x > 0 and math.isfinite(x)) for x in lambdas) or \
                    any(b <= a for a, b in zip(lambdas[:-1], lambdas[1:], strict=True)):
                raise InputError(f"expected increasing positive numbers, got {lambdas}", field="lambdas")
        elif self.writer.default_lambdas is not None:
            lambdas = list(self.writer.default_lambdas)
        self.lambdas = lambdas
        if retry is None:
            retry = self.writer.default_retry()
        if isinstance(retry, Mapping) or not all(isinstance(r, Mapping) for r in retry):
            raise InputError(f"expected a list of tables of settings, got {retry!r}", field="retry")
        self.retry = [dict(r) for r in retry]
        self.missed_constraint = missed_constraint or self.writer.missed_constraint
        self.workers = int(workers)
        self.cores = int(cores) if cores is not None else _command_cores(self.command)
        self.constrained = bool(constrained)
        if not self.constrained and writer == "vasp":
            raise InputError("the VASP writer has no unconstrained mode", field="writer")
        self.name = name or f"command:{writer}"

    def unconstrained(self) -> CommandOracle:
        """The same program and settings for the unconstrained ground state (moments free)."""
        twin = copy.copy(self)
        twin.constrained = False
        twin.lambdas = None
        twin.name = self.name + ":free"
        return twin

    # ------------------------------------------------------------------ labelling
    def label(self, cfg: Configuration, workdir: Path | None = None) -> Configuration:
        return self.label_at(cfg, workdir, 0)

    def label_at(self, cfg: Configuration, workdir: Path | None, index: int) -> Configuration:
        if workdir is None:
            with tempfile.TemporaryDirectory(prefix="mmtp_oracle_") as tmp:
                return self._label(cfg, Path(tmp), index)
        return self._label(cfg, Path(workdir), index)

    def _label(self, cfg: Configuration, workdir: Path, index: int) -> Configuration:
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        target = cfg.magmoms if self.constrained else None
        ladder: list[float | None] = list(self.lambdas) if (self.lambdas and target is not None) else [None]
        result = None
        deviation = 0.0
        t0 = time.perf_counter()
        for step, lam in enumerate(ladder):
            result = self._step(cfg, workdir, index, step, lam)
            deviation = 0.0
            if target is not None and result.magmoms is not None:
                held = self.writer.constrained_mask(cfg)     # free atoms reach their own moments
                deviation = float(np.max(np.abs(result.magmoms - target)[held], initial=0.0))
            if deviation <= self.moment_tolerance:
                break
        assert result is not None
        out = result
        out.features = dict(out.features)
        if not self.constrained:
            out.features["constrained"] = "0"
            if out.magnetic_gradient is not None:      # the free ground state: dE/dm = 0
                out.magnetic_gradient = np.zeros(len(out))
        if target is not None:
            out.features["moment_deviation"] = f"{deviation:.6g}"
            if deviation > self.moment_tolerance:
                rungs = [x for x in ladder if x is not None]
                what = (f"moments missed the target: max|m - m_target| = {deviation:.4g} muB > "
                        f"tolerance {self.moment_tolerance:g} muB"
                        + (f" after the lambda ladder {rungs} eV/muB^2" if rungs else ""))
                if self.missed_constraint == "reject":
                    raise OracleError(what + "; rejected (missed_constraint = \"reject\": the "
                                      "constraint did not converge, so dE/dm does not belong to the "
                                      "moments reached)", index, workdir, kind="constraint")
                out.features["oracle_warning"] = what + "; kept at the moments reached"
        # wall time of the runs behind this label (the sum over rungs and retries, as recorded)
        out.features["oracle_wall_s"] = f"{_recorded_wall(workdir, time.perf_counter() - t0):.1f}"
        out.features["oracle_cores"] = str(self.cores)
        return self._finish(out, out.features.get("EFS_by", self.writer.name))

    def _step(self, cfg: Configuration, workdir: Path, index: int, step: int,
              lam: float | None) -> Configuration:
        """One λ rung: the run, then its reruns with ``retry`` settings while the SCF fails."""
        attempts: list[dict | None] = [None, *self.retry]
        reasons = []
        for attempt, overrides in enumerate(attempts):
            sd = workdir / (f"step_{step:02d}" if attempt == 0 else f"step_{step:02d}_retry{attempt}")
            done = sd / STEP_RESULT_NAME
            if done.is_file():
                got = read_cfg(done)
                if len(got) == 1 and len(got[0]) == len(cfg):
                    return got[0]
            marker = sd / SCF_FAILED_NAME
            if marker.is_file():        # resumed: this attempt ran and did not converge
                reasons.append(marker.read_text(encoding="utf-8").strip())
                continue
            try:
                return self._attempt(cfg, sd, index, step, lam, overrides)
            except SCFNotConverged as exc:
                reason = f"attempt {attempt + 1}" + (f" {overrides}" if overrides else "") + \
                    f": {exc.reason}"
                _atomic_text(marker, reason + "\n")
                reasons.append(reason)
        raise OracleError(f"the SCF did not converge in {len(attempts)} attempt(s): "
                          + "; ".join(reasons), index, workdir, kind="scf")

    def _attempt(self, cfg: Configuration, sd: Path, index: int, step: int, lam: float | None,
                 overrides: dict | None) -> Configuration:
        done = sd / STEP_RESULT_NAME
        if sd.exists():      # an unfinished earlier attempt: stop what may still run, start afresh
            _kill_recorded(sd)
            shutil.rmtree(sd)
        sd.mkdir(parents=True)
        values = {"workdir": str(sd), "cfgdir": str(sd.parent), "index": str(index), "step": str(step),
                  "lambda": "" if lam is None else f"{lam:.10g}"}
        try:
            if self.template_dir is not None:
                shutil.copytree(self.template_dir, sd, dirs_exist_ok=True)
            comment = f"mmtp_hpc oracle: configuration {index}, step {step}" + (
                f", lambda {lam:g}" if lam is not None else "") + (
                f", retry with {overrides}" if overrides else "")
            self.writer.write(cfg, sd, lam, comment, overrides=overrides, constrained=self.constrained)
        except InputError as exc:
            raise OracleError(f"writing the inputs failed: {exc}", index, sd) from exc
        argv = [_substitute(a, values) for a in self.command]
        env = dict(os.environ)
        env.update({"MMTP_WORKDIR": values["workdir"], "MMTP_CFGDIR": values["cfgdir"],
                    "MMTP_INDEX": values["index"], "MMTP_STEP": values["step"],
                    "MMTP_LAMBDA": values["lambda"]})
        env.update(self.env)
        wall = self._run(argv, sd, env, index)
        try:
            res = self.writer.read(cfg, sd)
        except SCFNotConverged:
            raise
        except DFTCodeError as exc:
            raise OracleError(f"{exc}", index, sd, kind="code") from exc
        except OracleError as exc:
            raise OracleError(f"{exc.reason}; {_output_tail(sd)}", index, sd, kind="command") from exc
        except InputError as exc:
            raise OracleError(f"reading the outputs failed: {exc}", index, sd, kind="command") from exc
        res.features = dict(res.features)
        if lam is not None:
            res.features["constraint_lambda"] = f"{lam:.10g}"
        res.features["run_wall_s"] = f"{wall:.2f}"
        write_cfg(done, res)        # atomic: the rung counts as done only once this exists
        return read_cfg(done)[0]    # what a resumed run would read: identical either way

    def _run(self, argv: list[str], cwd: Path, env: dict, index: int) -> float:
        stdout, stderr = cwd / "stdout.txt", cwd / "stderr.txt"
        t0 = time.perf_counter()
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                raise OracleError(f"cannot start {argv[0]!r}: {exc.strerror or exc}", index, cwd,
                                  kind="command") from None
            _atomic_text(cwd / PID_NAME, f"{proc.pid}\n")
            try:
                rc = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)     # the whole group: mpirun's children too
                proc.wait()
                raise OracleError(f"command {argv!r} exceeded the timeout of {self.timeout:g} s",
                                  index, cwd, kind="timeout") from None
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            finally:
                (cwd / PID_NAME).unlink(missing_ok=True)
        wall = time.perf_counter() - t0
        if rc != 0:
            errors = []
            if self.writer.name == "abinit":    # name ABINIT's own error, not only the exit status
                for f in (stdout, cwd / dft_abinit.OUTPUT_NAME):
                    with contextlib.suppress(OSError):
                        errors += [e for e in dft_abinit.abinit_errors(
                            f.read_text(encoding="utf-8", errors="replace")) if e not in errors]
            if errors:
                raise OracleError(f"ABINIT stopped with {'; '.join(errors)} (exit status {rc} after "
                                  f"{wall:.1f} s)", index, cwd, kind="code")
            raise OracleError(f"command {argv!r} exited with status {rc} after "
                              f"{wall:.1f} s; {_output_tail(cwd)}", index, cwd, kind="command")
        return wall


SCF_FAILED_NAME = "scf_not_converged.txt"
PID_NAME = "running.pid"
FAILED_NAME = "failed.json"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _command_cores(command: Sequence[str]) -> int:
    """Processes one run of ``command`` uses: the ``-np``/``-n`` of a leading MPI launcher."""
    if not command or Path(command[0]).name not in ("mpirun", "mpiexec", "srun", "mpiexec.hydra"):
        return 1
    for flag, value in zip(command[:-1], command[1:], strict=True):
        if flag in ("-np", "-n", "--np", "--ntasks") and value.isdigit():
            return max(1, int(value))
        if flag.startswith("--ntasks=") and flag.split("=", 1)[1].isdigit():
            return max(1, int(flag.split("=", 1)[1]))
    return 1


def _recorded_wall(workdir: Path, fallback: float) -> float:
    """The sum of ``run_wall_s`` of the rungs and retries in ``workdir`` (their own timings, so a
    resumed label still reports the DFT time it cost); ``fallback`` when none is recorded."""
    total, found = 0.0, False
    for f in sorted(workdir.glob(f"step_*/{STEP_RESULT_NAME}")):
        with contextlib.suppress(InputError, OSError, ValueError, IndexError):
            total += float(read_cfg(f)[0].features.get("run_wall_s", "nan"))
            found = True
    return total if found and math.isfinite(total) else fallback


def _kill_recorded(directory: Path) -> None:
    """Kill the process group recorded in ``directory`` when a killed batch left it running (its
    process still works in that directory), so a rerun never has two programs in one folder."""
    pidfile = directory / PID_NAME
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return
    if Path(cwd).resolve() == directory.resolve():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# =====================================================================================
# batches
# =====================================================================================
@dataclasses.dataclass
class BatchResult:
    """What :func:`label_batch` did: ``labelled[k]`` (None where configuration k failed),
    ``failures[k]`` (None where it did not), ``read_back`` (indices read from an earlier run),
    ``wall_s`` of this call and ``dft_wall_s`` / ``core_s``: the program's own time summed over
    every label in the batch (earlier runs' included, as recorded beside their results)."""

    labelled: list[Configuration | None]
    failures: list[OracleError | None]
    read_back: list[int]
    wall_s: float
    dft_wall_s: float
    core_s: float

    @property
    def n_failed(self) -> int:
        return sum(1 for f in self.failures if f is not None)

    def failure_table(self) -> list[dict]:
        return [{"index": k, "kind": f.kind, "reason": f.reason,
                 "workdir": None if f.workdir is None else str(f.workdir)}
                for k, f in enumerate(self.failures) if f is not None]


def _read_labelled(result: Path, cfg: Configuration, k: int, d: Path) -> Configuration:
    try:
        got = read_cfg(result)
    except InputError as exc:
        raise OracleError(f"cannot read the earlier result: {exc}", k, d) from exc
    same = (len(got) == 1 and len(got[0]) == len(cfg) and np.array_equal(got[0].types, cfg.types)
            and np.allclose(got[0].cell, cfg.cell, rtol=0.0, atol=1e-6)
            and np.allclose(got[0].positions, cfg.positions, rtol=0.0, atol=1e-6))
    if not same:
        raise OracleError(f"{result} does not hold this configuration (other atoms, cell or "
                          "positions: a different batch in the same directory?)", k, d)
    return got[0]


def _label_one(oracle: Oracle, cfg: Configuration, d: Path, k: int) -> Configuration:
    d.mkdir(parents=True, exist_ok=True)
    try:
        label_at = getattr(oracle, "label_at", None)    # duck-typed oracles may only have label
        labelled = label_at(cfg, d, k) if label_at is not None else oracle.label(cfg, d)
    except OracleError as exc:
        if exc.index is not None:
            raise
        raise OracleError(exc.reason, k, exc.workdir or d, kind=exc.kind) from exc
    except (MMTPError, ValueError, OSError, RuntimeError) as exc:
        raise OracleError(f"{type(exc).__name__}: {exc}", k, d) from exc
    write_cfg(d / LABELLED_NAME, labelled)
    return read_cfg(d / LABELLED_NAME)[0]


def label_batch(oracle: Oracle, configs: Sequence[Configuration], workdir: Path,
                log: Callable[[str], None] | None = None, workers: int | None = None,
                skip_failures: bool = False, keep_going: bool = True) -> BatchResult:
    """Label ``configs`` resumably, ``workers`` at a time; failures recorded, never lost.

    Configuration k runs in ``workdir/cfg_{k:05d}/``; its result goes atomically to
    ``labelled.cfg`` there and is read back, not recomputed, on a rerun. ``workers`` (default
    the oracle's ``workers``, else 1; only oracles marked ``parallel_safe`` run concurrently)
    configurations are labelled at the same time, each in its own folder.

    With ``skip_failures``, a configuration whose failure belongs to it (kind ``scf``,
    ``constraint``, ``code`` or ``timeout``: the SCF did not converge after the retries, the
    moments missed their targets, the DFT code stopped with an error, the run took too long)
    is recorded in ``cfg_k/failed.json`` with its reason and skipped, now and on every rerun
    (delete the file to try again). Any other failure (the program cannot start, writes no
    output, ...) would fail every configuration alike: the batch finishes what is running and
    raises. Without ``skip_failures`` every failure raises: after the others finished with
    ``keep_going``, else no configuration is started after the first failure.
    """
    import json
    import threading
    from concurrent.futures import ThreadPoolExecutor

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say_raw = log or (lambda _msg: None)
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            say_raw(msg)

    name = getattr(oracle, "name", type(oracle).__name__)
    if workers is None:
        workers = int(getattr(oracle, "workers", 1) or 1)
    if not getattr(oracle, "parallel_safe", False):
        workers = 1
    cores = int(getattr(oracle, "cores", 1) or 1)
    n = len(configs)
    out: list[Configuration | None] = [None] * n
    failures: list[OracleError | None] = [None] * n
    read_back: list[int] = []
    todo = []
    t_start = time.perf_counter()
    for k, cfg in enumerate(configs):
        d = workdir / f"cfg_{k:05d}"
        if (d / LABELLED_NAME).is_file():
            out[k] = _read_labelled(d / LABELLED_NAME, cfg, k, d)
            read_back.append(k)
            say(f"oracle {name}: {k + 1}/{n} cfg_{k:05d} already labelled, read back")
        elif skip_failures and (d / FAILED_NAME).is_file():
            try:
                rec = json.loads((d / FAILED_NAME).read_text(encoding="utf-8"))
                failures[k] = OracleError(str(rec["reason"]), k, d, kind=str(rec["kind"]))
            except (OSError, ValueError, KeyError, TypeError):
                todo.append(k)          # unreadable record: label it again
                continue
            say(f"oracle {name}: {k + 1}/{n} cfg_{k:05d} failed before ({failures[k].kind}), skipped: "
                f"{failures[k].reason}")
        else:
            todo.append(k)
    if todo:
        say(f"oracle {name}: {len(todo)} to label, {min(workers, len(todo))} at a time"
            + (f", {cores} core(s) each" if cores > 1 else ""))

    stop = threading.Event()

    def run(k: int) -> None:
        if stop.is_set():
            return
        d = workdir / f"cfg_{k:05d}"
        t0 = time.perf_counter()
        try:
            labelled = _label_one(oracle, configs[k], d, k)
        except OracleError as err:
            failures[k] = err
            if skip_failures and err.kind in SKIPPABLE:
                _atomic_text(d / FAILED_NAME, json.dumps(
                    {"kind": err.kind, "reason": err.reason, "wall_s": time.perf_counter() - t0}) + "\n")
                say(f"oracle {name}: {k + 1}/{n} cfg_{k:05d} FAILED ({err.kind}), recorded and "
                    f"skipped: {err.reason}")
            else:
                say(f"oracle {name}: {k + 1}/{n} cfg_{k:05d} FAILED ({err.kind}): {err}")
                if not keep_going:
                    stop.set()
            return
        out[k] = labelled
        extra = ""
        if "oracle_warning" in labelled.features:
            extra = f"; warning: {labelled.features['oracle_warning']}"
        energy = "" if labelled.energy is None else f" (E = {labelled.energy:.6f} eV)"
        dev = labelled.features.get("moment_deviation")
        say(f"oracle {name}: {k + 1}/{n} cfg_{k:05d} labelled in {time.perf_counter() - t0:.2f} s"
            f"{energy}" + (f", max|m - m_target| {float(dev):.3g} muB" if dev is not None else "")
            + extra)

    if workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, todo))
    else:
        for k in todo:
            run(k)
    dft = sum(_wall_of(c) for c in out if c is not None)
    dft += sum(_failed_wall(workdir / f"cfg_{k:05d}") for k in range(n) if failures[k] is not None)
    result = BatchResult(labelled=out, failures=failures, read_back=read_back,
                         wall_s=time.perf_counter() - t_start, dft_wall_s=dft, core_s=dft * cores)
    fatal = [f for f in failures if f is not None and not (skip_failures and f.kind in SKIPPABLE)]
    if fatal:
        if len(fatal) == 1 and not keep_going:
            raise fatal[0]
        listing = "; ".join(str(f) for f in fatal)
        raise OracleError(f"{len(fatal)} of {n} configurations failed: {listing}",
                          fatal[0].index, fatal[0].workdir, kind=fatal[0].kind)
    if n:
        say(f"oracle {name}: {n - result.n_failed} of {n} labelled ({len(read_back)} read back"
            + (f", {result.n_failed} failed and skipped" if result.n_failed else "")
            + f"); program time {dft:.0f} s = {dft * cores / 3600:.3g} core-h; this call "
            f"{result.wall_s:.0f} s")
    return result


def _wall_of(cfg: Configuration) -> float:
    try:
        return float(cfg.features.get("oracle_wall_s", 0.0))
    except (TypeError, ValueError):
        return 0.0


def _failed_wall(d: Path) -> float:
    import json

    try:
        return float(json.loads((d / FAILED_NAME).read_text(encoding="utf-8")).get("wall_s", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def label_all(oracle: Oracle, configs: Sequence[Configuration], workdir: Path,
              log: Callable[[str], None] | None = None, keep_going: bool = False,
              workers: int | None = None) -> list[Configuration]:
    """Label ``configs`` resumably (see :func:`label_batch`); return the labelled configurations.

    A failure raises :class:`OracleError` (index and directory named) after the finished results
    are on disk: without ``keep_going`` no configuration is started after the first failure;
    with it the remaining ones are labelled first and the error names all failures.
    """
    res = label_batch(oracle, configs, workdir, log=log, workers=workers, keep_going=keep_going)
    return [c for c in res.labelled if c is not None]


# =====================================================================================
# settings
# =====================================================================================
_COMMON = {"kind", "name"}
_ALLOWED = {
    "analytic": _COMMON | {"model", "relax"},
    "ase": _COMMON | {"calculator", "parameters", "path_parameters", "magnetic"},
    "command": _COMMON | {"command", "writer", "template_dir", "timeout", "lambdas", "moment_tolerance",
                          "env", "vasp", "abinit", "retry", "missed_constraint", "workers", "cores"},
}


def oracle_from_settings(table: dict, base_dir: Path, species: list[str], source: str = "",
                         text: str | None = None) -> Oracle:
    """The oracle described by a TOML ``[oracle]`` table (see the module doc).

    Relative paths are relative to ``base_dir`` (the TOML file's directory); ``species`` are the
    symbols of types 0, 1, …. Unknown keys and wrong types raise :class:`InputError` naming
    ``source`` (and the line, when ``text``, the input file's text, is given), the key, what was
    expected and what was found. Checked with :mod:`mmtp_hpc.settings`, as ``mmtp md`` and
    ``mmtp learn`` inputs are.
    """
    base_dir = Path(base_dir)
    path = source or None
    located = failer(path, text)

    def fail(message: str, key: str | None = None) -> InputError:
        return located(message, "oracle", key)

    def get(key: str, check: Callable[[Any], Any], default: Any = None, resolve: bool = False) -> Any:
        if key not in table:
            return default
        try:
            value = check(table[key])
        except Bad as exc:
            raise fail(str(exc), key) from None
        return str(resolve_path(base_dir, value)) if resolve and value is not None else value

    if not isinstance(table, dict):
        raise fail(f"expected a table, got {type_name(table)}")
    kind = table.get("kind")
    if kind not in KINDS:
        raise fail(f"expected kind = one of {', '.join(repr(k) for k in KINDS)}, got "
                   + ("nothing" if kind is None else f"{type_name(kind)} {kind!r}"), "kind")
    allowed = _ALLOWED[kind]
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            raise fail(f"unknown key {key!r} for kind = {kind!r}; allowed: {', '.join(sorted(allowed))}"
                       + (f" (did you mean {hint[0]!r}?)" if hint else ""), key)
    name = get("name", _text())
    species = [str(s) for s in species]

    if kind == "analytic":
        from mmtp_hpc.potentials.analytic import AnalyticMagneticModel

        model = table.get("model", "default")
        if not isinstance(model, str):
            raise fail(f"expected \"default\" or a JSON file path, got {type_name(model)} {model!r}",
                       "model")
        spec = model if model.lower() in ("default", "builtin") else str(base_dir / Path(model).expanduser())
        try:
            m = AnalyticMagneticModel.load(spec, species=species or None)
        except FileNotFoundError as exc:
            raise fail(str(exc), "model") from None
        return AnalyticOracle(m, relax=get("relax", boolean(), False), name=name or "analytic")

    if kind == "ase":
        target = table.get("calculator")
        if not isinstance(target, str) or not re.fullmatch(r"[\w.]+:[\w.]+", target):
            raise fail("expected \"package.module:ClassOrFactory\", got "
                       + ("nothing" if target is None else f"{type_name(target)} {target!r}"),
                       "calculator")
        module_name, attr = target.split(":", 1)
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise fail(f"cannot import {module_name!r}: {exc}", "calculator") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise fail(f"{module_name!r} has no attribute {attr!r}", "calculator")
            obj = getattr(obj, part)
        if not callable(obj):
            raise fail(f"{target!r} is not a class or factory", "calculator")
        params = get("parameters", table_, {})
        path_params = table.get("path_parameters", [])
        if not isinstance(path_params, list) or not all(isinstance(p, str) for p in path_params):
            raise fail(f"expected a list of parameter names, got {type_name(path_params)} "
                       f"{path_params!r}", "path_parameters")
        for p in path_params:
            if p not in params:
                raise fail(f"{p!r} is not in parameters", "path_parameters")
            if not isinstance(params[p], str):
                raise fail(f"parameters.{p} must be a path string to be resolved, got "
                           f"{type_name(params[p])}", "path_parameters")
            params[p] = str(base_dir / Path(params[p]).expanduser())
        try:
            calc = obj(**params)
        except (TypeError, ValueError, MMTPError, OSError) as exc:
            raise fail(f"{target}(**parameters) failed: {exc}", "parameters") from None
        return ASEOracle(calc, magnetic=get("magnetic", boolean(), True), species=species or None,
                         name=name or "ase")

    # command
    command = table.get("command")
    writer = table.get("writer", "cfg")
    if writer not in WRITERS:
        raise fail(f"expected one of {', '.join(repr(w) for w in WRITERS)}, got {type_name(writer)} "
                   f"{writer!r}", "writer")
    if command is None and writer == "abinit":
        command = ["abinit", dft_abinit.INPUT_NAME]
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise fail("expected a non-empty list of strings (argv, no shell), got "
                   + ("nothing" if command is None else f"{type_name(command)} {command!r}"), "command")
    command = list(command)
    first = Path(command[0])
    if not first.is_absolute() and len(first.parts) > 1 and (base_dir / first).exists():
        command[0] = str(base_dir / first)    # a script beside the TOML file
    template_dir = get("template_dir", path_with(optional=False), resolve=True)
    if template_dir is not None and not Path(template_dir).is_dir():
        raise fail(f"no such directory: {template_dir}", "template_dir")
    timeout = get("timeout", positive, 3600.0)
    tol = get("moment_tolerance", positive, 0.05)
    lambdas = table.get("lambdas")
    if lambdas is not None:
        if not isinstance(lambdas, list) or not lambdas:
            raise fail(f"expected a non-empty list of increasing positive numbers, got "
                       f"{type_name(lambdas)} {lambdas!r}", "lambdas")
        try:
            lambdas = [positive(x) for x in lambdas]
        except Bad as exc:
            raise fail(str(exc), "lambdas") from None
        if any(b <= a for a, b in zip(lambdas[:-1], lambdas[1:], strict=True)):
            raise fail(f"expected increasing values, got {lambdas}", "lambdas")
    env = get("env", table_, {})
    for k, v in env.items():
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise fail(f"expected string values, got {type_name(v)} {v!r} for {k!r}", "env")
    vasp = abinit = None
    for sub, cls in (("vasp", VaspSettings), ("abinit", AbinitSettings)):
        if sub in table:
            if writer != sub:
                raise fail(f"[oracle.{sub}] is only used with writer = {sub!r} (writer is {writer!r})", sub)
            settings = build_section(cls, f"oracle.{sub}", table[sub], located, base_dir)
            if sub == "vasp":
                vasp = settings
            else:
                abinit = settings
                if abinit.pp_dirpath is None:     # datasets beside the TOML file, else in the run dir
                    abinit.pseudos = {s: (str(base_dir / p) if not Path(p).is_absolute()
                                          and (base_dir / p).is_file() else p)
                                      for s, p in abinit.pseudos.items()}
    retry = table.get("retry")
    if retry is not None:
        if not isinstance(retry, list) or not all(isinstance(r, dict) for r in retry):
            raise fail("expected a list of tables of writer settings, e.g. [{nstep = 200}, "
                       f"{{nstep = 200, diemix = 0.3}}], got {type_name(retry)} {retry!r}", "retry")
        fields = ({f.name: f for f in dataclasses.fields(AbinitSettings if writer == "abinit" else VaspSettings)}
                  if writer in ("abinit", "vasp") else {})
        checked = []

        def fail_row(message: str, *_: Any) -> InputError:
            return InputError(message)
        for r in retry:
            row = {}
            for key, value in r.items():
                if key in fields and key not in ("extra", "pseudos", "potcars"):
                    try:
                        row[key] = check_value(fields[key], value, "oracle.retry", fail_row, base_dir)
                    except InputError as exc:
                        raise fail(f"{key}: {exc.reason}", "retry") from None
                elif isinstance(value, (str, int, float, bool, list)):
                    row[key] = value
                else:
                    raise fail(f"{key}: expected a number, string or list, got {type_name(value)}",
                               "retry")
            checked.append(row)
        retry = checked
    missed = table.get("missed_constraint")
    if missed is not None and missed not in ("keep", "reject"):
        raise fail(f"expected \"keep\" or \"reject\", got {type_name(missed)} {missed!r}",
                   "missed_constraint")
    workers = get("workers", integer(1), 1)
    cores = get("cores", integer(1), None)
    try:
        return CommandOracle(command, writer=writer, template_dir=template_dir, timeout=timeout,
                             lambdas=lambdas, moment_tolerance=tol, species=species or None,
                             vasp=vasp, abinit=abinit, env={k: str(v) for k, v in env.items()},
                             name=name, retry=retry, missed_constraint=missed, workers=workers,
                             cores=cores)
    except InputError as exc:
        raise InputError(exc.reason, path=path,
                         field=f"oracle.{exc.field}" if exc.field else "oracle") from None


# keys of the [oracle] table: (kind(s), key, default, description) for ``mmtp learn --help-input``
ORACLE_KEYS: tuple[tuple[str, str, str, str], ...] = (
    ("all", "kind", '"analytic"', "analytic | ase | command"),
    ("all", "name", "(kind)", "name recorded in every label's features (oracle = …)"),
    ("analytic", "model", '"default"', "the built-in analytic Fe–Al model, or a model JSON file"),
    ("analytic", "relax", "false", "relax the moments (true) or hold them at the targets"),
    ("ase", "calculator", "(none)", '"package.module:ClassOrFactory" of an ASE calculator'),
    ("ase", "parameters", "{}", "keyword arguments of the calculator"),
    ("ase", "path_parameters", "[]", "parameters that are paths, resolved relative to the input file"),
    ("ase", "magnetic", "true", "set the targets as initial moments, read moments and dE/dm back"),
    ("command", "command", "(abinit: [\"abinit\", \"run.abi\"])",
     "argv of the program, no shell; placeholders {workdir} {cfgdir} {index} {step} {lambda}"),
    ("command", "writer", '"cfg"', "cfg | vasp | abinit: how inputs are written and outputs read"),
    ("command", "template_dir", "(none)", "files copied into every run directory (job script, POTCAR, …)"),
    ("command", "timeout", "3600", "seconds per run; a run past it fails with kind timeout"),
    ("command", "lambdas", "(vasp: [10, 20, 50, 100])", "soft-constraint ladder (eV/μB²); not for ABINIT"),
    ("command", "moment_tolerance", "0.05", "μB: largest accepted max|m − m_target|"),
    ("command", "missed_constraint", "(abinit: reject, else keep)",
     "beyond the tolerance: reject the label, or keep it at the moments reached"),
    ("command", "retry", "(writer's)", "reruns after an SCF that did not converge: a list of tables "
     "of writer settings, e.g. [{nstep = 300}, {nstep = 300, diemix = 0.3}]"),
    ("command", "workers", "1", "configurations labelled at the same time (local jobs)"),
    ("command", "cores", "(mpirun -np)", "cores of one run, for the core-hours in the logs"),
    ("command", "env", "{}", "extra environment variables of the program (strings)"),
    ("command", "abinit", "", "[oracle.abinit] table: ABINIT writer settings (below)"),
    ("command", "vasp", "", "[oracle.vasp] table: VASP writer settings (below)"),
)


def describe_oracle() -> list[str]:
    """Every key of ``[oracle]``, ``[oracle.abinit]`` and ``[oracle.vasp]`` with default and meaning."""
    lines = ["[oracle]                              # who labels: kind = analytic | ase | command"]
    for kind, key, default, doc in ORACLE_KEYS:
        lines.append(f"  {key:<20} = {default:<14} # {'' if kind == 'all' else kind + ': '}{doc}")
    for table, cls in (("oracle.abinit", AbinitSettings), ("oracle.vasp", VaspSettings)):
        lines += ["", *describe_section(table, cls)]
    return lines
