"""Energy, pressure and relaxed moments vs lattice parameter (equation of state with magnetism).

For each lattice parameter a (or each isotropic scale of a given structure) the structure
is built, its moments are relaxed at fixed positions (bounded L-BFGS-B,
:func:`mmtp_hpc.potentials.moment_relax.relax_moments`; the lower-energy result of a start
from the previous point's moments and a fresh start, so a moment that collapsed at one
lattice parameter can reappear at the next — m = 0 is stationary) or held fixed, and the
model gives E/N (eV/atom), the pressure ``P = tr(virial) / 3V`` (GPa, positive under
compression) and the moments (mean and mean |m| per species, μB). The model is an
:class:`~mmtp_hpc.potentials.mtp.engine.MTPEngine` or the analytic oracle
(:class:`~mmtp_hpc.potentials.analytic.AnalyticMagneticModel`): scanning both gives the
comparison of the Fe–Al paper's Fig. 3 (E(V), P(V), m(V)).

Positions are not relaxed: for the cubic lattices built here every atom is at a centre of
symmetry and the forces vanish; a structure read from a file is scaled as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.moment_relax import default_start, model_bounds, relax_moments
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA, Configuration
from mmtp_hpc.system.lattice import bulk


@dataclass
class Scan:
    """One model's curves: ``a`` (K,) Å, ``volume_per_atom`` (K,) Å³, ``energy_per_atom`` (K,)
    eV, ``pressure`` (K,) GPa, ``moment_mean``/``moment_abs_mean`` {species: (K,)} μB,
    ``max_gradient`` (K,) the largest projected |∂E/∂m| left (eV/μB), ``label``."""

    label: str
    a: np.ndarray
    volume_per_atom: np.ndarray
    energy_per_atom: np.ndarray
    pressure: np.ndarray
    moment_mean: dict[str, np.ndarray] = field(default_factory=dict)
    moment_abs_mean: dict[str, np.ndarray] = field(default_factory=dict)
    max_gradient: np.ndarray | None = None

    def table(self, prefix: str = "") -> dict[str, np.ndarray]:
        """CSV columns (``prefix`` + name): a_A, volume_A3_per_atom, energy_eV_per_atom,
        pressure_GPa, m_<species>_uB, abs_m_<species>_uB."""
        out = {"a_A": self.a, f"{prefix}volume_A3_per_atom": self.volume_per_atom,
               f"{prefix}energy_eV_per_atom": self.energy_per_atom, f"{prefix}pressure_GPa": self.pressure}
        out.update({f"{prefix}m_{k}_uB": v for k, v in self.moment_mean.items()})
        out.update({f"{prefix}abs_m_{k}_uB": v for k, v in self.moment_abs_mean.items()})
        return out

    def equilibrium(self) -> tuple[float, float]:
        """(a₀, E₀/N) from a parabola through the lowest point and its neighbours (NaN when the
        minimum is at an end of the scan)."""
        k = int(np.argmin(self.energy_per_atom))
        if k == 0 or k == len(self.a) - 1:
            return np.nan, np.nan
        x, y = self.a[k - 1:k + 2], self.energy_per_atom[k - 1:k + 2]
        c2, c1, c0 = np.polyfit(x, y, 2)
        if c2 <= 0:
            return np.nan, np.nan
        a0 = -c1 / (2 * c2)
        return float(a0), float(c0 + c1 * a0 + c2 * a0 * a0)


def lattice_structure(lattice: str, a: float, repeat: int | Sequence[int] = 1,
                      sublattice_types: Sequence[int] = (0, 1)) -> Configuration:
    """The cubic lattice (``bcc``, ``fcc``, ``b2``, ``sc``, ``l12``) at lattice parameter a."""
    return bulk(lattice, a, repeat=repeat, sublattice_types=tuple(sublattice_types))


def scaled_structure(reference: Configuration, scale: float) -> Configuration:
    """``reference`` with cell and positions multiplied by ``scale`` (isotropic strain); moments
    kept, labels dropped."""
    cfg = reference.copy()
    cfg.clear_labels()
    cfg.cell = reference.cell * scale
    cfg.positions = reference.positions * scale
    return cfg


def _evaluate(model: object, cfg: Configuration, magmoms: np.ndarray | None,
              symmetric: bool | None) -> dict:
    if getattr(model, "pot", None) is not None:
        return model.evaluate(cfg, magmoms, symmetric=symmetric)
    return model.evaluate(cfg, magmoms)


def scan_structures(model: object, structures: Sequence[Configuration], a_values: np.ndarray,
                    species: Sequence[str], magmoms: Sequence[float] | float | None = None,
                    relax: bool = True, tol: float = 1e-5, symmetric: bool | None = None,
                    label: str = "", warm_start: bool = True) -> Scan:
    """Evaluate ``model`` on each structure (labelled by ``a_values``), moments relaxed or fixed.

    ``magmoms``: start (relax) or fixed moments, one value or one per species (μB); default:
    the structure's own moments when it has them, else (relax only) the model's
    ferromagnetic guess. Non-magnetic MTPs ignore moments.
    """
    a_values = np.asarray(a_values, dtype=np.float64)
    if len(structures) != len(a_values):
        raise InputError(f"{len(structures)} structures for {len(a_values)} lattice parameters")
    pot = getattr(model, "pot", None)
    magnetic = bool(pot.magnetic) if pot is not None else True
    types_present = sorted({int(t) for cfg in structures for t in cfg.types})
    names = {t: (species[t] if t < len(species) else f"type{t}") for t in types_present}
    k_points = len(a_values)
    energy, pressure, volume, gmax = (np.zeros(k_points) for _ in range(4))
    mean = {names[t]: np.zeros(k_points) for t in types_present}
    abs_mean = {names[t]: np.zeros(k_points) for t in types_present}
    values = None if magmoms is None else np.atleast_1d(np.asarray(magmoms, dtype=np.float64))
    if values is not None and values.size != 1 and values.size <= max(types_present):
        raise InputError(f"{values.size} moments given for species {species}: give one value or "
                         "one per species", field="magmoms")
    previous: np.ndarray | None = None
    for k, cfg in enumerate(structures):
        n = len(cfg)
        m: np.ndarray | None = None
        if magnetic:
            if values is not None:
                m = np.full(n, values[0]) if values.size == 1 else values[cfg.types]
            elif cfg.magmoms is not None:
                m = cfg.magmoms.copy()
            elif not relax:
                raise InputError("fixed moments need values (--magmoms)", field="magmoms")
            if relax:
                starts = [m if m is not None else default_start(model, cfg)]
                if warm_start and previous is not None and len(previous) == n:
                    starts.insert(0, previous)
                tries = [relax_moments(lambda x, c=cfg: _evaluate(model, c, x, symmetric), start,
                                       model_bounds(model, cfg), tol=tol) for start in starts]
                res = min(tries, key=lambda r: r.evaluation["energy"])
                m, out, gmax[k] = res.magmoms, res.evaluation, res.max_gradient
                previous = m.copy()
            else:
                out = _evaluate(model, cfg, m, symmetric)
                gmax[k] = float(np.max(np.abs(out["magnetic_gradient"])))
        else:
            out = _evaluate(model, cfg, None, symmetric)
        v = cfg.volume
        energy[k] = out["energy"] / n
        volume[k] = v / n
        pressure[k] = float(np.trace(out["virial"])) / (3.0 * v) * EV_PER_A3_TO_GPA
        for t in types_present:
            sel = cfg.types == t
            mm = m[sel] if m is not None else np.zeros(int(sel.sum()))
            mean[names[t]][k] = mm.mean()
            abs_mean[names[t]][k] = np.abs(mm).mean()
    return Scan(label=label, a=a_values, volume_per_atom=volume, energy_per_atom=energy,
                pressure=pressure, moment_mean=mean, moment_abs_mean=abs_mean,
                max_gradient=gmax if magnetic else None)


def scan_lattice(model: object, lattice: str, a_values: Sequence[float], species: Sequence[str],
                 repeat: int = 1, sublattice_types: Sequence[int] = (0, 1), **kwargs) -> Scan:
    """:func:`scan_structures` over the cubic ``lattice`` at each a in ``a_values`` (Å)."""
    a_values = np.asarray(a_values, dtype=np.float64)
    structures = [lattice_structure(lattice, a, repeat, sublattice_types) for a in a_values]
    return scan_structures(model, structures, a_values, species, **kwargs)


def scan_scaled(model: object, reference: Configuration, scales: Sequence[float],
                species: Sequence[str], **kwargs) -> Scan:
    """:func:`scan_structures` over isotropic scalings of ``reference`` (its moments, if any,
    are the start or the fixed values unless ``magmoms`` is given); ``a`` is reported as
    scale × |first cell vector|."""
    scales = np.asarray(scales, dtype=np.float64)
    a_ref = float(np.linalg.norm(reference.cell[0]))
    structures = [scaled_structure(reference, s) for s in scales]
    return scan_structures(model, structures, scales * a_ref, species, **kwargs)
