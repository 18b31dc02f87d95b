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

This class is the one force field: evaluation, grades and the Monte Carlo hooks are
written once, over a *layout* of atoms and neighbour entries. The serial layout (here)
makes ghosts periodic images: :meth:`ForceField.spread` copies per-atom values to the
entries, :meth:`ForceField.fold` sums entry contributions onto their owners,
:meth:`ForceField.reduce` is the identity. The MPI layout
(:class:`~mmtp_hpc.dynamics.domain.DomainForceField`) overrides those with the halo's
forward and reverse communication and sums over ranks. The atoms are an
:class:`~mmtp_hpc.system.atoms.AtomSet` (a single point) or the MD state, which carries
the same arrays.
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

    # ------------------------------------------------------------------ layout
    # What differs between the serial layout (periodic images) and the MPI one (halo, see
    # DomainForceField): how per-atom values reach the neighbour entries, how entry
    # contributions return to their owners, and the sums over ranks. Everything else is
    # written once, below.
    fold_timer = "force"     # where spread/fold time is counted (the MPI layout: "comm")

    def spread(self, values: np.ndarray) -> np.ndarray:
        """Per-atom values (n_local,) → per-entry values (n_total,): ghosts are images."""
        return np.ascontiguousarray(np.asarray(values)[self.nl.image_of])

    def fold(self, per_entry: np.ndarray) -> np.ndarray:
        """Entry contributions (n_total, k) summed onto their owners (n_local, k)."""
        nl = self.nl
        n = nl.n_local
        out = per_entry[:n].copy()
        owners = nl.image_of[n:]
        if len(owners):
            for d in range(per_entry.shape[1]):
                out[:, d] += np.bincount(owners, weights=per_entry[n:, d], minlength=n)
        return out

    def reduce(self, value: np.ndarray) -> np.ndarray:
        """Σ over ranks of a float64 array (itself: one rank holds every atom)."""
        return value

    def max_over_ranks(self, value: tuple) -> tuple:
        """The largest of the ranks' ``value`` tuples."""
        return value

    def param_gradients(self, state: MDState) -> dict:
        """∂E_i/∂θ of the owned centres (``site_param_grad``) and their sum on this rank
        (``energy_param_grad``), on the current list."""
        return self.engine.param_gradients(state.configuration(), site=True, nl=self.nl,
                                           symmetric=self.symmetric)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, state: MDState, magmoms: np.ndarray | None = None,
                 derivatives: bool | str = True, basic: bool = False) -> Evaluation:
        """Energy, site energies, forces, virial and ∂E/∂m at the list's current positions, for
        the atoms of this layout (all of them serially; the owned ones of this rank under MPI).

        ``magmoms`` (n_atoms,) overrides the state's moments (used by the relaxation). A
        spin-symmetrised potential gives ½[E(M) + E(−M)] (combined by the engine).
        ``derivatives``: False for the energies alone, ``"magnetic"`` for the energies and ∂E/∂m
        without forces and virial (None in the result). ``basic``:
        also the centres' basic moments (``Evaluation.basic``, where the kernels can sweep), for
        the step's Monte Carlo to start from.
        """
        t0 = time.perf_counter()
        mag = state.magmoms if magmoms is None else magmoms
        mag_all = self.spread(mag)
        t1 = time.perf_counter()
        self.evaluations += 1
        nl = self.nl
        cache = self._basic_buffer(nl.n_local) if basic else None
        res = self.engine.compute_local(nl, self.types_all, mag_all, derivatives=derivatives,
                                        symmetric=self.symmetric, basic_out=cache)
        t2 = time.perf_counter()
        site = res.site_energies
        energy = float(self.reduce(np.array([site.sum()]))[0])
        forces = virial = grad = None
        if derivatives == "magnetic":
            grad = (np.ascontiguousarray(self.fold(res.magnetic_gradient.reshape(-1, 1))[:, 0])
                    if self.magnetic else np.zeros(nl.n_local))
        elif derivatives:
            per_entry = np.empty((nl.n_total, 4))
            per_entry[:, :3] = res.forces
            per_entry[:, 3] = res.magnetic_gradient if self.magnetic else 0.0
            owned = self.fold(per_entry)
            forces = np.ascontiguousarray(owned[:, :3])
            grad = np.ascontiguousarray(owned[:, 3]) if self.magnetic else np.zeros(nl.n_local)
            virial = self.reduce(res.virial)
        self.time[self.fold_timer] += (t1 - t0) + (time.perf_counter() - t2)
        self.time["force"] += t2 - t1
        handed = None if (cache is None or derivatives is not True) else (self.generation, cache)
        return Evaluation(energy, site, forces, virial, grad, handed, mag_all if handed else None)

    def _basic_buffer(self, n_local: int) -> np.ndarray | None:
        """The array the evaluations hand their basic moments over in (one per force field,
        reused: a fresh 2 MB per step costs page faults; the sweep of a step is done with it
        before the next evaluation writes it), or None where the kernels cannot sweep."""
        buf = getattr(self, "_basic", None)
        if buf is None or buf.shape[0] != n_local:
            buf = self.engine.metropolis_cache(n_local, self.symmetric)
            self._basic = buf
        return buf

    def grade(self, active_set, state: MDState, evaluation: Evaluation, mode: str):
        """Extrapolation grade of the current configuration, from the parameter gradients of
        the list's centres: per neighbourhood (``nbh``: each owned atom's row; the worst atom
        by id over all ranks: ``worst_atom`` is an atom id, serial or not) or per configuration
        (``cfg``: the energy row Σ_i ∂E_i/∂θ summed over ranks). Configuration grades with
        force/stress rows need the whole configuration's parameter Jacobians: serial only."""
        from mmtp_hpc.errors import InputError
        from mmtp_hpc.potentials.mtp.grades import GradeResult

        mode = active_set.resolve_mode(mode)
        active_set.check_parameters(self.engine.pot.n_params)
        if mode == "cfg" and not active_set.energy_rows_only:
            if self.distributed:
                raise InputError("configuration grades with force/stress rows are not available with "
                                 "domain decomposition (they need O(N) parameter Jacobians); use an "
                                 "active set of energy or neighbourhood rows", field="extrapolation.mode")
            return active_set.grade(self.engine, state.configuration(evaluation), mode, nl=self.nl,
                                    symmetric=self.symmetric)
        g = self.param_gradients(state)
        if mode == "nbh":
            nbh = active_set.row_grades(g["site_param_grad"]) if state.n_atoms else np.zeros(0)
            k = int(np.argmax(nbh)) if len(nbh) else -1
            mine = (float(nbh[k]), int(state.ids[k])) if k >= 0 else (-1.0, -1)
            best = self.max_over_ranks(mine)
            return GradeResult(max(best[0], 0.0), nbh, best[1])
        row = self.reduce(np.asarray(g["energy_param_grad"], dtype=np.float64))
        return GradeResult(active_set.energy_grade(row, state.n_global))

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
