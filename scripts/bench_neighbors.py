"""Neighbour-list build against one evaluation: linear in N, and cheap (target < 20 %).

    python scripts/bench_neighbors.py [--sizes 250 500 1000 2000 4000 8000 16000] [--repeat 7]
                                      [--potential P] [--json] [--plot FILE.png]

For bcc Fe cells (a = 2.83 Å, moments 2.2 μB, small Gaussian jitter) of about 250 to 16000
atoms (each requested size is rounded to the nearest near-cubic bcc supercell, 2·a·b·c atoms),
times on one thread, after a warm-up call:

- the neighbour-list build exactly as the engine does it before an evaluation
  (``MTPEngine.neighbor_list(cfg)``: wrap, periodic images, linked-cell pair search);
- one energy + forces + stress + ∂E/∂m evaluation on a prepared list
  (``MTPEngine.evaluate(cfg, magmoms, symmetric=False, nl=nl)``), the reference the
  neighbour build is compared with, measured in the same run and interleaved with it so
  that machine load hits both alike.

Prints per N the median and minimum µs/atom of both, their ratio (medians), and at the end
the slope of a least-squares fit of log t_neighbour against log N (1.0 = linear; the same
slope of the evaluation is printed as the reference for what linear looks like on this
machine) and the per-atom neighbour time at the largest N over the smallest per-atom time
(≈ 1: no growth; a superlinear build would grow with N — the per-atom time of a linear build
falls with N in small cells, whose periodic images are a larger share of the work). Timings are noisy: compare medians and ratios, not single numbers. Progress goes to
stderr; with ``--json`` the last line of stdout is one JSON object.

Evaluations of the largest cells get fewer repeats when ``--repeat`` of them would take
longer than ``--eval-budget`` seconds (never fewer than 3, or ``--repeat`` if smaller).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as the mmtp command: no spinning BLAS threads

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtp_hpc.potentials.mtp.engine import MTPEngine  # noqa: E402
from mmtp_hpc.potentials.mtp.mlip_io import load_potential  # noqa: E402
from mmtp_hpc.system.lattice import bulk  # noqa: E402

DEFAULT_SIZES = [250, 500, 1000, 2000, 4000, 8000, 16000]


def bcc_repeat(n_atoms: int) -> tuple[int, int, int]:
    """The near-cubic supercell (a ≤ b ≤ c ≤ a + 1 conventional cells) with 2·a·b·c closest to
    ``n_atoms`` (ties: the more cubic, then the smaller)."""
    best = None
    top = max(1, round((n_atoms / 2) ** (1 / 3))) + 2
    for a in range(1, top + 1):
        for rep in ((a, a, a), (a, a, a + 1), (a, a + 1, a + 1)):
            n = 2 * rep[0] * rep[1] * rep[2]
            key = (abs(n - n_atoms), rep[2] - rep[0], n)
            if best is None or key < best[0]:
                best = (key, rep)
    return best[1]


def log_slope(n: list[float], t: list[float]) -> float | None:
    """Slope of the least-squares line through (log n, log t); None with fewer than 2 sizes."""
    if len(set(n)) < 2:
        return None
    return float(np.polyfit(np.log(n), np.log(t), 1)[0])


def entry_fit(rows: list[dict]) -> tuple[float, float, float] | None:
    """Fit t_neighbour = α·N + β·N_ghost (µs per atom, µs per periodic image), least squares in
    relative residuals; returns (α, β, largest relative residual), None with fewer than 2 sizes.

    The serial build also wraps, bins and stores the explicit periodic images (ghosts), whose
    number per atom falls as N^(-1/3) (a surface effect), so the per-atom time of a linear
    build falls with N towards α; this fit separates the two. Cells of a few dozen atoms,
    where fixed per-call costs dominate, fit it poorly (see the residual).
    """
    if len({r["n_atoms"] for r in rows}) < 2:
        return None
    a = np.array([[r["n_atoms"], r["ghosts_per_atom"] * r["n_atoms"]] for r in rows], dtype=float)
    t = np.array([r["neighbor_us_per_atom_median"] * r["n_atoms"] for r in rows])
    coef = np.linalg.lstsq(a / t[:, None], np.ones_like(t), rcond=None)[0]
    residual = float(np.max(np.abs(a @ coef / t - 1.0)))
    return float(coef[0]), float(coef[1]), residual


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(engine: MTPEngine, cfg, repeat: int, eval_budget: float) -> dict:
    """Interleaved timings (s) of the neighbour-list build and one evaluation on ``cfg``."""
    magmoms = cfg.magmoms
    nl = engine.neighbor_list(cfg)              # warm-up of the build, and the prepared list
    t0 = time.perf_counter()
    result = engine.evaluate(cfg, magmoms, symmetric=False, nl=nl)   # warm-up of the evaluation
    warm_eval = time.perf_counter() - t0
    n_eval = min(repeat, max(3, int(eval_budget / max(warm_eval, 1e-9))))
    t_nl, t_eval = [], []
    gc.collect()
    gc.disable()
    try:
        for k in range(repeat):
            t0 = time.perf_counter()
            built = engine.neighbor_list(cfg)
            t_nl.append(time.perf_counter() - t0)
            del built
            if k < n_eval:
                t0 = time.perf_counter()
                engine.evaluate(cfg, magmoms, symmetric=False, nl=nl)
                t_eval.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return {"neighbor": t_nl, "evaluation": t_eval, "nl": nl, "energy": result["energy"]}


def plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n_atoms"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for key, label, marker in (("evaluation", "evaluation (E+F+S+∂E/∂m)", "s"),
                               ("neighbor", "neighbour-list build", "o")):
        med = np.array([r[f"{key}_us_per_atom_median"] for r in rows])
        lo = np.array([r[f"{key}_us_per_atom_min"] for r in rows])
        ax.errorbar(n, med, yerr=[med - lo, np.zeros_like(med)], marker=marker, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms N")
    ax.set_ylabel("µs / atom (median; bar down to min)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--potential", default=str(REPO / "inputs/potentials/fe_bcc_analytic_l16.almtp"))
    p.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES,
                   help="atom counts (each rounded to the nearest near-cubic bcc cell)")
    p.add_argument("--repeat", type=int, default=7, help="timed calls per size (after one warm-up)")
    p.add_argument("--eval-budget", type=float, default=30.0,
                   help="seconds of timed evaluations per size before fewer repeats are used (min 3)")
    p.add_argument("--lattice-constant", type=float, default=2.83, help="bcc lattice constant (Å)")
    p.add_argument("--magmom", type=float, default=2.2, help="magnetic moment of every atom (μB)")
    p.add_argument("--jitter", type=float, default=0.05, help="Gaussian displacement std (Å)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads of the evaluation")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="log-log plot of both times")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    if any(n < 1 for n in args.sizes):
        p.error("--sizes must be positive")

    pot = load_potential(args.potential)
    engine = MTPEngine(pot, num_threads=args.threads)
    repeats = []
    for n in sorted(args.sizes):
        rep = bcc_repeat(n)
        if rep not in repeats:
            repeats.append(rep)

    rows = []
    for idx, rep in enumerate(repeats, 1):
        cfg = bulk("bcc", args.lattice_constant, rep, magmoms=args.magmom if pot.magnetic else None,
                   jitter=args.jitter, seed=1)
        n = len(cfg)
        progress(f"[{idx}/{len(repeats)}] {n} atoms ({rep[0]}x{rep[1]}x{rep[2]} bcc cells) ...")
        res = measure(engine, cfg, args.repeat, args.eval_budget)
        nl = res["nl"]
        row = {"n_atoms": n, "repeat": list(rep), "neighbors_mean": nl.neighbors_mean,
               "ghosts_per_atom": nl.n_ghosts / n, "energy_per_atom": res["energy"] / n,
               "n_neighbor": len(res["neighbor"]), "n_evaluation": len(res["evaluation"])}
        for key in ("neighbor", "evaluation"):
            row[f"{key}_us_per_atom_median"] = 1e6 * statistics.median(res[key]) / n
            row[f"{key}_us_per_atom_min"] = 1e6 * min(res[key]) / n
        row["neighbor_over_evaluation"] = (row["neighbor_us_per_atom_median"]
                                           / row["evaluation_us_per_atom_median"])
        rows.append(row)
        progress(f"    neighbour list {row['neighbor_us_per_atom_median']:.3f} µs/atom, evaluation "
                 f"{row['evaluation_us_per_atom_median']:.2f} µs/atom ({row['n_evaluation']} timed), "
                 f"ratio {100 * row['neighbor_over_evaluation']:.1f} %")
        del res, nl, cfg

    n_list = [r["n_atoms"] for r in rows]
    nb = [r["neighbor_us_per_atom_median"] for r in rows]
    ev = [r["evaluation_us_per_atom_median"] for r in rows]
    summary = {
        "potential": str(args.potential), "level": pot.level, "magnetic": pot.magnetic,
        "cutoff": float(pot.cutoff), "threads": engine.num_threads, "repeat": args.repeat,
        "lattice_constant": args.lattice_constant, "jitter": args.jitter,
        "rows": rows,
        # fitted to the total time per build / evaluation (median), t ∝ N^slope
        "slope_neighbor": log_slope(n_list, [t * n for t, n in zip(nb, n_list)]),
        "slope_evaluation": log_slope(n_list, [t * n for t, n in zip(ev, n_list)]),
        "neighbor_max_over_min": max(nb) / min(nb),
        "neighbor_growth": nb[-1] / min(nb),
        "evaluation_max_over_min": max(ev) / min(ev),
        "max_neighbor_over_evaluation": max(r["neighbor_over_evaluation"] for r in rows),
    }
    fit = entry_fit(rows)
    summary["fit_us_per_atom"], summary["fit_us_per_ghost"], summary["fit_max_relative_residual"] = (
        (None, None, None) if fit is None else fit)

    print(f"neighbour-list build vs one evaluation: {Path(args.potential).name} (level {pot.level}"
          f"{', magnetic' if pot.magnetic else ''}, cutoff {pot.cutoff:g} Å), bcc a = {args.lattice_constant} Å, "
          f"{engine.num_threads} thread(s), {args.repeat} repeats")
    print(f"{'N':>7} {'cells':>9} {'nbrs/at':>8} {'ghost/at':>9} {'neighbour µs/atom':>18} "
          f"{'evaluation µs/atom':>19} {'nb/eval':>8}")
    print(f"{'':>7} {'':>9} {'':>8} {'':>9} {'median (min)':>18} {'median (min)':>19} {'%':>8}")
    for r in rows:
        cells = "x".join(str(x) for x in r["repeat"])
        neighbour = f"{r['neighbor_us_per_atom_median']:.3f} ({r['neighbor_us_per_atom_min']:.3f})"
        evaluation = f"{r['evaluation_us_per_atom_median']:.2f} ({r['evaluation_us_per_atom_min']:.2f})"
        eval_note = "" if r["n_evaluation"] == r["n_neighbor"] else f" [{r['n_evaluation']} eval]"
        print(f"{r['n_atoms']:>7} {cells:>9} {r['neighbors_mean']:>8.1f} {r['ghosts_per_atom']:>9.2f} "
              f"{neighbour:>18} {evaluation:>19} {100 * r['neighbor_over_evaluation']:>8.1f}{eval_note}")

    def fmt(x):
        return "n/a (one size)" if x is None else f"{x:.3f}"

    print(f"slope of log t_neighbour vs log N: {fmt(summary['slope_neighbor'])} (1.0 = linear; "
          f"evaluation, same run: {fmt(summary['slope_evaluation'])})")
    print(f"per-atom neighbour time at the largest N / smallest per-atom time: {summary['neighbor_growth']:.2f} "
          f"(≈ 1: no growth with N; max/min over N {summary['neighbor_max_over_min']:.2f}, "
          f"evaluation max/min {summary['evaluation_max_over_min']:.2f})")
    if fit is not None and (fit[0] <= 0 or fit[1] < 0):
        print("fit t_neighbour = α N + β N_ghost: not meaningful for these sizes (per-call costs dominate)")
    elif fit is not None:
        print(f"fit t_neighbour = {fit[0]:.3f} µs x N + {fit[1]:.3f} µs x N_ghost (max residual "
              f"{100 * fit[2]:.0f} %): ghosts (periodic images) per atom fall as N^-1/3, so the µs/atom "
              f"of a linear build fall towards {fit[0]:.3f}")
    print(f"neighbour build / evaluation: max {100 * summary['max_neighbor_over_evaluation']:.1f} % "
          f"(target < 20 %)")
    if args.plot is not None:
        plot(args.plot, rows, f"{Path(args.potential).name}, {engine.num_threads} thread(s); "
                              f"neighbour slope {fmt(summary['slope_neighbor'])}")
        progress(f"plot written to {args.plot}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
