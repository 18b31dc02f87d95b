"""MPI scaling of `mmtp md`: strong (fixed size) and weak (fixed atoms per rank) series.

    python scripts/scaling.py --ranks 1 2 --mode both            # this 2-core machine
    python scripts/scaling.py --ranks 1 2 4 8 16 --repeat 20      # a 16-core node

Every point is a real ``mpiexec -n P python -m mpi4py -m mmtp_hpc md`` run of bcc Fe with the
shipped level-16 magnetic potential (NVE from 300 K, fixed moments unless ``--moments``),
with a trajectory frame every ``--frame-every`` steps and a checkpoint at the end, so I/O is
part of the measurement. Reported per point: atoms, rank grid, atom-steps/s, µs per
atom-step per rank (wall × P / (atoms × steps)), parallel efficiency, and the time split
per rank (force kernels, communication, neighbour builds with migration, I/O) from the
run's own accounting (``mmtp md --summary-json``).

Efficiency: strong E_P = T_1 / (P·T_P) at a fixed cell (``--repeat`` conventional cells per
edge); weak E_P = (atom-steps/s per rank with P ranks) / (atom-steps/s with 1 rank), the
cell grown along the rank grid so each rank keeps ``--repeat``³ cells. The median over
``--trials`` runs is used (timings on shared machines are noisy; see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtp_hpc.parallel.decomposition import compute_dims  # noqa: E402


def mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    return str(exe) if exe.exists() else "mpiexec"


def write_input(path: Path, repeat: list[int], grid: list[int], args) -> None:
    path.write_text(f"""[system]
lattice = "bcc"
a = 2.855
repeat = {json.dumps(repeat)}
species = ["Fe"]
magmoms = 2.25

[potential]
file = "{args.potential}"

[md]
steps = {args.steps}
timestep_fs = 1.0
ensemble = "nve"
temperature_K = 300.0
seed = 5
skin = 1.0

[moments]
mode = "{args.moments}"

[output]
trajectory = "traj.h5"
every = {args.frame_every}
store = ["positions", "velocities", "magmoms"]
checkpoint = "ck.h5"
checkpoint_every = {args.steps}
log_every = {args.steps}

[parallel]
grid = {json.dumps(grid)}
""")


def run_point(ranks: int, repeat: list[int], grid: list[int], args) -> dict:
    trials = []
    for _ in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="mmtp_scaling_") as tmp:
            d = Path(tmp)
            write_input(d / "in.toml", repeat, grid, args)
            cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "mmtp_hpc", "md",
                   str(d / "in.toml"), "--quiet", "--summary-json", str(d / "summary.json")]
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
            proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode != 0:
                raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            trials.append(json.loads((d / "summary.json").read_text()))
    best = sorted(trials, key=lambda t: t["wall_s"])[len(trials) // 2]     # the median run
    best["atom_steps_per_s_trials"] = [t["atom_steps_per_s"] for t in trials]
    best["atom_steps_per_s"] = statistics.median(best["atom_steps_per_s_trials"])
    return best


def grid_for(ranks: int) -> list[int]:
    return compute_dims(ranks)      # largest first: along x, then y, z


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--mode", choices=("strong", "weak", "both"), default="both")
    p.add_argument("--repeat", type=int, default=10, help="conventional cells per edge (10: 2000 atoms)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--frame-every", type=int, default=50)
    p.add_argument("--moments", default="fixed", choices=("fixed", "langevin", "relax"))
    p.add_argument("--potential", default=str(REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"))
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", default=None, help="write all points to this JSON file")
    args = p.parse_args()

    points = []
    modes = ("strong", "weak") if args.mode == "both" else (args.mode,)
    for mode in modes:
        base = None
        for ranks in args.ranks:
            grid = grid_for(ranks)
            repeat = [args.repeat] * 3 if mode == "strong" else [args.repeat * g for g in grid]
            print(f"{mode}: {ranks} rank(s), grid {grid}, {2 * repeat[0] * repeat[1] * repeat[2]} atoms ...",
                  flush=True)
            r = run_point(ranks, repeat, grid, args)
            r["mode"] = mode
            if base is None:
                base = r
            # strong: T_1 / (P T_P); weak: per-rank rate / 1-rank rate — both rate_P / (P rate_1)
            r["efficiency"] = r["atom_steps_per_s"] / (ranks * base["atom_steps_per_s"])
            points.append(r)
    header = (f"{'mode':<7}{'ranks':>6}{'grid':>11}{'atoms':>8}{'atom-steps/s':>14}{'µs/atom-step·rank':>19}"
              f"{'efficiency':>11}{'force':>7}{'comm':>6}{'nbr':>6}{'I/O':>6}")
    print()
    print(header)
    for r in points:
        wall = r["wall_s"]
        split = [100 * r[k] / wall for k in ("force_s", "communication_s", "neighbor_s", "io_s")]
        print(f"{r['mode']:<7}{r['ranks']:>6}{str(r.get('grid', [1, 1, 1])):>11}{r['atoms']:>8}"
              f"{r['atom_steps_per_s']:>14.4g}{1e6 * r['ranks'] / r['atom_steps_per_s']:>19.2f}"
              f"{100 * r['efficiency']:>10.1f}%" + "".join(f"{v:>5.0f}%" for v in split))
    print("(time split: % of wall time per rank; medians of", args.trials, "trials; steps per run:",
          args.steps, ")")
    if args.json:
        Path(args.json).write_text(json.dumps(points, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
