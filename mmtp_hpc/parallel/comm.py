"""The communicator: mpi4py's COMM_WORLD under an MPI launcher, a serial stand-in otherwise.

This package is the only place that imports mpi4py (CONVENTIONS item 3). Code takes a
``comm`` argument defaulting to :func:`get_comm`, so everything runs without ``mpirun``.
Large data moves with the buffer-based upper-case calls on NumPy arrays.
"""

from __future__ import annotations

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
