"""What a domain-decomposed MD step communicates, counted, and a scaling model built on it.

    python scripts/scale_model.py --json docs/scale_model.json          # 1, 2, 4, 8 ranks here
    python scripts/scale_model.py --ranks 8 --cells 4 8 12 --steps 60     # a quicker series

Every point is one ``mpiexec -n P python -m mpi4py scripts/scale_model.py --worker …`` run of
magnetic bcc Fe (the shipped level-16 spin-symmetrised potential, NVE from 300 K, fixed moments,
skin 1 Å) in the weak-scaling layout: the rank grid is ``compute_dims(P)`` and every rank's
subdomain holds ``--cells``³ conventional cells (2·cells³ atoms). The run's communicator is
wrapped in a counter, so what is reported are **volumes and counts, not times** (ranks are
oversubscribed on this machine; times of communication here would say nothing):

- per rank and MD step, outside neighbour-list rebuilds: point-to-point messages and bytes sent
  (the halo's forward and reverse exchanges), collective calls and their payload;
- per rebuild: messages, bytes (halo build and migration) and collectives;
- the ghost entries and neighbour entries of each subdomain, the steps between rebuilds;
- CPU seconds (``time.process_time``, which a shared machine inflates little) of the force
  kernels per owned atom and of a rebuild per entry (owned + ghost).

The model (docs/scale.md) puts these counts together with the interconnect's latency and
bandwidth: per step and rank, T(n, P) = n·t_force + r·(n + g(n))·t_build + m·α + b/β +
c·α·log₂P, with n atoms per rank, g(n) ghosts, r rebuilds per step, m messages, b bytes and c
collectives per step. The script prints the fitted per-rank quantities and the modelled
parallel efficiency for ``--alpha-us`` and ``--beta-gbs`` (defaults: a typical InfiniBand
HDR fabric, 2 µs and 12 GB/s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POTENTIAL = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
A_FE = 2.855
COLLECTIVES = ("allreduce", "Allreduce", "allgather", "Allgather", "bcast", "Bcast", "gather", "Gather",
               "Gatherv", "scatter", "Scatter", "Scatterv", "Alltoall", "Alltoallv", "Barrier", "barrier",
               "exscan", "Exscan", "scan", "Scan", "reduce", "Reduce")


def mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    return str(exe) if exe.exists() else "mpiexec"


def _nbytes(obj) -> int:
    """Payload of an mpi4py buffer argument ([array, counts…, type] or an array) or a pickled object."""
    if obj is None:
        return 0
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], np.ndarray):
        return int(obj[0].nbytes)
    try:
        return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:           # noqa: BLE001 - a count, never a failure
        return 0


class CountingComm:
    """An mpi4py communicator that counts what goes through it, by phase ("setup", "step",
    "rebuild"); everything else is delegated."""

    def __init__(self, comm):
        self._comm = comm
        self.phase = "setup"
        self.stats: dict[str, Counter] = {}

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if name not in COLLECTIVES:
            return attr

        def counted(*args, **kwargs):
            self._add("coll", _nbytes(args[0] if args else next(iter(kwargs.values()), None)), name)
            return attr(*args, **kwargs)
        return counted

    def _add(self, kind: str, nbytes: int, name: str = "") -> None:
        st = self.stats.setdefault(self.phase, Counter())
        st[f"{kind}_calls"] += 1
        st[f"{kind}_bytes"] += nbytes
        if name:
            st[f"coll:{name}"] += 1

    def Sendrecv(self, *args, **kwargs):
        send = args[0] if args else kwargs.get("sendbuf")
        self._add("p2p", _nbytes(send))
        return self._comm.Sendrecv(*args, **kwargs)

    def Get_rank(self):
        return self._comm.Get_rank()

    def Get_size(self):
        return self._comm.Get_size()


def settings_dict(repeat: list[int], grid: list[int], steps: int) -> dict:
    return {
        "system": {"lattice": "bcc", "a": A_FE, "repeat": repeat, "species": ["Fe"], "magmoms": 2.25},
        "potential": {"file": str(POTENTIAL)},
        "md": {"steps": steps, "timestep_fs": 2.0, "ensemble": "nve", "temperature_K": 300.0, "seed": 5,
               "skin": 1.0},
        "moments": {"mode": "fixed"},
        "parallel": {"grid": grid},
        "output": {"log_every": 10 ** 9},
    }


def worker(config: Path) -> None:
    from mmtp_hpc.dynamics import Simulation
    from mmtp_hpc.dynamics.settings import settings_from_dict
    from mmtp_hpc.parallel.comm import get_comm

    cfg = json.loads(config.read_text())
    world = get_comm()
    comm = CountingComm(world) if world.Get_size() > 1 else world
    workdir = Path(cfg["workdir"])
    settings = settings_from_dict(cfg["settings"], source=str(workdir / "input.toml"), base_dir=str(workdir))
    sim = Simulation.from_settings(settings, stream=None, comm=comm)
    sim.initialize()
    ff = sim.forcefield
    cpu = Counter()

    def timed(name, fn, phase=None):
        def call(*args, **kwargs):
            before = getattr(comm, "phase", None)
            if phase is not None and before is not None:
                comm.phase = phase
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu[name] += time.process_time() - t
                cpu[name + "_calls"] += 1
                if phase is not None and before is not None:
                    comm.phase = before
        return call

    ff.evaluate = timed("force", ff.evaluate)
    if hasattr(ff, "_build"):
        ff._build = timed("build", ff._build, "rebuild")
        ff._migrate = timed("migrate", ff._migrate, "rebuild")
    else:
        ff.build = timed("build", ff.build)
    rebuilds0 = ff.rebuilds
    if isinstance(comm, CountingComm):
        comm.phase = "step"
    world.Barrier()
    sim.run()
    steps = sim._steps_done
    rebuilds_run = ff.rebuilds - rebuilds0
    # a crystal at 300 K seldom moves an atom by half the skin: force rebuilds to measure them
    if hasattr(ff, "rebuild_now"):
        for _ in range(cfg["forced_rebuilds"]):
            ff.rebuild_now(sim.state)
    nl = ff.nl
    n_local = int(nl.n_local)
    n_total = int(len(nl.positions))
    row = {"n_local": n_local, "n_ghost": n_total - n_local, "entries": int(nl.offsets[-1]),
           "rebuilds_in_run": int(rebuilds_run), "rebuilds": int(ff.rebuilds - rebuilds0), "steps": int(steps),
           "cpu": dict(cpu), "stats": {k: dict(v) for k, v in getattr(comm, "stats", {}).items()}}
    if getattr(ff, "decomp", None) is not None:
        d = ff.decomp
        lengths = np.linalg.norm(np.asarray(sim.state.cell), axis=1)
        row["subdomain_A"] = ((np.asarray(d.hi) - np.asarray(d.lo)) * lengths).tolist()
        row["grid"] = list(map(int, d.grid))
    rows = world.gather(row, root=0) if world.Get_size() > 1 else [row]
    if world.Get_rank() == 0:
        Path(cfg["result"]).write_text(json.dumps({"ranks": world.Get_size(), "atoms": int(sim.state.n_global),
                                                   "cells": cfg["cells"], "rows": rows}))


def compute_grid(ranks: int) -> list[int]:
    from mmtp_hpc.parallel.decomposition import compute_dims
    return list(compute_dims(ranks))


def run_point(ranks: int, cells: int, steps: int, timeout: float, forced_rebuilds: int = 3) -> dict:
    grid = compute_grid(ranks)
    repeat = [cells * g for g in grid]
    with tempfile.TemporaryDirectory(prefix="scale_model_") as tmp:
        workdir = Path(tmp)
        config, result = workdir / "config.json", workdir / "result.json"
        config.write_text(json.dumps({"workdir": str(workdir), "result": str(result), "cells": cells,
                                      "forced_rebuilds": forced_rebuilds if ranks > 1 else 0,
                                      "settings": settings_dict(repeat, grid, steps)}))
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()),
               "--worker", str(config)]
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{ranks} ranks, {cells} cells: exit {proc.returncode}\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def per_rank(point: dict) -> dict:
    """Means over the ranks of a point: per step outside rebuilds, per rebuild."""
    rows = point["rows"]
    steps = max(rows[0]["steps"], 1)
    rebuilds = rows[0]["rebuilds"]             # in the run and forced after it (all counted as "rebuild")

    def mean(f):
        return float(np.mean([f(r) for r in rows]))

    def stat(r, phase, key):
        return r["stats"].get(phase, {}).get(key, 0)

    out = {"ranks": point["ranks"], "atoms": point["atoms"], "cells": point["cells"],
           "grid": rows[0].get("grid", [1, 1, 1]), "n": mean(lambda r: r["n_local"]),
           "ghosts": mean(lambda r: r["n_ghost"]), "entries_per_atom": mean(lambda r: r["entries"] / r["n_local"]),
           "steps": steps, "rebuilds_in_run": rows[0]["rebuilds_in_run"],
           "force_cpu_us_per_atom": mean(lambda r: 1e6 * r["cpu"].get("force", 0.0)
                                         / max(r["cpu"].get("force_calls", 1), 1) / r["n_local"])}
    if rows[0].get("subdomain_A"):
        out["subdomain_A"] = rows[0]["subdomain_A"]
    calls = rows[0]["cpu"].get("build_calls", 0)
    if calls:
        out["build_cpu_us_per_entry"] = mean(lambda r: 1e6 * (r["cpu"].get("build", 0.0) + r["cpu"].get("migrate", 0.0))
                                             / max(r["cpu"].get("build_calls", 1), 1) / (r["n_local"] + r["n_ghost"]))
    if point["ranks"] > 1:
        for key in ("p2p_calls", "p2p_bytes", "coll_calls", "coll_bytes"):
            out[f"step_{key}"] = mean(lambda r: stat(r, "step", key) / steps)
            out[f"rebuild_{key}"] = mean(lambda r: stat(r, "rebuild", key) / rebuilds) if rebuilds else 0.0
        names = Counter()
        for r in rows:
            for k, v in r["stats"].get("step", {}).items():
                if k.startswith("coll:"):
                    names[k[5:]] += v
        out["step_collectives"] = {k: v / len(rows) / steps for k, v in sorted(names.items())}
    return out


def model(points: list[dict], alpha_us: float, beta_gbs: float, rebuild_every: float) -> list[dict]:
    """Modelled efficiency per step of the largest grid's series, extrapolated in n and P."""
    series = [p for p in points if p["ranks"] == max(q["ranks"] for q in points)]
    if len(series) < 2:
        return []
    n = np.array([p["n"] for p in series])
    g = np.array([p["ghosts"] for p in series])
    # ghosts of a cube of side L = (n/ρ)^⅓ with a shell of width w: ρ((L+2w)³ − L³); fit w
    rho = 2.0 / A_FE ** 3
    side = (n / rho) ** (1.0 / 3.0)
    widths = ((g / rho + side ** 3) ** (1.0 / 3.0) - side) / 2.0
    w = float(np.median(widths))
    serial = [p for p in points if p["ranks"] == 1]
    t_force = float(np.median([p["force_cpu_us_per_atom"] for p in (serial or series)]))
    t_build = float(np.median([p["build_cpu_us_per_entry"] for p in series if "build_cpu_us_per_entry" in p]))
    in_run = sum(p["rebuilds_in_run"] for p in series)
    # the model assumes a rebuild every `rebuild_every` steps unless the runs rebuilt more often
    steps_per_rebuild = min(rebuild_every, sum(p["steps"] for p in series) / in_run if in_run else math.inf)
    # bytes per ghost per step and messages per step: fitted from the counts
    bytes_per_ghost = float(np.median([p["step_p2p_bytes"] / p["ghosts"] for p in series]))
    msgs = float(np.median([p["step_p2p_calls"] for p in series]))
    colls = float(np.median([p["step_coll_calls"] for p in series]))
    rebuild_msgs = float(np.median([p["rebuild_p2p_calls"] + p["rebuild_coll_calls"] for p in series]))
    rebuild_bytes_per_ghost = float(np.median([p["rebuild_p2p_bytes"] / p["ghosts"] for p in series]))
    out = []
    for P in (8, 64, 512, 4096, 10000):
        for n_rank in (250, 1000, 4000, 16000, 64000, 256000):
            L = (n_rank / rho) ** (1.0 / 3.0)
            ghosts = rho * ((L + 2 * w) ** 3 - L ** 3)
            compute = n_rank * t_force
            rebuild = (n_rank + ghosts) * t_build / steps_per_rebuild
            latency = (msgs + rebuild_msgs / steps_per_rebuild) * alpha_us + colls * alpha_us * math.log2(P)
            volume = (ghosts * (bytes_per_ghost + rebuild_bytes_per_ghost / steps_per_rebuild)) / (beta_gbs * 1e3)
            total = compute + rebuild + latency + volume
            out.append({"P": P, "n": n_rank, "atoms": P * n_rank, "ghosts": ghosts, "compute_us": compute,
                        "rebuild_us": rebuild, "latency_us": latency, "volume_us": volume,
                        "efficiency": compute / total})
    return [{"fit": {"halo_width_A": w, "force_cpu_us_per_atom": t_force, "build_cpu_us_per_entry": t_build,
                     "steps_per_rebuild": steps_per_rebuild, "rebuilds_in_runs": in_run,
                     "steps_in_runs": sum(p["steps"] for p in series), "bytes_per_ghost_step": bytes_per_ghost,
                     "messages_per_step": msgs, "collectives_per_step": colls,
                     "rebuild_messages": rebuild_msgs, "rebuild_bytes_per_ghost": rebuild_bytes_per_ghost,
                     "alpha_us": alpha_us, "beta_gbs": beta_gbs}}] + out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--cells", type=int, nargs="+", default=[4, 6, 8, 12, 16],
                   help="conventional cells per subdomain edge (2·cells³ atoms per rank)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--alpha-us", type=float, default=2.0, help="message latency (µs)")
    p.add_argument("--beta-gbs", type=float, default=12.0, help="bandwidth per rank (GB/s)")
    p.add_argument("--rebuild-every", type=float, default=20.0,
                   help="steps between neighbour rebuilds assumed by the model (a hot or liquid system; "
                        "a crystal at 300 K with a 1 Å skin rebuilds far less often)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return 0
    points = []
    for ranks in args.ranks:
        for cells in args.cells:
            if ranks == 1 and cells != max(args.cells):
                continue            # serial: only the force cost per atom, from the largest cell
            t = time.perf_counter()
            point = per_rank(run_point(ranks, cells, args.steps, args.timeout))
            points.append(point)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in point.items()}),
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    result = {"points": points, "model": model(points, args.alpha_us, args.beta_gbs, args.rebuild_every)}
    if result["model"]:
        print(json.dumps(result["model"][0]))
        print(f"{'P':>6} {'atoms/rank':>10} {'ghosts':>8} {'compute':>9} {'rebuild':>8} {'latency':>8} "
              f"{'volume':>8} {'eff.':>6}   (µs per step and rank)")
        for m in result["model"][1:]:
            print(f"{m['P']:>6} {m['n']:>10} {m['ghosts']:>8.0f} {m['compute_us']:>9.0f} {m['rebuild_us']:>8.0f} "
                  f"{m['latency_us']:>8.1f} {m['volume_us']:>8.1f} {m['efficiency']:>6.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
