"""The force field on a domain-decomposed supercell: owned atoms + MPI halo, same interface as ForceField.

Under ``mpirun -n P`` every rank's :class:`~mmtp_hpc.dynamics.state.MDState` holds only the
atoms it owns (sorted by global id); :class:`DomainForceField` keeps the subdomain's
ghost layer (:class:`mmtp_hpc.parallel.halo.Halo`) and a neighbour list whose centres are
the owned atoms and whose entries are owned atoms then ghosts — the layout the kernels
already consume, so :meth:`MTPEngine.compute_local` runs unchanged. Per MD step
(hooks 2–4 of :mod:`mmtp_hpc.dynamics.driver`):

2. exchange: if any atom on any rank moved more than skin/2 since the build (or the cell
   changed by more than the skin allows; same rule as :class:`ForceField`), atoms migrate
   to their new owners with positions, velocities, masses, types, ids and moments, and the
   halo and list are rebuilt; otherwise ghost positions are refreshed (forward
   communication, ``+ shift @ cell`` with the current cell);
3. forces: moments are sent to the ghosts (forward), the kernels run on the local list;
4. reverse sum: forces and ∂E/∂m computed on ghosts are sent back and added to their
   owners; the energy and the virial are summed over ranks.

Everything else in the driver sees local arrays and global scalars. The halo is
``cutoff + skin`` wide, twice that when moments are updated by parallel Monte Carlo (a
move changes the site energies of centres up to one cutoff away, whose own
neighbourhoods reach one more cutoff).

:func:`evaluate_distributed` evaluates one configuration this way (``mpirun mmtp efs``).
"""

from __future__ import annotations

import numpy as np

from mmtp_hpc.dynamics.forcefield import ForceField
from mmtp_hpc.dynamics.moments import NativeMetropolis
from mmtp_hpc.dynamics.state import Evaluation, MDState
from mmtp_hpc.system.atoms import AtomSet
from mmtp_hpc.parallel.comm import allreduce_sum, max_op
from mmtp_hpc.parallel.decomposition import Decomposition
from mmtp_hpc.parallel.halo import Halo, RowExchange, gather_rows, migrate
from mmtp_hpc.system.neighbors import NeighborList, find_pairs

# per-atom arrays that travel with an atom: the atom set's ATOM_FIELDS (AtomSet: positions,
# types, ids, magmoms; MDState: those plus velocities and masses)
_INTEGER_FIELDS = ("types", "ids")
Atoms = AtomSet | MDState     # what the force field evaluates (the same per-atom arrays)


class AtomRows:
    """Named per-atom fields packed side by side into float64 rows (what migration sends; ids
    and types are exact in float64). Fields are found by name, never by column number."""

    def __init__(self, widths: dict[str, int]):
        self.slices: dict[str, slice] = {}
        c = 0
        for name, w in widths.items():
            self.slices[name] = slice(c, c + int(w))
            c += int(w)
        self.width = c

    @classmethod
    def for_state(cls, atom_fields: dict[str, int], extra: dict[str, np.ndarray] | None = None) -> AtomRows:
        widths = dict(atom_fields)
        for name, value in (extra or {}).items():
            if name in widths:
                raise ValueError(f"extra per-atom field {name!r} shadows a state field")
            widths[name] = int(np.prod(np.shape(value)[1:]))
        return cls(widths)

    def pack(self, n: int, fields: dict[str, np.ndarray]) -> np.ndarray:
        rows = np.empty((n, self.width))
        for name, sl in self.slices.items():
            rows[:, sl] = np.asarray(fields[name], dtype=np.float64).reshape(n, sl.stop - sl.start)
        return rows

    def field(self, rows: np.ndarray, name: str) -> np.ndarray:
        """(n, width) columns of ``name``."""
        return rows[:, self.slices[name]]


def pack_atoms(state: Atoms, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, AtomRows]:
    """(n, k) float64 rows of the per-atom arrays of ``state`` (its ``ATOM_FIELDS``) and of
    ``extra``, and their layout."""
    layout = AtomRows.for_state(state.ATOM_FIELDS, extra)
    fields = {name: getattr(state, name) for name in state.ATOM_FIELDS}
    fields.update(extra or {})
    return layout.pack(state.n_atoms, fields), layout


def unpack_atoms(state: Atoms, rows: np.ndarray, layout: AtomRows) -> dict[str, np.ndarray]:
    """Set the state's per-atom arrays from ``rows``; returns the extra fields by name."""
    out = {}
    for name in layout.slices:
        block = layout.field(rows, name)
        if name in _INTEGER_FIELDS:
            setattr(state, name, np.rint(block[:, 0]).astype(np.int64))
        elif name in state.ATOM_FIELDS:
            setattr(state, name, np.ascontiguousarray(block[:, 0] if block.shape[1] == 1 else block))
        else:
            out[name] = np.ascontiguousarray(block)
    return out


def _select_atoms(state: Atoms, index: np.ndarray) -> None:
    """Keep (or reorder to) the atoms ``index`` of the state."""
    rows, layout = pack_atoms(state)
    unpack_atoms(state, rows[index], layout)


class DomainForceField(ForceField):
    """:class:`ForceField` over the owned atoms of this rank's subdomain (see the module docstring)."""

    distributed = True

    def __init__(self, engine, comm, symmetric: bool | None = None, skin: float = 1.0,
                 grid: list[int] | None = None, monte_carlo: bool = False):
        super().__init__(engine, symmetric, skin)
        self.comm = comm
        self.grid_request = None if grid is None else list(grid)
        self.monte_carlo = bool(monte_carlo)
        radius = self.cutoff + self.skin
        # parallel MC in the kernels takes every ghost centre's row and energy from its owner:
        # the plain halo holds what its trials need. The Python loop (no kernel cache) computes
        # ghost centres' energies from their neighbours: a halo of two cutoffs plus the skin
        self.kernel_sweeps = bool(monte_carlo and NativeMetropolis.native
                                  and engine.metropolis_cache(1, self.symmetric) is not None)
        self.halo_width = 2.0 * radius if (monte_carlo and not self.kernel_sweeps) else radius
        # parallel MC: same-sector moves on neighbouring ranks are half a subdomain apart, ≥ 2 cutoffs
        self.min_width = max(self.halo_width, 4.0 * self.cutoff) if monte_carlo else self.halo_width
        self.decomp: Decomposition | None = None
        self.halo: Halo | None = None
        self.migrations = 0
        self.time = {"neighbor": 0.0, "comm": 0.0, "force": 0.0}

    # ------------------------------------------------------------------ set-up / rebuild
    def setup(self, state: Atoms, replicated: bool = True) -> None:
        """First build. ``replicated``: every rank holds all atoms (as read or generated), and
        keeps its own; else every rank holds a part of the atoms (a distributed set-up: its
        share of a lattice, a chunk of a file), and they go to their owners. Atoms moved here
        are not counted as migrations of the run."""
        import time
        t0 = time.perf_counter()
        self._decompose(state.cell, state.pbc)
        if replicated:
            frac, _ = self.decomp.wrap(state.positions)
            keep = self.decomp.owners(frac) == self.comm.Get_rank()
            _select_atoms(state, keep)
            self._sort(state)
        else:
            frac, _ = self.decomp.wrap(state.positions)
            self._send_to_owners(state, {}, self.decomp.owners(frac))
        state.comm = self.comm
        state.n_global = self._global_count(state)
        self._build(state.positions, state)
        self.time["neighbor"] += time.perf_counter() - t0

    def decompose(self, cell: np.ndarray, pbc: np.ndarray) -> Decomposition:
        """The rank grid for ``cell`` (created once, then follows the cell); a distributed set-up
        needs it before any atom exists."""
        self._decompose(np.asarray(cell, dtype=np.float64), np.asarray(pbc, dtype=bool))
        return self.decomp

    def _decompose(self, cell: np.ndarray, pbc: np.ndarray) -> None:
        if self.decomp is None:
            self.decomp = Decomposition(self.comm, cell, pbc, self.min_width, self.grid_request)
        else:
            self.decomp.set_cell(cell)

    def _global_count(self, state: Atoms) -> int:
        return int(round(float(allreduce_sum(self.comm, np.array([float(state.n_atoms)]))[0])))

    @staticmethod
    def _sort(state: Atoms) -> None:
        order = np.argsort(state.ids, kind="stable")
        if np.any(order != np.arange(len(order))):
            _select_atoms(state, order)

    def _send_to_owners(self, state: Atoms, carry: dict[str, np.ndarray],
                        owners: np.ndarray) -> dict[str, np.ndarray]:
        """Atoms (with the per-atom arrays ``carry``) to ranks ``owners``; sorted by id after."""
        rows, layout = pack_atoms(state, carry)
        rows = migrate(self.comm, owners, rows)
        rows = rows[np.argsort(layout.field(rows, "ids")[:, 0], kind="stable")]
        extra = unpack_atoms(state, rows, layout)
        return {k: extra[k].reshape((len(rows), *np.shape(carry[k])[1:])) for k in carry}

    def _migrate(self, state: Atoms, carry: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Atoms to their owners; ``carry``: more per-atom arrays that travel with them."""
        carry = carry or {}
        frac, _ = self.decomp.wrap(state.positions)
        owners = self.decomp.owners(frac)
        moving = int(np.count_nonzero(owners != self.comm.Get_rank()))
        out = self._send_to_owners(state, carry, owners)
        self.migrations += int(allreduce_sum(self.comm, np.array([float(moving)]))[0])
        return out

    def sectors_hold(self) -> bool:
        """Whether the parallel Monte Carlo of this step can run on the current list without
        migrating first: the list is valid (step 2 rebuilt it, migrating every atom into its
        owner's subdomain, or found every atom within half the skin of where it was then), and
        half a subdomain along every split direction is at least two cutoffs plus the skin, so
        same-sector atoms of different ranks stay more than two cutoffs apart although each
        may have left its subdomain by up to half the skin."""
        d = self.decomp
        split = d.grid > 1
        if self.nl is None or not np.any(split):
            return self.nl is not None
        half = d.spacings[split] / d.grid[split] / 2.0
        return bool(np.all(half >= 2.0 * self.cutoff + self.skin))

    def rebuild_now(self, state: Atoms, carry: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Migrate (with ``carry``) and rebuild now, whatever the displacements (parallel MC needs
        every atom inside its owner's subdomain)."""
        import time
        t0 = time.perf_counter()
        self._decompose(state.cell, state.pbc)
        out = self._migrate(state, carry)
        self._build(state.positions, state)
        self.time["neighbor"] += time.perf_counter() - t0
        return out

    def _build(self, build_positions: np.ndarray, state: Atoms) -> None:
        """Halo and list from ``build_positions`` (the owned atoms' positions at the build)."""
        d = self.decomp
        cell = np.array(state.cell, dtype=np.float64)
        frac, wrap = d.wrap(build_positions)
        self.halo = Halo(self.comm, d)
        payload = np.column_stack([state.types.astype(np.float64), state.ids.astype(np.float64)])
        data = self.halo.build(frac, self.halo_width, payload)
        n, n_total = len(frac), self.halo.n_total
        positions = np.zeros((n_total, 3))
        positions[:n] = build_positions + wrap @ cell
        self.halo.forward(positions, cell)
        offsets, neighbors = find_pairs(positions, n, self.cutoff + self.skin)
        self.nl = NeighborList(n_local=n, positions=positions, image_of=np.arange(n_total, dtype=np.int64),
                               shifts=self.halo.shifts, offsets=offsets, neighbors=neighbors,
                               cutoff=self.cutoff, skin=self.skin, cell=cell, pbc=np.array(state.pbc),
                               wrap_shifts=wrap, reference_positions=np.array(build_positions, dtype=np.float64))
        self.types_all = np.ascontiguousarray(np.rint(data[:, 0]), dtype=np.int32)
        self.ids_all = np.rint(data[:, 1]).astype(np.int64)
        self.build_cell = cell
        if self.monte_carlo:
            # where the entries were at the build, for the Monte Carlo model of this list
            self.build_positions_all = positions.copy()
            self.build_reciprocal = d.reciprocal.copy()
        self.rebuilds += 1
        self.generation += 1

    def build(self, positions, cell, pbc, types) -> None:  # pragma: no cover - serial signature
        raise RuntimeError("DomainForceField is built from the state: use setup(state) / update(state)")

    def needs_rebuild(self, positions: np.ndarray, cell: np.ndarray) -> bool:
        local = 1.0 if super().needs_rebuild(positions, cell) else 0.0
        if self.comm.Get_size() == 1:
            return bool(local)
        return bool(self.comm.allreduce(local, op=max_op()) > 0.0)

    def update(self, state: Atoms) -> bool:
        """Rebuild (with migration) if needed, else refresh ghost positions. True if rebuilt."""
        import time
        t0 = time.perf_counter()
        if self.needs_rebuild(state.positions, state.cell):
            self._decompose(state.cell, state.pbc)
            self._migrate(state)
            self._build(state.positions, state)
            self.time["neighbor"] += time.perf_counter() - t0
            return True
        self._move(state.positions, state.cell)
        self.time["comm"] += time.perf_counter() - t0
        return False

    def _move(self, positions: np.ndarray, cell: np.ndarray) -> None:
        nl = self.nl
        cell = np.array(cell, dtype=np.float64)
        nl.cell = cell
        n = nl.n_local
        nl.positions[:n] = positions + nl.wrap_shifts @ cell
        self.halo.forward(nl.positions, cell)

    def restore_distributed(self, build_positions: np.ndarray, build_cell: np.ndarray, state: MDState,
                            per_atom: dict[str, np.ndarray], n_global: int | None = None) -> dict[str, np.ndarray]:
        """Continue from a checkpoint of which this rank holds a slice of rows (the state's
        per-atom arrays, ``build_positions`` and ``per_atom``; any slice, the whole file
        included): the atoms go to their owners according to the build positions, sorted by
        id; the list a run had is rebuilt and moved to the current positions. ``n_global``: the
        checkpoint's number of atoms (default: the sum of the slices). Returns ``per_atom`` for
        this rank's atoms."""
        self._decompose(np.asarray(build_cell), state.pbc)
        frac, _ = self.decomp.wrap(build_positions)
        names = [k for k, v in per_atom.items() if np.ndim(v) >= 1 and len(v) == state.n_atoms]
        carry = {"build_positions": np.asarray(build_positions, dtype=np.float64),
                 **{k: np.asarray(per_atom[k], dtype=np.float64) for k in names}}
        moved = self._send_to_owners(state, carry, self.decomp.owners(frac))
        state.comm = self.comm
        state.n_global = int(n_global) if n_global is not None else self._global_count(state)
        local_build = np.ascontiguousarray(moved.pop("build_positions"))
        saved_cell = state.cell
        state.cell = np.array(build_cell, dtype=np.float64)
        self._build(local_build, state)
        state.cell = saved_cell
        self.rebuilds -= 1
        self._move(state.positions, state.cell)
        out = dict(per_atom)
        for k in names:
            out[k] = np.ascontiguousarray(moved[k].reshape((state.n_atoms, *np.shape(per_atom[k])[1:])))
        return out

    # ------------------------------------------------------------------ layout (see ForceField)
    fold_timer = "comm"

    def spread(self, values: np.ndarray) -> np.ndarray:
        """Per-atom values of the owned atoms → values of owned atoms and ghosts (forward
        communication)."""
        out = np.zeros(self.nl.n_total)
        out[:self.nl.n_local] = values
        self.halo.forward(out)
        return out

    def fold(self, per_entry: np.ndarray) -> np.ndarray:
        """Ghost contributions sent back and added to their owners (reverse communication)."""
        self.halo.reverse(per_entry)
        return per_entry[:self.nl.n_local]

    def reduce(self, value: np.ndarray) -> np.ndarray:
        return allreduce_sum(self.comm, value)

    def max_over_ranks(self, value: tuple) -> tuple:
        return max(self.comm.allgather(value))

    def param_gradients(self, state: Atoms) -> dict:
        return self.engine.param_gradients_on_list(self.nl, self.types_all, self.spread(state.magmoms),
                                                   symmetric=self.symmetric)

    def monte_carlo_layout(self, state: MDState, evaluation: Evaluation,
                           previous=None) -> "DomainSweepLayout":
        """Parallel Monte Carlo by sectors (migrates the atoms first where needed):
        :class:`DomainSweepLayout`; ``previous``: the model of the previous sweep, kept while the
        list lives."""
        if not self.monte_carlo:
            raise RuntimeError("parallel Monte Carlo needs a force field built with monte_carlo=True "
                               "(subdomains of four cutoffs; the ghost centres' rows from their owners)")
        return DomainSweepLayout(self, state, evaluation, previous)

    # ------------------------------------------------------------------ gathering
    def gather(self, state: Atoms, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Per-atom arrays of all ranks on rank 0, in global id order (None on other ranks)."""
        names = list(columns)
        widths = [int(np.prod(np.shape(columns[k])[1:])) for k in names]
        rows = np.concatenate([np.asarray(columns[k], dtype=np.float64).reshape(state.n_atoms, w)
                               for k, w in zip(names, widths, strict=True)], axis=1) if names else \
            np.zeros((state.n_atoms, 0))
        table = gather_rows(self.comm, state.ids, rows)
        if table is None:
            return None
        out, c = {}, 0
        for k, w in zip(names, widths, strict=True):
            shape = np.shape(columns[k])[1:]
            out[k] = table[:, c:c + w].reshape((len(table), *shape))
            c += w
        return out


def evaluate_distributed(engine, cfg, comm, magmoms: np.ndarray | None = None, symmetric: bool | None = None,
                         grid: list[int] | None = None) -> dict | None:
    """Energy, site energies, forces, virial, stress and ∂E/∂m of ``cfg`` computed
    domain-decomposed over ``comm`` (the force field on an :class:`AtomSet`, no MD); every
    rank passes the whole configuration, rank 0 gets the results (in the configuration's atom
    order), the others None."""
    from mmtp_hpc.potentials.mtp.engine import EV_PER_A3_TO_GPA

    atoms = AtomSet.from_configuration(cfg, engine.check_configuration(cfg, magmoms))
    n = atoms.n_atoms
    ff = DomainForceField(engine, comm, symmetric=symmetric, skin=0.0, grid=grid)
    ff.setup(atoms)
    ev = ff.evaluate(atoms)
    table = ff.gather(atoms, {"site_energies": ev.site_energies, "forces": ev.forces,
                              "magnetic_gradient": ev.magnetic_gradient})
    if table is None:
        return None
    volume = cfg.volume
    out = {"energy": ev.energy, "site_energies": table["site_energies"].reshape(n),
           "forces": table["forces"], "magnetic_gradient": table["magnetic_gradient"].reshape(n),
           "virial": ev.virial,
           "stress": (-ev.virial / volume * EV_PER_A3_TO_GPA) if volume > 0 else np.full((3, 3), np.nan),
           "decomposition": ff.decomp.describe()}
    return out


# --------------------------------------------------------------------------- parallel Monte Carlo
class DomainSiteModel(NativeMetropolis):
    """The MC :class:`~mmtp_hpc.dynamics.moments.SiteModel` of one rank, for one generation of the
    force field's list: centres are the owned atoms and the ghosts that can come within one
    cutoff of an owned atom while the list lives (each atom once); a moment change is written
    to every entry of that atom.

    Built once per list (:meth:`for_step` reuses it while ``ff.generation`` holds): the centres,
    their pairs within cutoff + skin at the list's build positions, the atom → entry maps and
    the row exchange with the ghost centres' owners. Every atom stays within half the skin of
    its build position while the list is valid, so a pair inside the cutoff at any step of the
    generation is in these pairs, and a ghost within a cutoff of an owned atom (which may have
    left the subdomain by half the skin) was within cutoff + skin of the subdomain at the build.
    :meth:`start_step` takes the step's positions and moments; the kernels count only pairs
    inside the cutoff at those positions."""

    def __init__(self, ff: DomainForceField, state: MDState):
        nl, d = ff.nl, ff.decomp
        n = nl.n_local
        self.ff = ff
        self.generation = ff.generation
        build = ff.build_positions_all
        frac = build @ ff.build_reciprocal.T
        reach = (ff.cutoff + ff.skin) * np.linalg.norm(ff.build_reciprocal, axis=1) + 1e-9
        lo = np.where(d.pbc, d.lo - reach, -np.inf)
        hi = np.where(d.pbc, d.hi + reach, np.inf)
        inner = np.all((frac >= lo) & (frac < hi), axis=1)
        ids_all = ff.ids_all
        candidates = np.flatnonzero(inner[n:]) + n
        candidates = candidates[~np.isin(ids_all[candidates], state.ids)]
        # each atom's centre entry: the image without a periodic shift along the directions
        # that are not split (inside the cell there, as the owned atoms are), so that every
        # owned atom it sees inside the cutoff has its image within one cutoff (plus the skin
        # the atoms may move) of the cell and hence in the plain halo
        shifted = np.any(nl.shifts[candidates][:, d.grid == 1] != 0, axis=1)
        by = np.lexsort((shifted, ids_all[candidates]))
        _, first = np.unique(ids_all[candidates][by], return_index=True)
        ghost_centres = np.sort(candidates[by[first]])
        rest = np.setdiff1d(np.arange(n, nl.n_total), ghost_centres, assume_unique=True)
        self.order = np.concatenate([np.arange(n), ghost_centres, rest]).astype(np.int64)
        self.n_centres = n + len(ghost_centres)
        offsets, neighbors = find_pairs(np.ascontiguousarray(build[self.order]), self.n_centres,
                                        ff.cutoff + ff.skin)
        m = len(self.order)
        positions = np.ascontiguousarray(nl.positions[self.order])
        self.nl = NeighborList(n_local=self.n_centres, positions=positions, image_of=np.arange(m, dtype=np.int64),
                               shifts=np.zeros((m, 3), dtype=np.int64), offsets=offsets, neighbors=neighbors,
                               cutoff=ff.cutoff, skin=ff.skin, cell=nl.cell, pbc=nl.pbc,
                               wrap_shifts=np.zeros((self.n_centres, 3), dtype=np.int64),
                               reference_positions=np.ascontiguousarray(build[self.order[:self.n_centres]]))
        self.types = np.ascontiguousarray(ff.types_all[self.order], dtype=np.int32)
        ids = ids_all[self.order]
        # entries that are (images of) owned atoms, grouped by owned index
        own = np.isin(ids, state.ids)
        owner = np.full(m, -1, dtype=np.int64)
        owner[own] = np.searchsorted(state.ids, ids[own])
        self.entry_owner = owner
        entries = np.flatnonzero(own)
        srt = np.argsort(owner[entries], kind="stable")
        self.image_entries = entries[srt]
        self.image_offsets = np.concatenate([[0], np.cumsum(np.bincount(owner[entries], minlength=n))])
        self.engine, self.symmetric = ff.engine, bool(ff.symmetric)
        self.n_owned = n
        self.owned_ids = np.array(state.ids, dtype=np.int64)
        # the kernels or the Python loop as the force field chose when it sized its halo (the
        # kernels' plain halo does not hold the ghost centres' neighbourhoods the loop needs)
        self.native = ff.kernel_sweeps
        self._native_setup()
        self.site_en = np.zeros(self.n_centres)
        # the ghost centres' rows come from their owners (by id): their basic moments from the
        # owners' force evaluation, and after each sector the owners' refreshed rows
        self.exchange = (RowExchange(ff.comm, state.ids, ids[n:self.n_centres])
                         if self._cache is not None else None)

    @classmethod
    def for_step(cls, ff: DomainForceField, state: MDState, basic: np.ndarray | None,
                 previous: "DomainSiteModel | None" = None,
                 site_energies: np.ndarray | None = None,
                 mag_all: np.ndarray | None = None) -> "DomainSiteModel":
        """The model of this step: ``previous`` where it belongs to the force field's current
        list (and the same owned atoms), else a new one; then :meth:`start_step`."""
        keep = (isinstance(previous, cls) and previous.ff is ff and previous.generation == ff.generation
                and np.array_equal(previous.owned_ids, state.ids))
        model = previous if keep else cls(ff, state)
        model.start_step(state, basic, site_energies, mag_all)
        return model

    def start_step(self, state: MDState, basic: np.ndarray | None = None,
                   site_energies: np.ndarray | None = None, mag_all: np.ndarray | None = None) -> None:
        """The step's positions (the force field's list, moved) and moments; the centres each
        atom affects at these positions; the caches seeded from ``basic`` and ``site_energies``
        (the owned atoms' basic moments and energies of the step's force evaluation; an energy
        pass where they are missing), the ghost centres' from their owners (collective).
        ``mag_all``: the list entries' moments of that evaluation (spread again when None)."""
        ff, n = self.ff, self.n_owned
        np.take(ff.nl.positions, self.order, axis=0, out=self.nl.positions)
        self.nl.cell = ff.nl.cell
        # centres whose energy depends on owned atom i: those with an image of i as neighbour
        # inside the cutoff, and i
        self.affected_centres, self.affected_offsets, self._pairs = ff.engine.metropolis_maps(
            self.nl, self.entry_owner, n)
        self.maps = {"entry_owner": self.entry_owner, "image_entries": self.image_entries,
                     "image_offsets": self.image_offsets, "affected_centres": self.affected_centres,
                     "affected_offsets": self.affected_offsets}
        self._reset_native()
        spread = ff.spread(state.magmoms) if mag_all is None else mag_all
        self.mag = np.ascontiguousarray(spread[self.order])
        self._touched = np.zeros(self.n_centres, dtype=np.uint8)   # what a sector's moves change
        if self._cache is not None:
            if basic is None or basic.shape != (n, self._cache.shape[1]) or site_energies is None:
                # no rows handed over (not asked for, or another list): the owned centres' from
                # an energy pass on the force field's list (the ghost centres' never are
                # computed here: their neighbourhoods may lie beyond the halo)
                basic = ff._basic_buffer(n)
                site_energies = ff.engine.compute_local(ff.nl, ff.types_all, spread, derivatives=False,
                                                        symmetric=ff.symmetric, basic_out=basic).site_energies
            # the owned centres' rows and energies from the step's force evaluation (carried
            # through the migration), the ghost centres' from their owners: no pass over neighbours
            self._cache[:n] = basic
            self.site_en[:n] = site_energies
            self.exchange.fetch(basic, out=self._cache[n:self.n_centres])
            self.exchange.fetch(np.reshape(site_energies, (n, 1)), out=self.site_en[n:self.n_centres].reshape(-1, 1))
            self._init = 0

    def refresh(self, magmoms: np.ndarray, ghosts: bool = True) -> None:
        """After the moves of a sector (collective): every centre's row and energy up to date.

        With the caches current (the usual case) nothing is recomputed. A centre changes in a
        sector by the moves of one rank only (same-sector moves of different ranks are more than
        two cutoffs apart), and that rank holds it, as an owned or a ghost centre, with its row
        and energy updated by its accepted moves (the kernels mark them). So (``ghosts``) each
        rank sends the rows and energies of the centres its moves changed straight to every
        other rank that holds them, the owner and the other ranks with it as a ghost centre
        (:meth:`RowExchange.share_changed`: one exchange), and the entries take the other ranks'
        moments (forward communication). Without ``ghosts`` (the end of the sweep) only the
        ghost centres' energies go back to their owners: the rows and entries are then stale
        until the next :meth:`start_step`. Without a kernel cache (the Python loop) the entries
        take the moments."""
        n, nc = self.n_owned, self.n_centres
        if self._cache is not None and self._init == 0:
            touched = self._touched
            if ghosts:
                self.exchange.share_changed(touched[:nc].view(bool), [self._cache[:nc], self.site_en[:nc]])
                self.mag = np.ascontiguousarray(self.ff.spread(magmoms)[self.order])
            else:
                # the end of the sweep: the owned centres' energies only (the rows and the entries'
                # moments are not used again: the next step's start_step seeds them afresh)
                ghost = np.flatnonzero(touched[n:nc])
                at, rows = self.exchange.send_back(ghost, self.site_en[n + ghost])
                self.site_en[at] = rows[:, 0]
            touched[:] = 0
            return
        self.mag = np.ascontiguousarray(self.ff.spread(magmoms)[self.order])

    def all_site_energies(self) -> np.ndarray:
        """Site energies of every centre (owned and ghost), up to date: the array the kernels'
        moves then keep up to date in place."""
        if self._cache is None:
            return self.site_energies(np.arange(self.n_centres, dtype=np.int64))
        if self._init:
            self.update_site_energies(self.site_en)
        return self.site_en

    def affected(self, i: int) -> np.ndarray:
        return self.affected_centres[self.affected_offsets[i]:self.affected_offsets[i + 1]]

    def set_moment(self, i: int, value: float) -> None:
        self.mag[self.image_entries[self.image_offsets[i]:self.image_offsets[i + 1]]] = value
        self._init = 1

    def site_energies(self, centers: np.ndarray) -> np.ndarray:
        # symmetrised potentials: ½[E_k(M) + E_k(−M)] (one pass for symmetric intervals)
        return self.ff.engine.site_energies_of(self.nl, self.types, self.mag, centers,
                                               symmetric=self.ff.symmetric)


class DomainSweepLayout:
    """The MC layout of one rank of a domain-decomposed run: Metropolis moves on all ranks at
    once, by sectors (spec §6).

    Atoms migrate first so that every rank's atoms lie inside its subdomain (not needed, and
    skipped, where the step's list is valid and half a subdomain is at least two cutoffs plus the
    skin: :meth:`DomainForceField.sectors_hold`). Each subdomain
    is halved along every direction that has two or more ranks; in phase b (a bit per such
    direction) every rank moves the atoms of its half b, so simultaneous moves on
    different ranks are at least half a subdomain (≥ 2 cutoffs, checked when the grid is
    chosen) apart and never change a site energy the other rank uses. Between phases the
    moved moments reach the ghosts (forward communication) and the centres' site energies
    are recomputed. Each move is a Metropolis step with the per-atom random numbers of the
    serial code (keyed by atom id and step), so detailed balance holds move by move; the
    order of moves follows the sectors, so MC trajectories on different rank counts are
    statistically equivalent, not identical.
    """

    def __init__(self, ff: DomainForceField, state: MDState, evaluation: Evaluation,
                 previous: DomainSiteModel | None = None):
        basic = (evaluation.basic[1] if evaluation.basic is not None and evaluation.basic[0] == ff.generation
                 else None)                       # the owned centres' basic moments, this list
        mag_all = evaluation.entry_moments if basic is not None else None
        evaluation.basic = evaluation.entry_moments = None
        # atoms migrate first, unless the sectors keep their separation on the step's list
        self.migrated = not ff.sectors_hold()
        if self.migrated:
            fields = {"forces": evaluation.forces, "site_energies": evaluation.site_energies,
                      "magnetic_gradient": evaluation.magnetic_gradient}
            if basic is not None:
                fields["basic"] = basic           # the basic moments travel with their atoms
            carry = ff.rebuild_now(state, fields)
            evaluation.forces = carry["forces"]
            evaluation.site_energies = carry["site_energies"].reshape(-1)
            evaluation.magnetic_gradient = carry["magnetic_gradient"].reshape(-1)
            basic = carry.get("basic")
            mag_all = None                        # new entries: spread again
        self.ff = ff
        d = ff.decomp
        self.model = DomainSiteModel.for_step(ff, state, basic, previous, evaluation.site_energies, mag_all)
        n = state.n_atoms
        split = np.flatnonzero(d.grid > 1)
        half = np.floor((d.fractional(ff.nl.positions[:n]) - d.lo) * d.grid * 2.0).astype(np.int64)
        half = np.clip(half, 0, 1)
        sector = np.zeros(n, dtype=np.int64)
        for bit, axis in enumerate(split):
            sector += half[:, axis] << bit
        self.sectors = [np.flatnonzero(sector == phase) for phase in range(1 << len(split))]

    def site_energies(self, magmoms: np.ndarray, first: bool) -> np.ndarray:
        """Site energies of every centre (owned and ghost) after the previous sector's moves."""
        if not first:
            self.model.refresh(magmoms)
        return self.model.all_site_energies()

    def finish(self, state: MDState, evaluation: Evaluation) -> float:
        """The owned atoms' site energies after the last sector (the other ranks' last moves
        reach the ghosts first) and the total energy."""
        if self.model._cache is None:
            after = self.ff.evaluate(state, derivatives=False)
            evaluation.site_energies = after.site_energies
            return after.energy
        self.model.refresh(state.magmoms, ghosts=False)
        site = self.model.all_site_energies()[:state.n_atoms].copy()
        evaluation.site_energies = site
        return float(self.ff.reduce(np.array([site.sum()]))[0])

