"""Peak memory per rank at start-up: a bcc Fe lattice and a restart from its checkpoint, P = 1, 2, 4.

    python scripts/scale_setup.py                                  # 80×80×80 cells = 1,024,000 atoms
    python scripts/scale_setup.py --repeat 10 --ranks 1 2          # a smoke test (2000 atoms)

For every P, two ``mpiexec -n P python -m mpi4py scripts/scale_setup.py --worker …`` runs of
magnetic bcc Fe (``inputs/potentials/fe_bcc_analytic_l16.almtp``, fixed moments, 0 MD steps):

- ``lattice``: settings → ``Simulation`` (each rank generates the cells of its subdomain;
  :mod:`mmtp_hpc.dynamics.setup`) → first forces; the 1-rank run then writes the checkpoint;
- ``restart``: the same from that checkpoint (each rank reads rows [k·N/P, (k+1)·N/P), the atoms
  migrate to their owners).

Per rank (``getrusage`` peak RSS, MB): ``base`` after the imports (the interpreter baseline),
``setup`` after ``Simulation.from_settings``, ``startup`` after the first forces (the start-up
peak). ``share_ratio`` = (startup − base) / (c · (N/P + chunk)), where c = (startup − base) / N
of the 1-rank run (MB per atom) and chunk = ``[output] chunk_atoms``: the issue's bound is
``share_ratio ≤ 1.3`` on every rank. JSON lines on stdout; ``--json FILE`` keeps them all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_io import A_FE, POTENTIAL, mpiexec, peak_mb  # noqa: E402

CHUNK = 65536


def settings_dict(repeat: int, workdir: Path) -> dict:
    return {
        "system": {"lattice": "bcc", "a": A_FE, "repeat": [repeat] * 3, "species": ["Fe"], "magmoms": 2.0},
        "potential": {"file": str(POTENTIAL)},
        "md": {"steps": 0, "timestep_fs": 1.0, "ensemble": "nvt", "thermostat": "langevin",
               "temperature_K": 300.0, "damping_fs": 100.0, "seed": 1, "skin": 1.0},
        "moments": {"mode": "fixed"},
        "output": {"checkpoint": str(workdir / "ck_unused.h5"), "checkpoint_every": 10 ** 9,
                   "log_every": 10 ** 9, "chunk_atoms": CHUNK},
    }


def worker(config: Path) -> None:
    from mmtp_hpc.dynamics import Simulation
    from mmtp_hpc.dynamics.settings import settings_from_dict
    from mmtp_hpc.parallel.comm import get_comm
    import mmtp_hpc.potentials.mtp.engine  # noqa: F401  (compiled kernels: part of the baseline)
    import h5py  # noqa: F401

    cfg = json.loads(config.read_text())
    comm = get_comm()
    base = peak_mb()
    workdir = Path(cfg["workdir"])
    settings = settings_from_dict(cfg["settings"], source=str(workdir / "input.toml"), base_dir=str(workdir))
    comm.Barrier()
    t0 = time.perf_counter()
    sim = Simulation.from_settings(settings, restart=cfg.get("restart"), stream=None, comm=comm)
    setup = peak_mb()
    sim.initialize()
    comm.Barrier()
    seconds = time.perf_counter() - t0
    startup = peak_mb()
    rows = comm.gather((base, setup, startup, sim.state.n_atoms), root=0)
    if cfg.get("write_checkpoint"):
        sim.write_checkpoint(cfg["write_checkpoint"])
    if comm.Get_rank() == 0:
        Path(cfg["result"]).write_text(json.dumps({
            "mode": cfg["mode"], "ranks": comm.Get_size(), "atoms": sim.state.n_global, "startup_s": seconds,
            "base_mb": [r[0] for r in rows], "setup_mb": [r[1] for r in rows],
            "startup_mb": [r[2] for r in rows], "atoms_per_rank": [r[3] for r in rows]}))


def run(ranks: int, config: dict, workdir: Path, timeout: float) -> dict:
    path = workdir / "config.json"
    config = dict(config, workdir=str(workdir), result=str(workdir / "result.json"))
    path.write_text(json.dumps(config))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()),
           "--worker", str(path)]
    proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads((workdir / "result.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=80, help="conventional cells per direction (2·n³ atoms)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    p.add_argument("--json", type=Path, help="also write all results to this file")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return 0
    ranks = sorted(set(args.ranks) | {1})
    results = []
    with tempfile.TemporaryDirectory(prefix="scale_setup_") as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / "ck.h5"
        for mode in ("lattice", "restart"):
            per_atom = None
            for n in ranks:
                workdir = tmp / f"{mode}_p{n}"
                workdir.mkdir()
                config = {"mode": mode, "settings": settings_dict(args.repeat, workdir)}
                if mode == "lattice" and n == 1:
                    config["write_checkpoint"] = str(checkpoint)
                if mode == "restart":
                    config["restart"] = str(checkpoint)
                r = run(n, config, workdir, args.timeout)
                above = [s - b for s, b in zip(r["startup_mb"], r["base_mb"], strict=True)]
                if n == 1:
                    per_atom = above[0] / r["atoms"]
                share = per_atom * (r["atoms"] / n + CHUNK)
                r["share_ratio"] = [a / share for a in above]
                r["above_base_mb"] = above
                results.append(r)
                print(json.dumps(r), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
