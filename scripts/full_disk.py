"""Run `mmtp md` on a disk that fills up, serially and on 2 MPI ranks, and check it ends cleanly.

    sudo python scripts/full_disk.py [--sizes 200k 400k 800k] [--timeout 180] [--workdir DIR]

Needs root (it mounts small tmpfs file systems). For every size and every launch mode
(`mmtp md`, `mpiexec -n 2 mmtp md`, `mpiexec -n 2 python -m mpi4py -m mmtp_hpc md`) it mounts
a fresh tmpfs of that size, runs a 250-atom MD with trajectory, checkpoints and log on it, and
requires:

- the run ends by itself within ``--timeout`` s (no hang), with exit status 1 (no crash by a
  signal, no 0 after losing data);
- stderr names the full disk ("No space left on device") and holds no Python traceback;
- every HDF5 file left on the disk opens with the product's readers (the atomic writes leave
  old or new files, never half-written ones; a trajectory whose writer could not close it
  stays marked as open by a writer and is read in SWMR mode, and a restart rebuilds it) and
  no temporary file is left;
- a checkpoint the summary names exists and restarts (`mmtp md --restart --allow-changes` with
  the output redirected to a disk with room).

Sizes are chosen so that the disk fills at different moments: while the first frames are
written, between checkpoints, while a checkpoint is written. Prints one line per run and a
summary; exit status 1 on any failure, 2 when the machine cannot mount tmpfs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtp_hpc.io.trajectory_frames import open_trajectory  # noqa: E402
POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
BIN = Path(sys.executable).parent


def write_input(directory: Path, out: Path) -> Path:
    path = directory / "input.toml"
    path.write_text(f"""
[system]
lattice = "bcc"
a = 2.855
repeat = 5
species = ["Fe"]
magmoms = 2.25
[potential]
file = "{POT}"
[md]
steps = 400
ensemble = "nvt"
temperature_K = 300.0
thermostat = "langevin"
damping_fs = 50.0
seed = 3
[moments]
mode = "fixed"
[output]
trajectory = "{out / 'traj.h5'}"
every = 5
store = ["positions", "velocities", "magmoms", "forces", "site_energies"]
checkpoint = "{out / 'ckpt.h5'}"
checkpoint_every = 50
log = "{out / 'md.log'}"
log_every = 50
speed_log = ""
""")
    return path


def launchers() -> dict[str, list[str]]:
    mmtp = str(BIN / "mmtp")
    mpiexec = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else "mpiexec"
    return {
        "serial": [mmtp, "md"],
        "mpiexec mmtp": [mpiexec, "-n", "2", mmtp, "md"],
        "mpiexec mpi4py": [mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "mmtp_hpc", "md"],
    }


def mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True, text=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False, capture_output=True)


def check(disk: Path, proc: subprocess.CompletedProcess | None, work: Path, argv: list[str],
          timeout: float) -> list[str]:
    problems = []
    if proc is None:
        return [f"no exit within {timeout:g} s (hang)"]
    if proc.returncode != 1:
        problems.append(f"exit status {proc.returncode} (expected 1)")
    if "No space left on device" not in proc.stderr:
        problems.append("stderr does not name the full disk")
    if "Traceback" in proc.stderr:
        problems.append("a Python traceback in stderr")
    for f in disk.iterdir():
        if f.name.endswith(".tmp") or f.name.startswith("."):
            problems.append(f"left behind: {f.name}")
        elif f.suffix == ".h5":
            try:     # as the product's readers open it (SWMR read mode after a writer's abort)
                with open_trajectory(f):
                    pass
            except OSError as exc:
                problems.append(f"{f.name} does not open: {exc}")
    ckpt = disk / "ckpt.h5"
    if ckpt.exists():
        # restart from it with the output on a disk with room
        roomy = work / "roomy"
        roomy.mkdir(exist_ok=True)
        text = (work / "input.toml").read_text().replace(str(disk), str(roomy))
        (roomy / "input.toml").write_text(text)
        shutil.copy(ckpt, roomy / "ckpt.h5")
        if (disk / "traj.h5").exists():
            shutil.copy(disk / "traj.h5", roomy / "traj.h5")
        r = subprocess.run([str(BIN / "mmtp"), "md", str(roomy / "input.toml"), "--restart", "--allow-changes"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            problems.append(f"restart from the checkpoint failed: {r.stderr.strip()[-300:]}")
    else:
        # the summary's checkpoint line must not claim a file that is not there
        line = next((x for x in proc.stdout.splitlines() if x.startswith("  checkpoint:")), "")
        if line and "none written" not in line:
            problems.append(f"the summary names a checkpoint that is not there: {line.strip()[:200]}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["200k", "400k", "800k"])
    p.add_argument("--modes", nargs="+", default=list(launchers()), choices=list(launchers()))
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("full_disk: needs root to mount tmpfs file systems", file=sys.stderr)
        return 2
    base = Path(args.workdir or tempfile.mkdtemp(prefix="mmtp_full_disk_"))
    failures = 0
    runs = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for size in args.sizes:
        for mode in args.modes:
            work = base / f"{size}_{mode.replace(' ', '_')}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            disk = work / "disk"
            try:
                mount(disk, size)
            except (subprocess.CalledProcessError, FileNotFoundError) as exc:
                print(f"full_disk: cannot mount tmpfs: {getattr(exc, 'stderr', exc)}", file=sys.stderr)
                return 2
            try:
                inp = write_input(work, disk)
                argv = launchers()[mode] + [str(inp), "--overwrite"]
                try:
                    proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout, cwd=work,
                                          env=env)
                except subprocess.TimeoutExpired:
                    proc = None
                problems = check(disk, proc, work, argv, args.timeout)
            finally:
                umount(disk)
            runs += 1
            failures += bool(problems)
            status = "ok" if not problems else "FAIL: " + "; ".join(problems)
            rc = "-" if proc is None else proc.returncode
            print(f"{size:>6} {mode:<16} exit {rc}: {status}", flush=True)
    print(f"full_disk: {runs} runs, {failures} failed ({base})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
