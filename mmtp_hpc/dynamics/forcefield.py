"""The potential as the MD driver sees it: neighbour-list upkeep, evaluation, ghost folding.

:class:`ForceField` owns the Verlet neighbour list (local + ghost layout of
:mod:`mmtp_hpc.system.neighbors`) and calls :meth:`MTPEngine.compute_local` on it. Per
step it only refreshes ghost positions (:meth:`NeighborList.update_positions`); it
rebuilds the list when some atom may have come closer than the cutoff to an entry
that is not in the list:

- fixed cell: an atom moved more than ``skin / 2`` since the build (the usual rule);
- changing cell (NPT): with fractional displacements measured in the current cell,
  ``2·max|Δs·h| + (cutoff + skin)·‖h₀⁻¹h − I‖₂ > skin``, which bounds how much any pair
  vector ``(s_j − s_i + S)·h`` can have changed since the build.

The rebuild decision and the list itself depend only on the state, so a restart that
rebuilds the list from the stored build positions and cell continues bit for bit.

Ghost contributions are folded onto their owners here ("reverse sum" in the MD step;
the future ``parallel/halo`` replaces it with an MPI reverse communication).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from mmtp_hpc.dynamics.state import Evaluation, MDState
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.system.neighbors import NeighborList, build_neighbor_list


class ForceField:
    def __init__(self, engine: MTPEngine, symmetric: bool | None = None, skin: float = 1.0):
        self.engine = engine
        pot = engine.pot
        self.magnetic = bool(pot.magnetic)
        self.symmetric = bool(pot.symmetric if symmetric is None else symmetric) and self.magnetic
        if pot.symmetric and self.magnetic and not self.symmetric:
            # only ½[E(M) + E(−M)] was fitted; the raw E(M) is unconstrained away from the data
            warnings.warn("the potential was trained spin-symmetrised but is evaluated without "
                          "symmetrisation ([potential] symmetrize = false): its raw energy E(M) was "
                          "not fitted and can be unphysical", UserWarning, stacklevel=2)
        self.cutoff = float(pot.cutoff)
        self.skin = float(skin)
        self.nl: NeighborList | None = None
        self.build_cell: np.ndarray | None = None
        self.types_all: np.ndarray | None = None
        self.rebuilds = 0
        self.evaluations = 0
        self.generation = 0       # bumped at every rebuild (caches keyed on the list use it)
        self.time = {"force": 0.0, "comm": 0.0, "neighbor": 0.0}   # seconds, for the run summary

    distributed = False

    # ------------------------------------------------------------------ neighbour list
    def setup(self, state: MDState) -> None:
        """First build, from the state (the MPI version also distributes the atoms)."""
        self.build(state.positions, state.cell, state.pbc, state.types)

    def build(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, types: np.ndarray) -> None:
        """Build the list from ``positions`` (N, 3) Å in ``cell``."""
        t0 = time.perf_counter()
        self.nl = build_neighbor_list(cell, pbc, positions, self.cutoff, self.skin)
        self.time["neighbor"] += time.perf_counter() - t0
        self.build_cell = np.array(cell, dtype=np.float64)
        self.types_all = np.ascontiguousarray(np.asarray(types)[self.nl.image_of], dtype=np.int32)
        self.rebuilds += 1
        self.generation += 1

    def restore(self, build_positions: np.ndarray, build_cell: np.ndarray, state: MDState) -> None:
        """Rebuild exactly the list a run had (from its build positions and cell), then move
        it to the state's positions and cell."""
        self.build(build_positions, build_cell, state.pbc, state.types)
        self.rebuilds -= 1
        self._move(state.positions, state.cell)

    def needs_rebuild(self, positions: np.ndarray, cell: np.ndarray) -> bool:
        nl = self.nl
        if nl is None:
            return True
        if np.array_equal(cell, self.build_cell):
            return nl.needs_rebuild(positions)
        # changing cell: see the module docstring
        h0, h = self.build_cell, np.asarray(cell)
        inv_h, inv_h0 = np.linalg.inv(h), np.linalg.inv(h0)
        ds = positions @ inv_h - nl.reference_positions @ inv_h0
        disp = ds @ h
        max_disp = float(np.sqrt(np.max(np.einsum("ij,ij->i", disp, disp)))) if len(disp) else 0.0
        strain = float(np.linalg.norm(inv_h0 @ h - np.eye(3), 2))
        return 2.0 * max_disp + (self.cutoff + self.skin) * strain > self.skin

    def update(self, state: MDState) -> bool:
        """Neighbour update of the MD step: rebuild if needed, else refresh ghosts. True if rebuilt."""
        if self.needs_rebuild(state.positions, state.cell):
            self.build(state.positions, state.cell, state.pbc, state.types)
            return True
        self._move(state.positions, state.cell)
        return False

    def _move(self, positions: np.ndarray, cell: np.ndarray) -> None:
        nl = self.nl
        if not np.array_equal(nl.cell, cell):
            # ghosts are images: positions[image] + shifts @ cell with the *current* cell
            nl.cell = np.array(cell, dtype=np.float64)
        nl.update_positions(positions)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, state: MDState, magmoms: np.ndarray | None = None,
                 derivatives: bool = True) -> Evaluation:
        """Energy, site energies, forces, virial and ∂E/∂m at the list's current positions.

        ``magmoms`` (N,) overrides the state's moments (used by the relaxation).
        """
        nl = self.nl
        mag = state.magmoms if magmoms is None else magmoms
        mag_all = mag[nl.image_of]
        self.evaluations += 1
        t0 = time.perf_counter()
        if self.symmetric and self.engine.one_pass_symmetric():
            # ½[E(M) + E(−M)] and its derivatives in one neighbour pass (symmetric intervals)
            plus = self._local(mag_all, derivatives, symmetric=True)
            self.time["force"] += time.perf_counter() - t0
            if not derivatives:
                return Evaluation(float(plus[0].sum()), plus[0], None, None, None)
            return Evaluation(float(plus[0].sum()), plus[0], plus[1], plus[3], plus[2])
        plus = self._local(mag_all, derivatives)
        minus = self._local(-mag_all, derivatives) if self.symmetric else None
        self.time["force"] += time.perf_counter() - t0
        if minus is not None:
            site = 0.5 * (plus[0] + minus[0])
            if not derivatives:
                return Evaluation(float(site.sum()), site, None, None, None)
            forces = 0.5 * (plus[1] + minus[1])
            grad = 0.5 * (plus[2] - minus[2])
            virial = 0.5 * (plus[3] + minus[3])
        else:
            site = plus[0]
            if not derivatives:
                return Evaluation(float(site.sum()), site, None, None, None)
            forces, grad, virial = plus[1], plus[2], plus[3]
        return Evaluation(float(site.sum()), site, forces, virial, grad)

    def _local(self, mag_all: np.ndarray, derivatives: bool, symmetric: bool = False) -> tuple:
        nl = self.nl
        res = self.engine.compute_local(nl, self.types_all, mag_all, derivatives=derivatives,
                                        symmetric=symmetric)
        if not derivatives:
            return (res.site_energies,)
        n = nl.n_local
        # reverse sum: ghost entries are periodic images of locals
        owners = nl.image_of[n:]
        forces = res.forces[:n].copy()
        if len(owners):
            for d in range(3):
                forces[:, d] += np.bincount(owners, weights=res.forces[n:, d], minlength=n)
        if self.magnetic:
            grad = res.magnetic_gradient[:n].copy()
            if len(owners):
                grad += np.bincount(owners, weights=res.magnetic_gradient[n:], minlength=n)
        else:
            grad = np.zeros(n)
        return res.site_energies, forces, grad, res.virial

    def grade(self, active_set, state: MDState, evaluation: Evaluation, mode: str):
        """Extrapolation grade of the current configuration (``active_set.grade`` on this list)."""
        cfg = state.configuration(evaluation)
        return active_set.grade(self.engine, cfg, mode, nl=self.nl, symmetric=self.symmetric)

    def monte_carlo_layout(self, state: MDState, evaluation: Evaluation, previous=None):
        """What a Monte Carlo sweep needs on this layout
        (:class:`~mmtp_hpc.dynamics.moments.SerialSweepLayout`)."""
        from mmtp_hpc.dynamics.moments import SerialSweepLayout

        return SerialSweepLayout(self, state, evaluation, previous)

    def site_energies_of(self, magmoms_all: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """E_k of the listed centres for per-entry moments ``magmoms_all`` (n_total,); the
        force field's energy (½[E_k(M) + E_k(−M)] when symmetrised, in one pass where the
        intervals allow)."""
        return self.engine.site_energies_of(self.nl, self.types_all, magmoms_all, centers,
                                            symmetric=self.symmetric)
