"""``mmtp bench POT CFG``: time per atom of the evaluation paths, excluding start-up.

Measures, each ``--repeat`` times after one warm-up call: the neighbour-list build, the
energy-only evaluation, energy + forces + stress (+ ∂E/∂m for magnetic potentials, moments
fixed as given), and the spin-symmetrised evaluation (one neighbour pass where the magnetic
intervals are symmetric, then also the two-pass path for comparison). Prints medians and
minima in µs/atom and the memory of the neighbour list and per-call arrays per atom; with
``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark evaluation speed (µs/atom) on a configuration")
    p.add_argument("potential")
    p.add_argument("configuration", help="file with the configuration (the first one is used)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default OMP_NUM_THREADS or 1)")
    p.add_argument("--magmoms", type=float, default=None, help="moment for data without moments")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--grid", type=int, nargs=3, default=None, metavar=("PX", "PY", "PZ"),
                   help="MPI rank grid (under mpirun; default MPI.Compute_dims)")
    p.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin (Å) under mpirun")
    p.set_defaults(func=run)


def _one(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed(fn, repeat: int) -> list[float]:
    fn()  # warm-up: first-touch allocations, caches
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.errors import InputError
    from mmtp_hpc.io.formats import read_configurations
    from mmtp_hpc.parallel.comm import get_comm
    from mmtp_hpc.potentials.mtp import kernels
    from mmtp_hpc.potentials.mtp.engine import MTPEngine
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    if args.repeat < 1:
        raise InputError(f"--repeat must be >= 1, got {args.repeat}")
    pot = load_potential(args.potential)
    cfg = read_configurations(args.configuration, species=pot.species_names)[0]
    if pot.magnetic and cfg.magmoms is None:
        if args.magmoms is None:
            raise InputError(f"{args.configuration}: no magnetic moments; pass --magmoms")
        cfg.magmoms = np.full(len(cfg), args.magmoms)
    engine = MTPEngine(pot, num_threads=args.threads)
    comm = get_comm()
    if comm.Get_size() > 1:
        return run_distributed(args, engine, cfg, comm)
    n = len(cfg)
    nl = engine.neighbor_list(cfg)
    results = {"n_atoms": n, "neighbors_mean": nl.neighbors_mean, "threads": engine.num_threads,
               "energy": engine.evaluate(cfg, nl=nl, symmetric=False)["energy"],
               "level": pot.level, "magnetic": pot.magnetic, "n_params": pot.n_params,
               "kernels": kernels.variant}
    timings = {
        "neighbor": _timed(lambda: engine.neighbor_list(cfg), args.repeat),
        "energy": _timed(lambda: engine.evaluate(cfg, nl=nl, derivatives=False, symmetric=False),
                         args.repeat),
        "efs": _timed(lambda: engine.evaluate(cfg, nl=nl, symmetric=False), args.repeat),
    }
    if pot.magnetic:
        timings["symmetric"] = _timed(lambda: engine.evaluate(cfg, nl=nl, symmetric=True), args.repeat)
        if engine.one_pass_symmetric():  # the two-pass path, for comparison
            engine.symmetric_one_pass = False
            timings["symmetric_two_pass"] = _timed(lambda: engine.evaluate(cfg, nl=nl, symmetric=True),
                                                   args.repeat)
            engine.symmetric_one_pass = True
        results["symmetric_one_pass"] = engine.one_pass_symmetric()
    for key, values in timings.items():
        results[f"{key}_us_per_atom_median"] = 1e6 * statistics.median(values) / n
        results[f"{key}_us_per_atom_min"] = 1e6 * min(values) / n
    if not pot.magnetic:
        results["symmetric_us_per_atom_median"] = results["efs_us_per_atom_median"]
        results["symmetric_us_per_atom_min"] = results["efs_us_per_atom_min"]
    nl_bytes = sum(a.nbytes for a in (nl.positions, nl.image_of, nl.shifts, nl.offsets, nl.neighbors))
    per_call = nl.n_pairs * 4 * 8 + nl.n_total * 4 * 8  # pair derivatives and per-entry outputs
    results["memory_bytes_per_atom"] = (nl_bytes + per_call) / n
    results["efs_over_energy"] = results["efs_us_per_atom_median"] / results["energy_us_per_atom_median"]
    results["symmetric_over_efs"] = results["symmetric_us_per_atom_median"] / results["efs_us_per_atom_median"]
    results["neighbor_over_efs"] = results["neighbor_us_per_atom_median"] / results["efs_us_per_atom_median"]
    print(f"mmtp bench: {n} atoms, {results['neighbors_mean']:.1f} neighbours/atom, level {pot.level}"
          f"{' magnetic' if pot.magnetic else ''}, {engine.num_threads} thread(s), {args.repeat} repeats, "
          f"{kernels.variant} kernels")
    print(f"  {'path':<22}{'median µs/atom':>16}{'min µs/atom':>14}")
    for key, label in (("neighbor", "neighbour list"), ("energy", "energy only"),
                       ("efs", "E+F+S" + ("+dE/dm" if pot.magnetic else "")),
                       ("symmetric", "symmetrised E+F+S+dE/dm"),
                       ("symmetric_two_pass", "  same, two passes")):
        if f"{key}_us_per_atom_median" in results and (key != "symmetric" or pot.magnetic):
            print(f"  {label:<22}{results[f'{key}_us_per_atom_median']:>16.2f}"
                  f"{results[f'{key}_us_per_atom_min']:>14.2f}")
    print(f"  memory: {results['memory_bytes_per_atom']:.0f} bytes/atom (neighbour list and per-call arrays)")
    if args.json:
        print(json.dumps(results))
    return 0


def run_distributed(args: argparse.Namespace, engine, cfg, comm) -> int:
    """Under mpirun: the MD force step on the domain-decomposed cell (ghost refresh + kernels +
    reverse sum + reductions) and the rebuild (migration + halo + list), timed on rank 0
    between barriers; atom-steps/s = atoms / (wall time of one step)."""
    from mmtp_hpc.dynamics.domain import DomainForceField
    from mmtp_hpc.dynamics.state import MDState

    n = len(cfg)
    state = MDState(positions=cfg.positions, velocities=np.zeros((n, 3)), masses=np.ones(n), types=cfg.types,
                    ids=np.arange(n), magmoms=cfg.magmoms if cfg.magmoms is not None else np.zeros(n),
                    cell=cfg.cell, pbc=cfg.pbc, species=[])
    import warnings

    with warnings.catch_warnings():   # plain E(M) is what is timed, also for symmetrised potentials
        warnings.simplefilter("ignore", UserWarning)
        ff = DomainForceField(engine, comm, symmetric=False, skin=args.skin, grid=args.grid)
    ff.setup(state)

    def barrier_timed(fn):
        def call():
            comm.Barrier()
            fn()
            comm.Barrier()
        return call

    def step():
        ff.update(state)
        ff.evaluate(state)

    # the split covers exactly the timed force steps: warm-up first, then counters from zero
    step_call = barrier_timed(step)
    step_call()
    for key in ff.time:
        ff.time[key] = 0.0
    step_times = [_one(step_call) for _ in range(args.repeat)]
    split = state.global_sum(np.array([ff.time["force"], ff.time["comm"], ff.time.get("neighbor", 0.0)])
                             ) / comm.Get_size()
    timings = {"step": step_times,
               "rebuild": _timed(barrier_timed(lambda: ff.rebuild_now(state)), args.repeat)}
    neighbors = state.global_sum(np.array([float(ff.nl.n_pairs), float(ff.nl.n_ghosts)]))
    if comm.Get_rank() != 0:
        return 0
    step_med = statistics.median(timings["step"])
    step_total = max(sum(timings["step"]), 1e-12)
    results = {"n_atoms": n, "ranks": comm.Get_size(), "grid": ff.decomp.grid.tolist(),
               "neighbors_mean": float(neighbors[0]) / n, "ghosts_per_atom": float(neighbors[1]) / n,
               "efs_us_per_atom_median": 1e6 * step_med / n,
               "efs_us_per_atom_min": 1e6 * min(timings["step"]) / n,
               "rebuild_us_per_atom_median": 1e6 * statistics.median(timings["rebuild"]) / n,
               "atom_steps_per_s": n / step_med,
               "force_fraction": float(split[0]) / step_total,
               "communication_fraction": float(split[1]) / step_total,
               "neighbor_fraction": float(split[2]) / step_total,
               "other_fraction": 1.0 - float(split.sum()) / step_total,
               "level": engine.pot.level, "magnetic": engine.pot.magnetic}
    print(f"mmtp bench: {n} atoms on {comm.Get_size()} ranks ({ff.decomp.describe()}), "
          f"{results['ghosts_per_atom']:.2f} ghosts/atom, {args.repeat} repeats")
    print(f"  MD force step   {results['efs_us_per_atom_median']:.2f} µs/atom (median), "
          f"{results['atom_steps_per_s']:.4g} atom-steps/s")
    print(f"  time split of the force steps (per rank, adds up to their wall time): force "
          f"{100 * results['force_fraction']:.0f} %, communication {100 * results['communication_fraction']:.0f} %, "
          f"neighbour list {100 * results['neighbor_fraction']:.0f} %, waiting at barriers and other "
          f"{100 * results['other_fraction']:.0f} %")
    print(f"  rebuild         {results['rebuild_us_per_atom_median']:.2f} µs/atom (migration + halo + list)")
    if args.json:
        print(json.dumps(results))
    return 0
