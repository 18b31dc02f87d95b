"""ASE calculator for magnetic MTPs: :class:`MMTPCalculator`.

Implements ASE's calculator contract so that ASE optimisers (with a filter such as
``ase.filters.FrechetCellFilter`` for cell relaxation), ASE molecular dynamics and
phonopy through ASE use an mMTP::

    from ase.build import bulk
    from ase.optimize import BFGS
    from mmtp_hpc.ase import MMTPCalculator

    atoms = bulk("Fe", "bcc", a=2.86, cubic=True) * (2, 2, 2)
    atoms.calc = MMTPCalculator("inputs/potentials/fe_bcc_analytic_l16.almtp", magmoms="relax")
    BFGS(atoms).run(fmax=1e-3)
    atoms.get_magnetic_moments(), atoms.calc.get_property("magnetic_gradient")

Results (ASE units and signs):

=====================  ==========  ========================================================
``energy``             eV          total energy (``free_energy`` is the same number)
``energies``           eV          per-atom (site) energies E_i
``forces``             eV/Å        −∂E/∂r
``stress``             eV/Å³       ASE sign (negative under compression), Voigt order
                                   xx yy zz yz xz xy: ``−virial / V``; periodic cells only
``magmoms``            μB          the moments the energy belongs to (input or relaxed)
``magmom``             μB          Σ m_i
``magnetic_gradient``  eV/μB       +∂E/∂m_i (MLIP-3's ``en_der`` sign; ≈ 0 when relaxed)
=====================  ==========  ========================================================

``magmoms="input"`` evaluates at the atoms' initial magnetic moments (an error for a
magnetic potential when none are set). ``magmoms="relax"`` minimises E over the moments at
fixed positions (:func:`mmtp_hpc.potentials.moment_relax.relax_moments`: L-BFGS-B within the
potential's magnetic interval, warm-started from the previous relaxed moments, converged on
the projected max|∂E/∂m| ≤ ``relax_tol``); by the envelope theorem the forces and stress are
then derivatives of the relaxed energy. The first relaxation starts from the initial moments
when set (again whenever they change), else from a ferromagnetic guess (0.6 × the top of the
interval).

``potential`` is a file path (``.mtp``, ``.almtp``, ``.h5``), a loaded
:class:`~mmtp_hpc.potentials.mtp.parameters.MTPPotential`, or any model with
``evaluate(cfg, magmoms)`` returning the same keys (e.g. the analytic oracle
:class:`~mmtp_hpc.potentials.analytic.AnalyticMagneticModel`). ``species`` maps the
potential's types 0, 1, … to chemical symbols (default: the symbols the file records).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.moment_relax import default_start, model_bounds, relax_moments
from mmtp_hpc.system.configuration import Configuration

_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
MAGMOM_MODES = ("input", "relax")


class MomentRelaxationWarning(UserWarning):
    """The moment relaxation stopped before max|∂E/∂m| reached the tolerance."""


class MMTPCalculator(Calculator):
    """ASE calculator for an mMTP (or any model with the same ``evaluate``); see the module doc.

    Parameters: ``potential`` (path or loaded potential/model); ``species`` (symbols of types
    0, 1, …); ``magmoms`` ``"input"`` | ``"relax"``; ``symmetrize`` (None: the potential's
    flag; True: ½[E(M) + E(−M)]); ``relax_tol`` (eV/μB), ``relax_max_iter``; ``bounds``
    ((lo, hi) μB for every atom, or None: the potential's per-species interval);
    ``num_threads`` (OpenMP threads of the MTP kernels).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress",
                              "magmoms", "magmom", "magnetic_gradient"]
    default_parameters: dict[str, Any] = {}
    nolabel = True

    def __init__(self, potential: Any, species: Sequence[str] | None = None,
                 magmoms: str = "input", symmetrize: bool | None = None,
                 relax_tol: float = 1e-4, relax_max_iter: int = 500,
                 bounds: tuple[float, float] | None = None, num_threads: int | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if magmoms not in MAGMOM_MODES:
            raise InputError(f"must be one of {MAGMOM_MODES}, got {magmoms!r}", field="magmoms")
        self.model, self.potential_path = _load_model(potential, num_threads)
        pot = getattr(self.model, "pot", None)
        self.magnetic = bool(pot.magnetic) if pot is not None else True
        recorded = (pot.species_names if pot is not None
                    else getattr(self.model, "species", None))
        if species is None:
            species = recorded
        if species is None:
            raise InputError("the potential records no chemical symbols; pass species=[...] "
                             "(symbol of type 0 first)", field="species")
        self.species = [str(s) for s in species]
        if len(set(self.species)) != len(self.species):
            raise InputError(f"species has repeated symbols: {self.species}", field="species")
        n_types = pot.species_count if pot is not None else len(self.species)
        if len(self.species) != n_types:
            raise InputError(f"the potential has {n_types} species but species lists "
                             f"{len(self.species)}: {self.species}", field="species")
        self.magmom_mode = magmoms
        self.symmetrize = symmetrize
        self.relax_tol = float(relax_tol)
        self.relax_max_iter = int(relax_max_iter)
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self._type_of = {s: t for t, s in enumerate(self.species)}
        self._warm: tuple[np.ndarray, np.ndarray] | None = None   # (types, relaxed moments)
        self.relax_evaluations = 0       # model evaluations spent relaxing, in total

    # ------------------------------------------------------------------ helpers
    def configuration(self, atoms: Any) -> Configuration:
        """The :class:`Configuration` (types from ``species``, no moments) of ``atoms``."""
        symbols = atoms.get_chemical_symbols()
        missing = sorted(set(symbols) - set(self._type_of))
        if missing:
            raise InputError(f"atoms hold symbols {missing} that are not in the calculator's "
                             f"species {self.species}", field="species")
        types = np.fromiter((self._type_of[s] for s in symbols), dtype=np.int64, count=len(symbols))
        return Configuration(cell=np.array(atoms.cell.array, dtype=np.float64),
                             positions=np.array(atoms.positions, dtype=np.float64), types=types,
                             pbc=np.array(atoms.pbc, dtype=bool))

    def _evaluate(self, cfg: Configuration, magmoms: np.ndarray | None) -> dict:
        if getattr(self.model, "pot", None) is not None:
            return self.model.evaluate(cfg, magmoms, symmetric=self.symmetrize)
        return self.model.evaluate(cfg, magmoms)

    def _relax_bounds(self, cfg: Configuration) -> tuple[np.ndarray, np.ndarray] | None:
        if self.bounds is not None:
            n = len(cfg)
            return np.full(n, self.bounds[0]), np.full(n, self.bounds[1])
        return model_bounds(self.model, cfg)

    def _start_moments(self, atoms: Any, cfg: Configuration, system_changes: Sequence[str]) -> np.ndarray:
        given = atoms.has("initial_magmoms")
        if given and ("initial_magmoms" in system_changes or self._warm is None):
            return _collinear(atoms.get_initial_magnetic_moments())
        if self._warm is not None and np.array_equal(self._warm[0], cfg.types):
            return self._warm[1].copy()
        if given:
            return _collinear(atoms.get_initial_magnetic_moments())
        return default_start(self.model, cfg)

    # ------------------------------------------------------------------ ASE contract
    def calculate(self, atoms: Any = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = tuple(all_changes)) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        cfg = self.configuration(atoms)
        if self.magmom_mode == "relax" and self.magnetic:
            m0 = self._start_moments(atoms, cfg, system_changes)
            relaxed = relax_moments(lambda m: self._evaluate(cfg, m), m0, self._relax_bounds(cfg),
                                    tol=self.relax_tol, max_iter=self.relax_max_iter)
            self.relax_evaluations += relaxed.n_evaluations
            if not relaxed.converged:
                warnings.warn(f"moment relaxation stopped at max|dE/dm| = {relaxed.max_gradient:.3g} "
                              f"eV/μB > {self.relax_tol:g} after {relaxed.n_evaluations} evaluations",
                              MomentRelaxationWarning, stacklevel=2)
            magmoms, out = relaxed.magmoms, relaxed.evaluation
            self._warm = (cfg.types.copy(), magmoms.copy())
        else:
            if atoms.has("initial_magmoms"):
                magmoms = _collinear(atoms.get_initial_magnetic_moments())
            elif self.magnetic:
                raise InputError("the potential is magnetic but the atoms have no initial magnetic "
                                 "moments: set them (atoms.set_initial_magnetic_moments) or use "
                                 "magmoms='relax'", field="magmoms")
            else:
                magmoms = np.zeros(len(atoms))
            out = self._evaluate(cfg, magmoms if self.magnetic else None)
        self.results = self._results(cfg, magmoms, out)

    def _results(self, cfg: Configuration, magmoms: np.ndarray, out: dict) -> dict:
        energy = float(out["energy"])
        results: dict[str, Any] = {
            "energy": energy, "free_energy": energy,
            "energies": np.array(out["site_energies"], dtype=np.float64),
            "forces": np.array(out["forces"], dtype=np.float64),
            "magmoms": np.array(magmoms, dtype=np.float64),
            "magmom": float(np.sum(magmoms)),
            "magnetic_gradient": np.array(out["magnetic_gradient"], dtype=np.float64),
        }
        volume = cfg.volume
        if cfg.pbc.all() and volume > 0.0:
            virial = np.asarray(out["virial"], dtype=np.float64)
            results["stress"] = np.array([-virial[a, b] / volume for a, b in _VOIGT])
        return results

    def get_magnetic_gradient(self, atoms: Any = None) -> np.ndarray:
        """+∂E/∂m_i (N,) eV/μB at the moments of the last calculation."""
        return self.get_property("magnetic_gradient", atoms)

    def todict(self) -> dict:
        return {"potential": self.potential_path, "species": self.species,
                "magmoms": self.magmom_mode, "symmetrize": self.symmetrize,
                "relax_tol": self.relax_tol}


def _collinear(values: Any) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise InputError("non-collinear (vector) initial moments are not supported; give one "
                         "signed value per atom", field="magmoms")
    return values.copy()


def _load_model(potential: Any, num_threads: int | None) -> tuple[Any, str | None]:
    """(model, path or None): an MTPEngine for files and MTPPotentials, else the object itself."""
    from mmtp_hpc.potentials.mtp.engine import MTPEngine
    from mmtp_hpc.potentials.mtp.parameters import MTPPotential

    if isinstance(potential, (str, os.PathLike)):
        from mmtp_hpc.potentials.mtp.mlip_io import load_potential

        return MTPEngine(load_potential(potential), num_threads=num_threads), os.fspath(potential)
    if isinstance(potential, MTPPotential):
        return MTPEngine(potential, num_threads=num_threads), None
    if isinstance(potential, MTPEngine):
        return potential, None
    if hasattr(potential, "evaluate"):
        return potential, None
    raise InputError(f"expected a potential file, an MTPPotential or a model with evaluate(), got "
                     f"{type(potential).__name__}", field="potential")
