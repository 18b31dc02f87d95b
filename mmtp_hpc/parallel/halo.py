"""Ghost atoms of a subdomain: building the halo, forward and reverse communication, migration.

Entries of the local arrays are this rank's owned atoms ``0 .. n_local-1`` followed by
ghosts. Ghosts are fetched in the staged scheme of LAMMPS (``Comm::borders``): along x,
then y, then z, each rank sends the entries (owned atoms *and* the ghosts received along
earlier directions, which brings edges and corners) within the halo of its lower face
to the lower neighbour and those within the halo of its upper face to the upper
neighbour. A message that crosses the periodic boundary carries a lattice shift. With a
single rank along a direction the "neighbour" is the rank itself, and as many periodic
layers as the halo needs are copied locally, so cells thinner than the cutoff work too.

Every swap is recorded (entries sent, shift, where the received block starts), so that

- :meth:`Halo.forward` replays the swaps in order with current values (positions get
  ``+ shift @ cell`` with the *current* cell, so NPT cell changes are followed);
- :meth:`Halo.reverse` replays them backwards and adds the values computed on ghosts
  (forces, ∂E/∂m) to the entries they were copied from, which ends on the owners.

Messages are buffer-based ``Sendrecv`` calls on contiguous float64 arrays (CONVENTIONS 3).
:func:`migrate` moves atoms (with all their per-atom data) to their new owners at a
rebuild; :func:`gather_chunks` streams per-atom rows to the root in global id order, in
chunks of a bounded number of atoms (what trajectories and checkpoints are written from);
:func:`gather_rows` joins them into one table.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mmtp_hpc.parallel.decomposition import Decomposition

_TAG_COUNT, _TAG_DATA = 101, 102


@dataclass
class Swap:
    """One message of the halo: ``send_idx`` entries go to ``send_to`` (shifted by ``shift``
    lattice vectors); ``recv_count`` entries arrive from ``recv_from`` at ``recv_start``."""

    axis: int
    send_to: int
    recv_from: int
    send_idx: np.ndarray
    shift: np.ndarray
    recv_start: int
    recv_count: int

    @property
    def local(self) -> bool:
        return self.send_to == -1


class Halo:
    """The ghost layer of one rank for one neighbour-list build."""

    def __init__(self, comm, decomposition: Decomposition):
        self.comm = comm
        self.decomp = decomposition
        self.rank = comm.Get_rank()
        self.swaps: list[Swap] = []
        self.n_local = 0
        self.n_total = 0
        self.shifts = np.zeros((0, 3), dtype=np.int64)

    # ------------------------------------------------------------------ build
    def build(self, frac_local: np.ndarray, width: float, payload: np.ndarray) -> np.ndarray:
        """Create the ghost layer of ``width`` Å around this subdomain.

        ``frac_local`` (n, 3): wrapped fractional coordinates of the owned atoms (inside the
        subdomain); ``payload`` (n, k) float64: per-atom data copied to the ghosts once (e.g.
        types and ids). Returns the payload of all entries (n_total, k); ``self.shifts``
        (n_total, 3) is each entry's lattice shift relative to its owner's wrapped position.
        """
        d = self.decomp
        delta = d.halo_fraction(width)
        frac = np.ascontiguousarray(frac_local, dtype=np.float64)
        data = np.ascontiguousarray(payload, dtype=np.float64).reshape(len(frac), -1)
        shifts = np.zeros((len(frac), 3), dtype=np.int64)
        self.n_local = len(frac)
        self.swaps = []
        for axis in range(3):
            p = int(d.grid[axis])
            if not d.pbc[axis]:
                continue
            n_before = len(frac)
            s = frac[:n_before, axis]
            blocks = []
            if p == 1:
                layers = int(math.ceil(delta[axis]))
                for n in range(1, layers + 1):
                    for sign in (+1, -1):
                        idx = np.flatnonzero(s < 1.0 + delta[axis] - n) if sign > 0 else \
                            np.flatnonzero(s >= n - delta[axis])
                        shift = np.zeros(3, dtype=np.int64)
                        shift[axis] = sign * n
                        blocks.append((-1, -1, idx, shift))
            else:
                lo, hi = d.lo[axis], d.hi[axis]
                down, up = d.neighbor(axis, -1), d.neighbor(axis, +1)
                shift_down = np.zeros(3, dtype=np.int64)
                shift_up = np.zeros(3, dtype=np.int64)
                if d.coords[axis] == 0:
                    shift_down[axis] = 1        # they see our lower face across the boundary
                if d.coords[axis] == p - 1:
                    shift_up[axis] = -1
                blocks.append((down, up, np.flatnonzero(s < lo + delta[axis]), shift_down))
                blocks.append((up, down, np.flatnonzero(s >= hi - delta[axis]), shift_up))
            for send_to, recv_from, idx, shift in blocks:
                idx = idx.astype(np.int64)
                send_frac = frac[idx] + shift
                send = np.concatenate([send_frac, data[idx], (shifts[idx] + shift).astype(np.float64)], axis=1)
                recv = self._exchange_build(send, send_to, recv_from)
                k = data.shape[1]
                self.swaps.append(Swap(axis, send_to, recv_from, idx, shift, len(frac), len(recv)))
                frac = np.concatenate([frac, recv[:, :3]])
                data = np.concatenate([data, recv[:, 3:3 + k]])
                shifts = np.concatenate([shifts, np.rint(recv[:, 3 + k:]).astype(np.int64)])
        self.n_total = len(frac)
        self.shifts = shifts
        return data

    def _exchange_build(self, send: np.ndarray, send_to: int, recv_from: int) -> np.ndarray:
        if send_to == -1:
            return send.copy()
        width = send.shape[1]
        count = np.array([len(send)], dtype=np.int64)
        other = np.zeros(1, dtype=np.int64)
        self.comm.Sendrecv(count, dest=send_to, sendtag=_TAG_COUNT, recvbuf=other, source=recv_from,
                           recvtag=_TAG_COUNT)
        recv = np.empty((int(other[0]), width), dtype=np.float64)
        self.comm.Sendrecv(np.ascontiguousarray(send), dest=send_to, sendtag=_TAG_DATA, recvbuf=recv,
                           source=recv_from, recvtag=_TAG_DATA)
        return recv

    # ------------------------------------------------------------------ communication
    def forward(self, values: np.ndarray, cell: np.ndarray | None = None) -> None:
        """Fill the ghost rows of ``values`` (n_total, ...) from their owners, in place.

        With ``cell`` the values are positions and each swap adds ``shift @ cell``."""
        flat = values.reshape(len(values), -1)
        for sw in self.swaps:
            send = flat[sw.send_idx]
            if cell is not None and sw.shift.any():
                send = send + sw.shift @ cell
            target = flat[sw.recv_start:sw.recv_start + sw.recv_count]
            if sw.local:
                target[...] = send
            else:
                recv = np.empty_like(target)
                self.comm.Sendrecv(np.ascontiguousarray(send), dest=sw.send_to, sendtag=_TAG_DATA,
                                   recvbuf=recv, source=sw.recv_from, recvtag=_TAG_DATA)
                target[...] = recv

    def reverse(self, values: np.ndarray) -> None:
        """Add the ghost rows of ``values`` to the entries they were copied from (last swap
        first), in place; afterwards the owned rows hold the totals."""
        flat = values.reshape(len(values), -1)
        for sw in reversed(self.swaps):
            block = flat[sw.recv_start:sw.recv_start + sw.recv_count]
            if sw.local:
                flat[sw.send_idx] += block      # send_idx is unique within a swap
            else:
                back = np.empty((len(sw.send_idx), flat.shape[1]), dtype=np.float64)
                self.comm.Sendrecv(np.ascontiguousarray(block), dest=sw.recv_from, sendtag=_TAG_DATA,
                                   recvbuf=back, source=sw.send_to, recvtag=_TAG_DATA)
                flat[sw.send_idx] += back


class RowExchange:
    """Rows of atoms that other ranks own, fetched by atom id: each rank names the ids it wants
    (``wanted``) and the ids of its owned rows (``owned_ids``); :meth:`fetch` then hands every rank
    the owners' rows of its wanted ids, in the order of ``wanted``, with one ``Alltoallv``. Set
    up with one ``allgather`` of the wanted ids and one ``Alltoallv`` of positions. Every wanted
    id must be owned by exactly one other rank (else ValueError on the rank that wants it).

    The parallel Monte Carlo takes the basic moments of its ghost centres from their owners'
    force evaluation this way, instead of recomputing them from the neighbours."""

    def __init__(self, comm, owned_ids: np.ndarray, wanted: np.ndarray):
        self.comm = comm
        size, rank = comm.Get_size(), comm.Get_rank()
        owned_ids = np.asarray(owned_ids, dtype=np.int64)
        by_id = np.argsort(owned_ids, kind="stable")
        owned_ids = owned_ids[by_id]
        wanted = np.asarray(wanted, dtype=np.int64)
        self.n_wanted = len(wanted)
        self.n_owned = len(owned_ids)
        self._route_csr = None
        everyone = comm.allgather(wanted) if size > 1 else [wanted]
        send_idx, send_pos = [], []
        for r in range(size):
            want = np.asarray(everyone[r], dtype=np.int64)
            if r == rank or len(owned_ids) == 0 or len(want) == 0:
                send_idx.append(np.zeros(0, dtype=np.int64))
                send_pos.append(np.zeros(0, dtype=np.int64))
                continue
            at = np.minimum(np.searchsorted(owned_ids, want), len(owned_ids) - 1)
            mine = np.flatnonzero(owned_ids[at] == want)
            send_idx.append(by_id[at[mine]])
            send_pos.append(mine)
        self.send_idx = np.concatenate(send_idx) if send_idx else np.zeros(0, dtype=np.int64)
        self.send_counts = np.array([len(x) for x in send_idx], dtype=np.int64)
        self.send_pos = np.concatenate(send_pos) if send_pos else np.zeros(0, dtype=np.int64)
        self.send_rank = np.repeat(np.arange(size, dtype=np.int64), self.send_counts)
        # each wanted row's owner (rank, index into its owned rows): for send_back
        if size > 1:
            from mpi4py import MPI
            self.recv_counts = np.empty(size, dtype=np.int64)
            comm.Alltoall(self.send_counts, self.recv_counts)
            pairs = np.empty((int(self.recv_counts.sum()), 2), dtype=np.int64)
            out = np.stack([self.send_pos, self.send_idx], axis=1) if len(self.send_idx) else \
                np.zeros((0, 2), dtype=np.int64)
            comm.Alltoallv([np.ascontiguousarray(out), (self.send_counts * 2, _displ(self.send_counts) * 2),
                            MPI.INT64_T],
                           [pairs, (self.recv_counts * 2, _displ(self.recv_counts) * 2), MPI.INT64_T])
            pos = pairs[:, 0]
            self.owner_rank = np.full(self.n_wanted, -1, dtype=np.int64)
            self.owner_index = np.full(self.n_wanted, -1, dtype=np.int64)
            self.owner_rank[pos] = np.repeat(np.arange(size, dtype=np.int64), self.recv_counts)
            self.owner_index[pos] = pairs[:, 1]
        else:
            self.recv_counts = np.zeros(1, dtype=np.int64)
            pos = np.zeros(0, dtype=np.int64)
            self.owner_rank = self.owner_index = np.zeros(0, dtype=np.int64)
        self.recv_pos = pos
        found = np.bincount(pos, minlength=self.n_wanted) if len(pos) else np.zeros(self.n_wanted, dtype=np.int64)
        if self.n_wanted and not np.all(found == 1):
            missing = wanted[found != 1]
            raise ValueError(f"rank {rank}: {len(missing)} wanted atom(s) not owned by exactly one other "
                             f"rank (ids {missing[:5].tolist()} ...)")

    def fetch(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The rows (n_wanted, k) of the wanted atoms from ``rows`` (n_owned, k) float64 of every
        rank's owned atoms (collective), into ``out`` if given."""
        rows = np.asarray(rows, dtype=np.float64)
        k = rows.shape[1]
        result = np.empty((self.n_wanted, k)) if out is None else out
        if self.comm.Get_size() == 1:
            return result
        from mpi4py import MPI
        send = np.ascontiguousarray(rows[self.send_idx])
        recv = np.empty((len(self.recv_pos), k))
        self.comm.Alltoallv([send, (self.send_counts * k, _displ(self.send_counts) * k), MPI.DOUBLE],
                            [recv, (self.recv_counts * k, _displ(self.recv_counts) * k), MPI.DOUBLE])
        result[self.recv_pos] = recv
        return result

    def _routes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every copy of every row, for :meth:`share_changed` (collective on first use; kept):
        CSR over the local rows (owned, then wanted) of (rank, index) of each copy on another
        rank, the index in that rank's local rows (owned, then wanted). An owned row's copies
        are those its wanters hold; a wanted row's are its owner's row and the other wanters'
        copies, which the owner tells each wanter once."""
        if self._route_csr is not None:
            return self._route_csr
        comm = self.comm
        n_owned = self.n_owned
        n_all = np.array(comm.allgather(n_owned), dtype=np.int64)
        # the copies of owned row i: each wanter's position (send_idx/send_rank/send_pos)
        dest_of_owned = n_all[self.send_rank] + self.send_pos
        by_row = np.argsort(self.send_idx, kind="stable")
        rows_sorted = self.send_idx[by_row]
        first = np.searchsorted(rows_sorted, rows_sorted, side="left")
        last = np.searchsorted(rows_sorted, rows_sorted, side="right")
        # tell every wanter of row i where the other wanters hold it: (its position, rank, index)
        reps = last - first - 1                       # the other wanters of each (row, wanter)
        src = np.repeat(np.arange(len(by_row)), reps)
        k = np.arange(len(src)) - np.repeat(np.cumsum(reps) - reps, reps)   # 0 .. reps − 1
        other = first[src] + k
        other = other + (other >= np.arange(len(by_row))[src])              # skip the wanter itself
        to = self.send_rank[by_row][src]
        msg = np.stack([self.send_pos[by_row][src], self.send_rank[by_row][other],
                        dest_of_owned[by_row][other]], axis=1) if len(src) else np.zeros((0, 3), dtype=np.int64)
        recv = migrate(comm, to, msg.astype(np.float64)).astype(np.int64)   # exact (< 2**53)
        # local rows: owned i → (wanter rank, its index); wanted p → (owner, owned index) and
        # the other wanters' copies
        row = np.concatenate([self.send_idx, n_owned + np.arange(self.n_wanted), n_owned + recv[:, 0]])
        dest_rank = np.concatenate([self.send_rank, self.owner_rank, recv[:, 1]])
        dest_index = np.concatenate([dest_of_owned, self.owner_index, recv[:, 2]])
        order = np.argsort(row, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n_owned + self.n_wanted))])
        self._route_csr = (offsets.astype(np.int64), dest_rank[order], dest_index[order])
        return self._route_csr

    def share_changed(self, changed: np.ndarray, arrays: list[np.ndarray]) -> np.ndarray:
        """Every changed local row (owned, then wanted: ``changed`` (n_owned + n_wanted,)) of
        ``arrays`` (n_owned + n_wanted, k_i) or (n_owned + n_wanted,) float64 goes to every
        other copy of it (the owner's row and the other wanters'), written there in place, in
        one ``Alltoall`` of counts and one ``Alltoallv`` (collective). A row may change on one
        rank only: one that comes in changed here too is an error (ValueError). Returns the
        local rows that came in.

        The parallel Monte Carlo shares the rows and energies of the centres a sector's moves
        changed this way: each straight from the rank whose moves changed it."""
        changed = np.asarray(changed, dtype=bool)
        if self.comm.Get_size() == 1:
            return np.zeros(0, dtype=np.int64)
        offsets, dest_rank, dest_index = self._routes()
        sel = np.flatnonzero(changed)
        cnt = offsets[sel + 1] - offsets[sel]
        at = np.repeat(offsets[sel] - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
        src = np.repeat(sel, cnt)
        by_dest = np.argsort(dest_rank[at], kind="stable")     # packed by destination: no re-sort
        at, src = at[by_dest], src[by_dest]
        widths = [1 if a.ndim == 1 else a.shape[1] for a in arrays]
        send = np.empty((len(at), 1 + sum(widths)))
        send[:, 0] = dest_index[at]                    # exact as float64 (< 2**53)
        c = 1
        for a, w in zip(arrays, widths, strict=True):
            send[:, c:c + w] = a[src].reshape(-1, w)
            c += w
        recv = migrate(self.comm, dest_rank[at], send)
        got = recv[:, 0].astype(np.int64)
        if np.any(changed[got]):
            raise ValueError(f"rank {self.comm.Get_rank()}: {int(np.count_nonzero(changed[got]))} row(s) "
                             "changed on two ranks at once")
        c = 1
        for a, w in zip(arrays, widths, strict=True):
            if a.ndim == 1:
                a[got] = recv[:, c]
            else:
                a[got] = recv[:, c:c + w]
            c += w
        return got

    def send_back(self, positions: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The reverse of :meth:`fetch`, sparse: the rows (len(positions), k) of the wanted atoms
        at ``positions`` (indices into ``wanted``) go to their owners (collective). Returns what
        this rank receives: (indices into its owned rows, rows (m, k)), by source rank.

        The parallel Monte Carlo sends its ghost centres' rows that its moves changed back to
        their owners this way, instead of the owners recomputing those pair terms."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.float64)
        rows = rows.reshape(-1, 1) if rows.ndim == 1 else rows
        k = rows.shape[1]
        size = self.comm.Get_size()
        if size == 1:
            return np.zeros(0, dtype=np.int64), np.zeros((0, k))
        send = np.empty((len(positions), k + 1))
        send[:, 0] = self.owner_index[positions]      # exact as float64 (< 2**53)
        send[:, 1:] = rows
        recv = migrate(self.comm, self.owner_rank[positions], send)
        return recv[:, 0].astype(np.int64), recv[:, 1:]


def _displ(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


# --------------------------------------------------------------------------- migration / gathering
def migrate(comm, owners: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Send each row of ``rows`` (n, k) float64 to rank ``owners[i]``; returns the rows this rank
    now owns (in the order: by source rank, then original order)."""
    size = comm.Get_size()
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    if size == 1:
        return rows.copy()
    k = rows.shape[1]
    owners = np.asarray(owners, dtype=np.int64)
    counts = np.bincount(owners, minlength=size).astype(np.int64)
    recv_counts = np.empty(size, dtype=np.int64)
    comm.Alltoall(counts, recv_counts)
    # rows already grouped by owner (callers that pack in that order) go as they are
    send = rows if np.all(owners[1:] >= owners[:-1]) else np.ascontiguousarray(rows[np.argsort(owners, kind="stable")])
    recv = np.empty((int(recv_counts.sum()), k), dtype=np.float64)
    from mpi4py import MPI
    comm.Alltoallv([send, (counts * k, _displ(counts) * k), MPI.DOUBLE],
                   [recv, (recv_counts * k, _displ(recv_counts) * k), MPI.DOUBLE])
    return recv


def scatter_rows(comm, owners: np.ndarray | None, rows: np.ndarray | None, width: int,
                 root: int = 0) -> np.ndarray:
    """Send the rows (n, width) float64 that ``root`` holds to ranks ``owners[i]`` (one
    ``Scatterv``; the other ranks pass None); returns the rows this rank receives, in root's order.
    Used to hand out a chunk of atoms read on one rank, so no rank holds more than a chunk."""
    size, rank = comm.Get_size(), comm.Get_rank()
    if size == 1:
        return np.ascontiguousarray(rows, dtype=np.float64).reshape(-1, width).copy()
    from mpi4py import MPI
    counts = send = None
    if rank == root:
        owners = np.asarray(owners, dtype=np.int64)
        order = np.argsort(owners, kind="stable")
        send = np.ascontiguousarray(np.asarray(rows, dtype=np.float64).reshape(-1, width)[order])
        counts = np.bincount(owners, minlength=size).astype(np.int64)
    mine = np.empty(1, dtype=np.int64)
    comm.Scatter(None if counts is None else [counts, MPI.INT64_T], [mine, MPI.INT64_T], root=root)
    recv = np.empty((int(mine[0]), width), dtype=np.float64)
    if rank == root:
        displ = np.concatenate([[0], np.cumsum(counts)[:-1]])
        comm.Scatterv([send, (counts * width, displ * width), MPI.DOUBLE], [recv, MPI.DOUBLE], root=root)
    else:
        comm.Scatterv(None, [recv, MPI.DOUBLE], root=root)
    return recv


def _as_rows(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n, k) float64 rows, also for n = 0 (a rank without atoms)."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    width = int(np.prod(rows.shape[1:], dtype=np.int64)) if rows.ndim > 1 else 1
    return rows.reshape(len(ids), width)


GATHER_CHUNK_ATOMS = 65536
"""Atoms per message of :func:`gather_chunks`: the root holds at most this many rows at a time."""


def gather_chunks(comm, ids: np.ndarray, rows: np.ndarray, chunk_atoms: int = GATHER_CHUNK_ATOMS,
                  root: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Stream all ranks' rows ``(n_r, k)`` to ``root`` in global id order, in bounded chunks.

    A generator every rank must run to the end (each chunk is a collective): on ``root`` it
    yields ``(first_row, table)``, ``table`` the next ≤ ``chunk_atoms`` rows in id order and
    ``first_row`` their position in the id-ordered whole (a Python int, so no count overflows);
    elsewhere it yields nothing. A chunk is the atoms with ids in ``[lo, lo + chunk_atoms)``,
    ``lo`` the smallest id not sent yet (ids are distinct, so a chunk never holds more), so
    neither the root nor any rank ever holds more than its own rows plus one chunk, and every
    message count is below ``chunk_atoms · (k + 1)`` (checked to fit MPI's int). Serially the
    rows come in slices of ``chunk_atoms`` in id order.
    """
    rows = _as_rows(ids, rows)
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    chunk_atoms = int(chunk_atoms)
    if chunk_atoms < 1:
        raise ValueError(f"chunk_atoms must be >= 1, got {chunk_atoms}")
    if comm.Get_size() == 1:
        for start in range(0, len(ids), chunk_atoms):
            yield start, rows[order[start:start + chunk_atoms]]
        return
    from mpi4py import MPI

    k = rows.shape[1]
    if chunk_atoms * (k + 1) >= 2 ** 31:
        raise ValueError(f"chunk of {chunk_atoms} rows of {k + 1} values overflows an MPI count")
    sorted_ids = ids[order]
    is_root = comm.Get_rank() == root
    none = np.iinfo(np.int64).max
    cursor, first_row = 0, 0
    lo = np.empty(1, dtype=np.int64)
    count = np.empty(1, dtype=np.int64)
    counts = np.empty(comm.Get_size(), dtype=np.int64) if is_root else None
    while True:
        comm.Allreduce(np.array([sorted_ids[cursor] if cursor < len(ids) else none], dtype=np.int64), lo,
                       op=MPI.MIN)
        if lo[0] == none:
            return
        end = int(np.searchsorted(sorted_ids, lo[0] + chunk_atoms, side="left"))
        block = np.empty((end - cursor, k + 1), dtype=np.float64)
        block[:, 0] = sorted_ids[cursor:end]
        block[:, 1:] = rows[order[cursor:end]]
        count[0] = end - cursor
        cursor = end
        comm.Gather(count, counts, root=root)
        if not is_root:
            comm.Gatherv(block.ravel(), None, root=root)
            continue
        sizes = counts * (k + 1)
        recv = np.empty(int(sizes.sum()), dtype=np.float64)
        displ = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        comm.Gatherv(block.ravel(), [recv, (sizes, displ), MPI.DOUBLE], root=root)
        table = recv.reshape(-1, k + 1)
        table = table[np.argsort(table[:, 0], kind="stable"), 1:]
        yield first_row, table
        first_row += len(table)


def gather_column_chunks(comm, ids: np.ndarray, columns: dict[str, np.ndarray],
                         chunk_atoms: int = GATHER_CHUNK_ATOMS, root: int = 0
                         ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """:func:`gather_chunks` of named per-atom arrays ``(n_r, …)``: yields ``(first_row, {name:
    rows})`` on ``root``, each array back in its trailing shape (and dtype for integers)."""
    n = len(ids)
    names = list(columns)
    shapes = {k: np.shape(columns[k])[1:] for k in names}
    widths = [int(np.prod(shapes[k], dtype=np.int64)) for k in names]
    rows = (np.concatenate([np.asarray(columns[k], dtype=np.float64).reshape(n, w)
                            for k, w in zip(names, widths, strict=True)], axis=1)
            if names else np.zeros((n, 0)))
    for start, table in gather_chunks(comm, ids, rows, chunk_atoms, root):
        out, c = {}, 0
        for name, w in zip(names, widths, strict=True):
            block = table[:, c:c + w].reshape((len(table), *shapes[name]))
            if np.issubdtype(np.asarray(columns[name]).dtype, np.integer):
                block = np.rint(block).astype(np.int64)
            out[name] = block
            c += w
        yield start, out


def gather_rows(comm, ids: np.ndarray, rows: np.ndarray, root: int = 0) -> np.ndarray | None:
    """All ranks' rows (n_r, k) on ``root``, sorted by global id; None elsewhere (the chunks of
    :func:`gather_chunks` joined, so no message count overflows)."""
    rows = _as_rows(ids, rows)
    if comm.Get_size() == 1:
        return rows[np.argsort(ids, kind="stable")]
    parts = [table for _, table in gather_chunks(comm, ids, rows, root=root)]
    if comm.Get_rank() != root:
        return None
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, rows.shape[1]))
