"""Extrapolation grades from a potential's active set (MaxVol, spec §5), as MLIP-3 computes them.

This module's single job is γ: given the active set A (n×n, rows = selected
equations) stored with a potential, the grade of a candidate row b is
``γ = max_j |(b A⁻¹)_j|`` — MLIP-3 stores ``inverse = A⁻ᵀ``, so ``γ = max |inverse @ b|``.
A configuration's grade is the largest over its rows. Which rows a configuration has
follows MLIP-3's ``CfgSelection::PrepareMatrix`` with the weights saved in the
``.almtp`` (``energy_weight`` w_e, ``force_weight`` w_f, ``stress_weight`` w_s,
``site_en_weight`` w_n, ``weight_scaling`` p):

- energy only (w_e ≠ 0, w_f = w_s = 0): one row ``w_e · ∂E/∂θ / N^(p/2)``
  (configuration mode; p = 2 gives ∂E/∂θ / N);
- with forces or stresses: the row ∂E/∂θ if w_e ≠ 0 (MLIP-3 does not scale it), the 3N
  rows ``w_f · ∂F/∂θ`` and the 9 rows ``w_s · ∂S/∂θ / N^(p/2)`` (S the virial) — these
  need the parameter Jacobians and cost O(N) evaluations: small configurations only;
- neighbourhoods (w_n ≠ 0): one row ``∂E_i/∂θ`` per atom (unweighted, unscaled), whose
  grades are the per-neighbourhood grades (``nbh_grades``).

Mode ``"cfg"`` uses the energy/force/stress rows, ``"nbh"`` the neighbourhood rows;
``"auto"`` picks the rows the active set was built from. Asking for rows the active set
was not built from is refused: such grades have no meaning.

The active-learning issue extends this module (MaxVol selection, updates of A⁻¹).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtp_hpc.errors import InputError


@dataclass
class GradeResult:
    """``grade``: the configuration grade; ``nbh_grades`` (N,) in nbh mode, else None;
    ``worst_atom``: the atom of the largest neighbourhood grade (nbh mode), else -1: its index
    from :meth:`ActiveSet.grade`, its id from ``ForceField.grade`` (over all MPI ranks)."""

    grade: float
    nbh_grades: np.ndarray | None = None
    worst_atom: int = -1


class ActiveSet:
    """The active set of one potential, ready to grade configurations."""

    def __init__(self, inverse: np.ndarray, energy_weight: float = 1.0, force_weight: float = 0.0,
                 stress_weight: float = 0.0, site_en_weight: float = 0.0, weight_scaling: int = 2):
        self.inverse = np.ascontiguousarray(inverse, dtype=np.float64)
        n = self.inverse.shape[0]
        if self.inverse.shape != (n, n):
            raise InputError(f"active-set inverse must be square, got {self.inverse.shape}")
        self.energy_weight = float(energy_weight)
        self.force_weight = float(force_weight)
        self.stress_weight = float(stress_weight)
        self.site_en_weight = float(site_en_weight)
        self.weight_scaling = int(weight_scaling)

    @classmethod
    def from_potential(cls, pot) -> ActiveSet:
        block = getattr(pot, "active_set", None)
        if block is None or getattr(block, "inverse", None) is None:
            raise InputError("the potential has no active set (an .almtp file with a #MVS_v1.1 block "
                             "is needed for extrapolation grades)", field="extrapolation")
        if block.inverse.shape[0] != pot.n_params:
            raise InputError(f"active set has {block.inverse.shape[0]} rows but the potential has "
                             f"{pot.n_params} parameters", field="extrapolation")
        return cls(block.inverse, block.energy_weight, block.force_weight, block.stress_weight,
                   block.site_en_weight, block.weight_scaling)

    @property
    def n_params(self) -> int:
        return self.inverse.shape[0]

    @property
    def has_cfg_rows(self) -> bool:
        return self.energy_weight != 0.0 or self.force_weight != 0.0 or self.stress_weight != 0.0

    @property
    def has_nbh_rows(self) -> bool:
        return self.site_en_weight != 0.0

    @property
    def default_mode(self) -> str:
        return "nbh" if self.has_nbh_rows else "cfg"

    def resolve_mode(self, mode: str | None) -> str:
        mode = self.default_mode if mode in (None, "auto") else mode
        if mode == "nbh" and not self.has_nbh_rows:
            raise InputError("the active set was built from configuration rows (site_en_weight = 0); "
                             "per-neighbourhood grades (mode = \"nbh\") are not defined for it; use "
                             "mode = \"cfg\" or \"auto\"", field="extrapolation.mode")
        if mode == "cfg" and not self.has_cfg_rows:
            raise InputError("the active set was built from neighbourhood rows only; configuration grades "
                             "(mode = \"cfg\") are not defined for it; use mode = \"nbh\" or \"auto\"",
                             field="extrapolation.mode")
        if mode not in ("cfg", "nbh"):
            raise InputError(f"mode must be 'auto', 'cfg' or 'nbh', got {mode!r}", field="extrapolation.mode")
        return mode

    @property
    def energy_rows_only(self) -> bool:
        """Configuration rows of energies only (no force or stress rows): the configuration
        grade needs only Σ_i ∂E_i/∂θ, which sums over MPI ranks."""
        return self.force_weight == 0.0 and self.stress_weight == 0.0

    def check_parameters(self, n_params: int) -> None:
        """An active set grades only the potential it was built for."""
        if n_params != self.n_params:
            raise InputError(f"active set has {self.n_params} rows but the potential has "
                             f"{n_params} parameters", field="extrapolation")

    def energy_grade(self, energy_param_grad: np.ndarray, n_atoms: int) -> float:
        """The configuration grade of the energy row Σ_i ∂E_i/∂θ of ``n_atoms`` atoms (weighted
        and scaled as the rows the active set was built from)."""
        scale = float(n_atoms) ** (self.weight_scaling / 2.0) if n_atoms else 1.0
        row = self.energy_weight * np.asarray(energy_param_grad, dtype=np.float64) / scale
        return float(self.row_grades(row)[0])

    def row_grades(self, rows: np.ndarray) -> np.ndarray:
        """γ of each row b (rows (k, n)): max_j |(A⁻ᵀ b)_j|."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        return np.abs(rows @ self.inverse.T).max(axis=1)

    def grade(self, engine, cfg, mode: str | None = None, magmoms: np.ndarray | None = None,
              nl=None, symmetric: bool | None = None) -> GradeResult:
        """Grade of ``cfg`` with ``engine`` (an :class:`MTPEngine` of the same potential)."""
        mode = self.resolve_mode(mode)
        self.check_parameters(engine.pot.n_params)
        n = len(cfg)
        g = engine.param_gradients(cfg, magmoms, site=True, symmetric=symmetric, nl=nl)
        if mode == "nbh":
            nbh = self.row_grades(g["site_param_grad"]) if n else np.zeros(0)
            worst = int(np.argmax(nbh)) if n else -1
            return GradeResult(float(nbh.max(initial=0.0)), nbh, worst)
        if self.energy_rows_only:
            return GradeResult(self.energy_grade(g["energy_param_grad"], n))
        scale = float(n) ** (self.weight_scaling / 2.0) if n else 1.0
        rows = []
        if self.energy_weight != 0.0:
            rows.append(g["energy_param_grad"][None, :])
        jac = engine.jacobians(cfg, magmoms, symmetric=symmetric)
        if self.force_weight != 0.0:
            rows.append(self.force_weight * jac["forces"].reshape(3 * n, -1))
        if self.stress_weight != 0.0:
            rows.append(self.stress_weight * jac["virial"].reshape(9, -1) / scale)
        return GradeResult(float(self.row_grades(np.concatenate(rows)).max()))
