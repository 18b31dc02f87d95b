"""A large bcc Fe MD on 1, 2, … ranks: speed, start-up, memory per rank and I/O per frame.

    python scripts/scale_io.py --atoms 1000000 --ranks 1 2            # 10^6 atoms (1,024,000)
    python scripts/scale_io.py --atoms 2000 --ranks 1 2 --steps 4     # a smoke test

Every point is one ``mpiexec -n P python -m mpi4py scripts/scale_io.py --worker …`` run of
magnetic bcc Fe with the shipped level-16 spin-symmetrised potential
(``inputs/potentials/fe_bcc_analytic_l16.almtp``), NVT (Langevin) from 300 K with fixed or Langevin
moments (``--moments``), an H5MD trajectory frame every ``--frame-every`` steps and a
checkpoint at the end. Reported per point (JSON lines on stdout, and ``--json FILE``):

- ``startup_s``: settings → first forces (lattice built, decomposed, neighbour list, forces);
- ``us_per_atom_step``: MD wall time × 1e6 / (atoms × steps), and per rank (× P);
- ``cpu_us_per_atom_step``: the CPU time of all ranks in the MD run × 1e6 / (atoms × steps), which
  a machine shared with other jobs inflates far less than the wall time (also ``startup_cpu_s``);
- ``peak_rss_mb``: peak resident memory of each rank (``getrusage``), at start-up and at the end;
- ``io_s_per_frame``: trajectory time per frame (streamed gather + write), ``checkpoint_s``;
- ``trajectory_mb``, ``checkpoint_mb``: file sizes.

The run directories are temporary unless ``--keep DIR`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POTENTIAL = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
A_FE = 2.855


def mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    return str(exe) if exe.exists() else "mpiexec"


def settings_dict(atoms: int, steps: int, frame_every: int, moments: str, workdir: Path) -> dict:
    n = max(1, math.ceil((atoms / 2) ** (1.0 / 3.0) - 1e-9))
    return {
        "system": {"lattice": "bcc", "a": A_FE, "repeat": [n, n, n], "species": ["Fe"], "magmoms": 2.25},
        "potential": {"file": str(POTENTIAL)},
        "md": {"steps": steps, "timestep_fs": 1.0, "ensemble": "nvt", "thermostat": "langevin",
               "temperature_K": 300.0, "damping_fs": 100.0, "seed": 1, "skin": 1.0},
        "moments": {"mode": moments},
        "output": {"trajectory": str(workdir / "traj.h5"), "every": frame_every,
                   "store": ["positions", "velocities", "magmoms"],
                   "checkpoint": str(workdir / "ck.h5"), "checkpoint_every": 10 ** 9,
                   "log_every": 10 ** 9},
    }


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0     # Linux: KiB


def worker(config: Path) -> None:
    from mmtp_hpc.dynamics import Simulation
    from mmtp_hpc.dynamics.settings import settings_from_dict
    from mmtp_hpc.parallel.comm import get_comm

    cfg = json.loads(config.read_text())
    comm = get_comm()
    workdir = Path(cfg["workdir"])
    settings = settings_from_dict(cfg["settings"], source=str(workdir / "input.toml"), base_dir=str(workdir))
    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    sim = Simulation.from_settings(settings, stream=None, comm=comm)
    sim.initialize()
    c1 = time.process_time()
    comm.Barrier()
    startup = time.perf_counter() - t0
    rss_startup = peak_mb()
    t1 = time.perf_counter()
    sim.run()
    c2 = time.process_time()
    comm.Barrier()
    total = time.perf_counter() - t1
    cpu = comm.gather((c1 - c0, c2 - c1), root=0)
    summary = sim.summary_dict()
    ck = next((obs for obs, _ in sim.observers if obs.name == "checkpoint"), None)
    rss = comm.gather((rss_startup, peak_mb()), root=0)
    if comm.Get_rank() != 0:
        return
    ranks = comm.Get_size()
    steps = summary["steps"]
    out = {
        "ranks": ranks, "atoms": summary["atoms"], "steps": steps, "grid": summary.get("grid", [1, 1, 1]),
        "startup_s": startup, "run_s": total,
        # CPU seconds of each rank (busy-waiting in MPI included): on a machine shared with other
        # jobs these, not the wall times, say what the run costs
        "startup_cpu_s": [c[0] for c in cpu], "run_cpu_s": [c[1] for c in cpu],
        "cpu_us_per_atom_step": sum(c[1] for c in cpu) * 1e6 / max(summary["atoms"] * steps, 1),
        "loadavg_1min": os.getloadavg()[0],
        "us_per_atom_step": summary["us_per_atom_step"],
        "us_per_atom_step_per_rank": summary["us_per_atom_step"] * ranks,
        "force_s": summary["force_s"], "communication_s": summary["communication_s"],
        "neighbor_s": summary["neighbor_s"],
        "frames": summary["trajectory_frames"], "io_s_per_frame": summary["io_s_per_frame"],
        "checkpoint_s": getattr(ck, "seconds", math.nan) / max(getattr(ck, "writes", 0), 1),
        "peak_rss_mb_startup": [r[0] for r in rss], "peak_rss_mb": [r[1] for r in rss],
        "trajectory_mb": (workdir / "traj.h5").stat().st_size / 2 ** 20,
        "checkpoint_mb": (workdir / "ck.h5").stat().st_size / 2 ** 20,
    }
    Path(cfg["result"]).write_text(json.dumps(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atoms", type=int, default=1_000_000, help="at least this many atoms (2·n³)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frame-every", type=int, default=10)
    p.add_argument("--moments", choices=("fixed", "langevin"), default="fixed")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per run")
    p.add_argument("--keep", type=Path, help="keep the run directories under DIR")
    p.add_argument("--json", type=Path, help="also write all results to this file")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="scale_io_") as tmp:
        base = args.keep or Path(tmp)
        for ranks in args.ranks:
            workdir = (base / f"p{ranks}").resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            config = workdir / "config.json"
            result = workdir / "result.json"
            config.write_text(json.dumps({"workdir": str(workdir), "result": str(result),
                                          "settings": settings_dict(args.atoms, args.steps, args.frame_every,
                                                                    args.moments, workdir)}))
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                       OPENBLAS_NUM_THREADS="1")
            cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()),
                   "--worker", str(config)]
            proc = subprocess.run(cmd, env=env, timeout=args.timeout, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            results.append(json.loads(result.read_text()))
            print(json.dumps(results[-1]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
