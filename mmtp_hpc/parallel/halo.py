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
rebuild; :func:`gather_rows` collects per-atom rows on the root in global id order.
"""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------- migration / gathering
def migrate(comm, owners: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Send each row of ``rows`` (n, k) float64 to rank ``owners[i]``; returns the rows this rank
    now owns (in the order: by source rank, then original order)."""
    size = comm.Get_size()
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    if size == 1:
        return rows.copy()
    k = rows.shape[1]
    order = np.argsort(owners, kind="stable")
    counts = np.bincount(owners, minlength=size).astype(np.int64)
    recv_counts = np.empty(size, dtype=np.int64)
    comm.Alltoall(counts, recv_counts)
    send = np.ascontiguousarray(rows[order])
    recv = np.empty((int(recv_counts.sum()), k), dtype=np.float64)
    send_displ = np.concatenate([[0], np.cumsum(counts)[:-1]]) * k
    recv_displ = np.concatenate([[0], np.cumsum(recv_counts)[:-1]]) * k
    from mpi4py import MPI
    comm.Alltoallv([send, (counts * k, send_displ), MPI.DOUBLE], [recv, (recv_counts * k, recv_displ), MPI.DOUBLE])
    return recv


def gather_rows(comm, ids: np.ndarray, rows: np.ndarray, root: int = 0) -> np.ndarray | None:
    """All ranks' rows (n_r, k) on ``root``, sorted by global id; None elsewhere."""
    rows = np.ascontiguousarray(rows, dtype=np.float64).reshape(len(ids), -1)
    if comm.Get_size() == 1:
        return rows[np.argsort(ids, kind="stable")]
    k = rows.shape[1]
    block = np.ascontiguousarray(np.concatenate([np.asarray(ids, dtype=np.float64)[:, None], rows], axis=1))
    counts = np.array(comm.allgather(len(block)), dtype=np.int64) * (k + 1)
    recv = None
    if comm.Get_rank() == root:
        recv = np.empty(int(counts.sum()), dtype=np.float64)
    from mpi4py import MPI
    displ = np.concatenate([[0], np.cumsum(counts)[:-1]])
    comm.Gatherv(block.ravel(), [recv, (counts, displ), MPI.DOUBLE] if recv is not None else None, root=root)
    if recv is None:
        return None
    table = recv.reshape(-1, k + 1)
    return table[np.argsort(table[:, 0], kind="stable"), 1:]
