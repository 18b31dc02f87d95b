"""The ``mmtp`` command: one module per sub-command, each with ``register(subparsers)``.

A sub-command module defines ``register(subparsers)`` which adds its parser and
sets ``func=run`` (a callable taking the parsed args and returning an exit code).
"""

from __future__ import annotations

import os

# NumPy's BLAS (OpenBLAS) starts a thread per core and keeps them spinning after each call. No
# command here spends its time in BLAS (the kernels are our own, with their own OpenMP threads),
# and under MPI every core already has a rank: one BLAS thread unless the user sets it. Must come
# before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

from mmtp_hpc import __version__
from mmtp_hpc.errors import MMTPError

# module names under mmtp_hpc.cli, in the order they appear in --help
COMMANDS = ["efs", "info", "convert", "new_potential", "train", "errors", "label", "grade", "select", "md",
            "learn", "post", "scan", "validate", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmtp", description="magnetic Moment Tensor Potentials: evaluate, train, simulate")
    parser.add_argument("--version", action="version", version=f"mmtp_hpc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mmtp_hpc.cli.{name}").register(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: one line with the category, no Python source lines."""
    return f"mmtp: warning ({category.__name__}): {message}\n"


def _describe_missing(exc: FileNotFoundError, args: argparse.Namespace) -> str:
    """'potential file not found: X' rather than '[Errno 2] No such file or directory: X'."""
    name = exc.filename
    if name is None:
        return str(exc)
    if str(getattr(args, "potential", None)) == str(name):
        return f"potential file not found: {name}"
    return f"file not found: {name}"


def _after_output_failure(exc: BaseException) -> bool:
    from mmtp_hpc.errors import OutputError, RunAborted

    return isinstance(exc, OutputError) or (isinstance(exc, RunAborted) and "output error" in str(exc))


def _quiet_hdf5_teardown(unraisable) -> None:
    """After an HDF5 write failed (full disk, vanished directory), h5py's objects of that file
    fail again as they are freed ("Can't decrement id ref count"), outside any try block: that
    failure is already reported as an OutputError, so these echoes are dropped, not printed as
    tracebacks. Everything else goes to Python's default hook."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and "decrement id ref count" in str(exc):
        return
    sys.__unraisablehook__(unraisable)


def _quiet_hdf5_excepthook(kind, value, tb) -> None:
    """h5py's deallocator prints the same echoes through ``sys.excepthook`` (Cython's full
    traceback of an unraisable error): dropped like in :func:`_quiet_hdf5_teardown`."""
    if isinstance(value, RuntimeError) and "decrement id ref count" in str(value):
        return
    sys.__excepthook__(kind, value, tb)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    sys.unraisablehook = _quiet_hdf5_teardown
    sys.excepthook = _quiet_hdf5_excepthook
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (MMTPError, FileNotFoundError) as exc:
        from mmtp_hpc.parallel.comm import abort_all, get_comm

        comm = get_comm()
        where = f" (rank {comm.Get_rank()} of {comm.Get_size()})" if comm.Get_size() > 1 else ""
        message = _describe_missing(exc, args) if isinstance(exc, FileNotFoundError) else str(exc)
        if getattr(exc, "collective", False) and comm.Get_size() > 1:
            # raised by every rank at the same point (e.g. a grid that does not fit the cell):
            # one message, and every rank ends normally with status 1
            if comm.Get_rank() == 0:
                print(f"mmtp {args.command}: error: {message}", file=sys.stderr, flush=True)
            if _after_output_failure(exc):
                comm.Barrier()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            # `python -m mpi4py` turns a non-zero exit into MPI_Abort, which kills every rank at
            # once: no rank may get there before rank 0 has written the message, and the message
            # needs a moment to pass the process manager (seen lost on an oversubscribed machine)
            import time

            comm.Barrier()
            sys.stderr.flush()
            time.sleep(1.0)
            return 1
        print(f"mmtp {args.command}: error{where}: {message}", file=sys.stderr, flush=True)
        abort_all(comm, 1)   # under MPI: end every rank now, none may wait forever in a collective
        if _after_output_failure(exc):
            # HDF5 can crash in its exit-time clean-up of a file whose write failed (disk full):
            # everything that matters is written or reported, so leave without it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    except Exception:
        from mmtp_hpc.parallel.comm import abort_all, get_comm

        comm = get_comm()
        if comm.Get_size() > 1:   # also when started as plain `mpirun mmtp ...` (not python -m mpi4py)
            import traceback

            print(f"mmtp {args.command}: unexpected error on rank {comm.Get_rank()}:", file=sys.stderr)
            traceback.print_exc()
            abort_all(comm, 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
