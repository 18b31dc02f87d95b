"""Cost of the moment updates against a plain MD step, measured in one run.

    python scripts/bench_moments.py [--repeat 8] [--blocks 7] [--steps 4] [--modes fixed mc relax]
    mpiexec -n 2 python -m mpi4py scripts/bench_moments.py

Defaults: 1024-atom bcc Fe (8×8×8 cells, a = 2.83 Å, 2.2 μB), the trained level-16 magnetic
potential ``inputs/potentials/fe_bcc_analytic_l16.almtp``, NVT Langevin at 300 K, 1 fs, moments
updated every step: ``fixed`` (the plain MD step), ``mc`` (one Metropolis sweep per step) and
``relax`` (moments relaxed at every step to ``relax_tol``). The simulations are built first
and then timed in interleaved blocks of ``--steps`` steps (so that a busy machine slows every
mode alike); printed are the medians over blocks of µs/atom/step and their ratios to the
plain step. Under MPI the block time is the slowest rank's. Targets (issue 13): ≤ 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as the mmtp command: no spinning BLAS threads

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtp_hpc.dynamics import Simulation, settings_from_dict  # noqa: E402
from mmtp_hpc.parallel.comm import get_comm, max_op  # noqa: E402

MODES = {
    "fixed": {"mode": "fixed"},
    "mc": {"mode": "mc", "every": 1, "mc_sweeps": 1, "mc_flip_fraction": 0.2, "mc_max_change": 0.3},
    "relax": {"mode": "relax", "every": 1},
}


def build(args, mode: str, comm) -> Simulation:
    moments = dict(MODES[mode])
    if mode == "relax":
        moments["relax_tol"] = args.relax_tol
    settings = settings_from_dict({
        "system": {"lattice": "bcc", "a": args.a, "repeat": list(args.cells or [args.repeat] * 3), "magmoms": 2.2},
        "potential": {"file": args.potential, "threads": args.threads},
        "md": {"steps": 10 ** 9, "timestep_fs": 1.0, "ensemble": "nvt", "temperature_K": 300.0,
               "thermostat": "langevin", "skin": 1.0, "seed": 7},
        "moments": moments,
        "output": {"trajectory": "", "checkpoint": "", "log_every": 10 ** 9},
    }, source=str(REPO / "bench_moments.toml"), base_dir=str(REPO))
    sim = Simulation.from_settings(settings, stream=None, comm=comm)
    sim.initialize()
    for _ in range(args.warmup):
        sim.step()
    return sim


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--potential", default=str(REPO / "inputs/potentials/fe_bcc_analytic_l16.almtp"))
    p.add_argument("--repeat", type=int, default=8, help="bcc cells per direction (8: 1024 atoms)")
    p.add_argument("--cells", type=int, nargs=3, metavar=("NX", "NY", "NZ"),
                   help="bcc cells along x, y, z instead of --repeat (16 8 4: 1024 atoms in a cell that "
                        "2 ranks split into subdomains wide enough for the parallel Monte Carlo)")
    p.add_argument("--a", type=float, default=2.83)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--steps", type=int, default=4, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--relax-tol", type=float, default=1e-3, help="eV/μB")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    warnings.simplefilter("ignore")

    comm = get_comm()
    ranks = comm.Get_size()
    root = comm.Get_rank() == 0
    if "fixed" not in args.modes:
        args.modes.insert(0, "fixed")
    sims = {mode: build(args, mode, comm if ranks > 1 else None) for mode in args.modes}
    n = next(iter(sims.values())).state.n_global
    per_step: dict[str, list[float]] = {mode: [] for mode in args.modes}
    for _ in range(args.blocks):
        for mode, sim in sims.items():
            if ranks > 1:
                comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                sim.step()
            dt = time.perf_counter() - t0
            if ranks > 1:
                dt = comm.allreduce(dt, op=max_op())
            per_step[mode].append(1e6 * dt / (args.steps * n))
    # work counters (collective under MPI)
    notes = {}
    if "relax" in sims:
        m = sims["relax"].moments
        evals = sims["relax"].state.global_sum(np.array([float(m.evaluations), float(m.relaxations)])) / ranks
        notes["relax"] = f"{evals[0] / max(evals[1], 1):.2f} evaluations per relaxation"
    if "mc" in sims:
        line = sims["mc"].moments.summary_line(sims["mc"].state)
        notes["mc"] = line.strip() if line else ""
    if root:
        pot = Path(args.potential).name
        print(f"bench_moments: {n} atoms bcc Fe, {pot}, {ranks} rank(s), {args.threads} thread(s) per rank; "
              f"medians of {args.blocks} blocks of {args.steps} steps")
        base = statistics.median(per_step["fixed"])
        for mode in args.modes:
            med = statistics.median(per_step[mode])
            extra = f"  ({notes[mode]})" if mode in notes else ""
            label = {"fixed": "plain MD step (fixed moments)", "mc": "MD step + one MC sweep",
                     "relax": "MD step with relaxed moments"}[mode]
            print(f"  {label:32s} {med:8.2f} µs/atom/step   ratio {med / base:5.2f}{extra}")
        if "mc" in per_step:
            sweep = statistics.median(per_step["mc"]) - base
            print(f"  {'the MC sweep alone':32s} {sweep:8.2f} µs/atom        ratio {sweep / base:5.2f} "
                  "(MD step + sweep, less the plain step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
