"""Run a script under mpiexec from pytest (pytest itself stays serial; CONVENTIONS item 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    return str(exe) if exe.exists() else "mpiexec"


def run_mpi(n: int, script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``mpiexec -n N python -m mpi4py script args``; the process group is killed on timeout."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", str(script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"mpiexec -n {n} {script.name} timed out after {timeout} s\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
