"""MD per-step cost against the bare potential evaluation (project standard: < 1.2×).

    python scripts/bench_md_overhead.py [--potential P] [--structure S] [--steps N] [--threads T]

Defaults: the shipped level-16 magnetic potential and 2000-atom bcc Fe cell. Prints the
time of ``MTPEngine.evaluate`` on a prepared neighbour list (the bare evaluation), the MD
step (NVT Langevin, fixed moments, everything the driver does per step incl. neighbour
upkeep, thermostat random numbers and a log observer), and their ratio.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtp_hpc.dynamics import Simulation, settings_from_dict  # noqa: E402
from mmtp_hpc.io.formats import read_configurations  # noqa: E402
from mmtp_hpc.potentials.mtp.engine import MTPEngine  # noqa: E402
from mmtp_hpc.potentials.mtp.mlip_io import load_potential  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--potential", default=str(REPO / "inputs/potentials/al_fe_mag.mtpr"))
    p.add_argument("--structure", default=str(REPO / "inputs/fe_bcc_2000/fe_bcc_2000.cfg"))
    p.add_argument("--species", nargs="+", default=["Fe", "Al"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timestep", type=float, default=0.5)
    args = p.parse_args()

    warnings.simplefilter("ignore")
    pot = load_potential(args.potential)
    cfg = read_configurations(args.structure)[0]
    engine = MTPEngine(pot, num_threads=args.threads, skin=1.0)
    nl = engine.neighbor_list(cfg)
    engine.evaluate(cfg, nl=nl)
    bare = []
    for _ in range(max(5, args.steps // 4)):
        t = time.perf_counter()
        engine.evaluate(cfg, nl=nl)
        bare.append(time.perf_counter() - t)

    settings = settings_from_dict({
        "system": {"structure": args.structure, "species": args.species},
        "potential": {"file": args.potential, "threads": args.threads},
        "md": {"steps": args.steps, "timestep_fs": args.timestep, "ensemble": "nvt", "temperature_K": 300.0,
               "thermostat": "langevin", "skin": 1.0},
        "output": {"trajectory": "", "checkpoint": "", "log_every": 10},
    })
    sim = Simulation.from_settings(settings, stream=None)
    sim.initialize()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        sim.step()
        times.append(time.perf_counter() - t)
    bare_t = statistics.median(bare)
    step_t = statistics.median(times)
    print(f"{cfg.n_atoms} atoms, level {pot.level}, {args.threads} thread(s)")
    print(f"bare evaluation (MTPEngine.evaluate, prepared list): {1e3 * bare_t:.2f} ms "
          f"(median of {len(bare)})")
    print(f"MD step (NVT Langevin, fixed moments):               {1e3 * step_t:.2f} ms "
          f"(median of {len(times)}, "
          f"mean {1e3 * statistics.mean(times):.2f} ms, {sim.forcefield.rebuilds} list builds)")
    print(f"ratio MD step / bare evaluation: {step_t / bare_t:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
