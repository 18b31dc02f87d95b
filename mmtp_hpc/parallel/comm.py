"""The communicator: mpi4py's COMM_WORLD under an MPI launcher, a serial stand-in otherwise.

This package is the only place that imports mpi4py (CONVENTIONS item 3). Code takes a
``comm`` argument defaulting to :func:`get_comm`, so everything runs without ``mpirun``.
Large data moves with the buffer-based upper-case calls on NumPy arrays.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

# environment variables set by MPI launchers (MPICH/Hydra, Open MPI, Slurm's PMI)
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")


class SerialComm:
    """The subset of mpi4py's Comm used here, for a single process."""

    rank = 0
    size = 1

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def allreduce(self, value: Any, op: Any = None) -> Any:
        return value

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: Any = None) -> None:
        src = sendbuf if not isinstance(sendbuf, (list, tuple)) else sendbuf[0]
        dst = recvbuf if not isinstance(recvbuf, (list, tuple)) else recvbuf[0]
        if src is not dst:
            np.copyto(dst, src)

    def bcast(self, value: Any, root: int = 0) -> Any:
        return value

    def Bcast(self, buf: Any, root: int = 0) -> None:
        return None

    def gather(self, value: Any, root: int = 0) -> list:
        return [value]

    def allgather(self, value: Any) -> list:
        return [value]

    def Barrier(self) -> None:
        return None

    barrier = Barrier

    def Abort(self, code: int = 1) -> None:
        sys.exit(code)


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


_WORLD: Any = None


def get_comm(comm: Any = None) -> Any:
    """``comm`` if given; else COMM_WORLD when started by an MPI launcher; else a SerialComm."""
    global _WORLD
    if comm is not None:
        return comm
    if _WORLD is None:
        if launched_by_mpi():
            from mpi4py import MPI
            _WORLD = MPI.COMM_WORLD
        else:
            _WORLD = SerialComm()
    return _WORLD


def sum_op() -> Any:
    """MPI.SUM, or None for the serial stand-in."""
    if isinstance(get_comm(), SerialComm):
        return None
    from mpi4py import MPI
    return MPI.SUM


def min_op() -> Any:
    """MPI.MIN, or None for the serial stand-in."""
    if isinstance(get_comm(), SerialComm):
        return None
    from mpi4py import MPI
    return MPI.MIN


def max_op() -> Any:
    """MPI.MAX, or None for the serial stand-in."""
    if isinstance(get_comm(), SerialComm):
        return None
    from mpi4py import MPI
    return MPI.MAX


def allreduce_sum(comm: Any, array: np.ndarray) -> np.ndarray:
    """Element-wise sum of a float64 array over ranks (buffer-based)."""
    array = np.ascontiguousarray(array, dtype=np.float64)
    if comm.Get_size() == 1:
        return array.copy()
    from mpi4py import MPI
    out = np.empty_like(array)
    comm.Allreduce(array, out, op=MPI.SUM)
    return out


def ordered_sum(comm, rows: dict[int, np.ndarray], n_rows: int, width: int,
                max_block_doubles: int = 4_000_000) -> np.ndarray:
    """Σ over global rows 0..n_rows−1 of the per-item vectors, identical for any rank count.

    Each rank holds the rows (items, e.g. training configurations) it owns in ``rows``
    ({global index: vector of length width}). Blocks of rows are exchanged exactly (every
    entry is one rank's value plus zeros) and summed in global order on every rank, so the
    result is bit-for-bit the same as the serial sum.
    """
    total = np.zeros(width)
    block = max(1, min(n_rows, max_block_doubles // max(width, 1)))
    for start in range(0, n_rows, block):
        stop = min(n_rows, start + block)
        buf = np.zeros((stop - start, width))
        for k in range(start, stop):
            if k in rows:
                buf[k - start] = rows[k]
        if comm.Get_size() > 1:
            buf = allreduce_sum(comm, buf)
        for k in range(stop - start):  # fixed order, same on every rank
            total += buf[k]
    return total


def abort_all(comm: Any, code: int = 1) -> None:
    """End all ranks of ``comm`` (MPI_Abort) when there is more than one; else return."""
    if comm.Get_size() > 1:
        import time

        sys.stdout.flush()
        sys.stderr.flush()
        # MPI_Abort makes the process manager kill every rank at once, and output still in its
        # forwarding pipes can be lost (seen on an oversubscribed CI machine: an empty stderr).
        # A moment's wait lets the message of this rank reach the terminal first.
        time.sleep(1.0)
        comm.Abort(code)


def is_root(comm: Any = None) -> bool:
    return get_comm(comm).Get_rank() == 0


# --------------------------------------------------------------------------- rank-count independent reductions
_LIMBS = 4          # 32-bit limbs below the largest exponent: 128 bits kept per value
_LIMB_BITS = 32


def allreduce_max_int(comm: Any, values) -> list[int]:
    """Element-wise maximum of a short list of Python ints over ranks."""
    values = [int(v) for v in values]
    if comm.Get_size() == 1:
        return values
    from mpi4py import MPI
    return [int(comm.allreduce(v, op=MPI.MAX)) for v in values]


def allreduce_int_sum(comm: Any, values) -> list[int]:
    """Element-wise sum of a short list of Python ints (arbitrary size, exact) over ranks."""
    values = [int(v) for v in values]
    if comm.Get_size() == 1:
        return values
    from mpi4py import MPI
    return [int(comm.allreduce(v, op=MPI.SUM)) for v in values]


def exact_sum(comm: Any, values: np.ndarray) -> np.ndarray:
    """Column sums of ``values`` (n, k) (or (n,)) over all rows of all ranks, independent of how
    the rows are spread over ranks and of their order: bit-for-bit the same on 1 or P ranks.

    Each value is cut, exactly, into four 32-bit integer limbs below the largest binary exponent
    of its column (over all ranks); integer sums are associative, so the total is exact up to the
    bits more than 128 below the largest value, and is rounded once to float64 at the end
    (correctly rounded in practice). Rows per rank must stay below 2³¹. Costs one max and one
    sum reduction of k Python ints."""
    x = np.asarray(values, dtype=np.float64)
    vector = x.ndim == 1
    x = x.reshape(len(x), 1) if vector else x.reshape(x.shape[0], int(np.prod(x.shape[1:])))
    k = x.shape[1]
    if not np.all(np.isfinite(x)):
        raise ValueError("exact_sum of non-finite values")
    top = np.abs(x).max(axis=0) if len(x) else np.zeros(k)
    exps = allreduce_max_int(comm, [int(np.frexp(t)[1]) if t > 0 else -1100 for t in top])
    local = []
    for c in range(k):
        y = np.ldexp(x[:, c], -exps[c])            # |y| < 1, exact (a power-of-two scaling)
        total = 0
        for _ in range(_LIMBS):
            y = y * float(2 ** _LIMB_BITS)         # exact
            limb = np.floor(y)
            y = y - limb                           # exact, in [0, 1)
            total = (total << _LIMB_BITS) + int(limb.astype(np.int64).sum())
        local.append(total)
    totals = allreduce_int_sum(comm, local)
    out = np.array([math.ldexp(float(t), e - _LIMBS * _LIMB_BITS) if t else 0.0
                    for t, e in zip(totals, exps, strict=True)])
    return out[0] if vector else out


def _count_le(comm: Any, sorted_keys: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    local = np.searchsorted(sorted_keys, bounds, side="right").astype(np.float64)
    return np.rint(allreduce_sum(comm, local)).astype(np.int64)


def order_statistics(comm: Any, primary: np.ndarray, secondary: np.ndarray,
                     positions) -> list[tuple[int, int]]:
    """The keys at sorted positions ``positions`` (0-based) of the pairs (primary, secondary)
    of non-negative int64 values of all ranks, in lexicographic order, found by bisection with
    small reductions (no rank sees the others' keys). Pairs must be distinct. Returns one
    (primary, secondary) per position; a row's sorted position is ≥ p iff its key is ≥ that of p."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if len(positions) == 0:
        return []
    primary = np.asarray(primary, dtype=np.int64)
    secondary = np.asarray(secondary, dtype=np.int64)
    keys = np.sort(primary)
    lo = np.zeros(len(positions), dtype=np.int64)
    hi = np.full(len(positions), np.iinfo(np.int64).max, dtype=np.int64)
    while np.any(lo < hi):                      # smallest v with #(primary ≤ v) ≥ p + 1
        mid = lo + (hi - lo) // 2
        enough = _count_le(comm, keys, mid) >= positions + 1
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid + 1)
    first = lo
    below = _count_le(comm, keys, first - 1)     # rows with a smaller primary key
    ties = _count_le(comm, keys, first) - below
    rank_in_tie = positions - below
    out = []
    for p, r, t in zip(first, rank_in_tie, ties, strict=True):
        tie = np.sort(secondary[primary == p])
        if t == 1:                              # the usual case: one row has this primary key
            out.append((int(p), allreduce_max_int(comm, [tie[0] if len(tie) else -1])[0]))
            continue
        a, b = np.int64(0), np.int64(np.iinfo(np.int64).max)
        while a < b:                            # smallest s with #(tie secondary ≤ s) ≥ r + 1
            m = a + (b - a) // 2
            if _count_le(comm, tie, np.array([m]))[0] >= r + 1:
                b = m
            else:
                a = m + 1
        out.append((int(p), int(a)))
    return out
