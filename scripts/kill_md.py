"""kill -9 an MD run at random moments, restart it each time, and compare with an uninterrupted run.

    python scripts/kill_md.py [--kills 20] [--seed 1] [--steps 1500] [--workdir DIR]

Runs `mmtp md` once straight through (the reference), then again, killing it with SIGKILL at
a random moment (start-up, frames, checkpoints, anywhere) and restarting it (`--restart` when a
checkpoint exists, else `--overwrite`) until it has been killed ``--kills`` times and then
finishes. After every kill the trajectory must open and its frames must equal the reference's
prefix; at the end every dataset of the trajectory must equal the reference bit for bit, no
temporary or lock file may remain, and the log must hold each step once. Prints one line per
kill and a summary; exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"


def write_input(directory: Path, steps: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "input.toml").write_text(f"""
[system]
lattice = "bcc"
a = 2.855
repeat = 3
species = ["Fe"]
magmoms = 2.25
[potential]
file = "{POT}"
[md]
steps = {steps}
ensemble = "nvt"
temperature_K = 600.0
thermostat = "langevin"
damping_fs = 50.0
seed = 7
[moments]
mode = "mc"
every = 5
[output]
trajectory = "traj.h5"
every = 10
store = ["positions", "velocities", "magmoms", "forces", "site_energies"]
checkpoint = "ckpt.h5"
checkpoint_every = 50
log = "md.log"
log_every = 10
speed_log = ""
""")


def run(directory: Path, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "mmtp_hpc", "md", "input.toml", "--quiet", *args],
                            cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def datasets(path: Path) -> dict[str, np.ndarray]:
    from mmtp_hpc.io.trajectory_frames import open_trajectory

    out: dict[str, np.ndarray] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[...]

    with open_trajectory(path) as f:
        f.visititems(visit)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    from mmtp_hpc.io.trajectory import read_trajectory

    rng = random.Random(args.seed)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="mmtp_kill_"))
    straight, killed = base / "straight", base / "killed"
    write_input(straight, args.steps)
    write_input(killed, args.steps)
    t0 = time.perf_counter()
    proc = run(straight, ["--overwrite"])
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(err)
        return 1
    ref = datasets(straight / "traj.h5")
    print(f"reference: {args.steps} steps in {wall:.1f} s")
    kills, unreadable, altered, restarts = 0, 0, 0, 0
    while True:
        extra = ["--restart"] if (killed / "ckpt.h5").exists() else ["--overwrite"]
        proc = run(killed, extra)
        restarts += 1
        if kills < args.kills:
            delay = rng.uniform(0.01, 0.08) * wall
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills += 1
                frames, note = 0, "no trajectory yet"
                if (killed / "traj.h5").exists():
                    try:
                        t = read_trajectory(killed / "traj.h5")
                        frames = len(t["step"])
                        same = np.array_equal(t["positions"], ref["particles/all/position/value"][:frames])
                        altered += 0 if same else 1
                        note = f"{frames} frames readable, {'equal to' if same else 'DIFFERENT from'} the reference"
                    except Exception as exc:      # noqa: BLE001 - counted, reported
                        unreadable += 1
                        note = f"UNREADABLE: {exc}"
                print(f"kill {kills:3d} after {delay:5.2f} s ({extra[0]}): {note}", flush=True)
                continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            print(f"the final run failed: {err}")
            return 1
        break
    got = datasets(killed / "traj.h5")
    differ = [name for name in ref if name not in got or not np.array_equal(got[name], ref[name], equal_nan=True)]
    left = sorted(p.name for p in killed.iterdir() if p.name.endswith((".tmp", ".lock")))
    steps = [int(ln.split()[0]) for ln in (killed / "md.log").read_text().splitlines()
             if ln.split() and ln.split()[0].isdigit()]
    repeated = len(steps) - len(set(steps))
    print(f"\n{kills} kills, {restarts} starts: {len(ref)} datasets compared, {len(differ)} differ "
          f"{differ[:5]}; unreadable after a kill: {unreadable}; frames altered after a kill: {altered}; "
          f"files left: {left}; log steps repeated: {repeated}")
    return 0 if not (differ or unreadable or altered or left or repeated) else 1


if __name__ == "__main__":
    sys.exit(main())
