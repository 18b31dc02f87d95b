"""Cost of the training objective: loss + gradient with respect to all parameters, per
configuration-atom, against one energy + forces + stress (+ ∂E/∂m) evaluation of the same
configurations measured in the same run.

Two data sets:
- ``fe_gap22``: the real (non-magnetic) DFT data of ../shared/data/fe_gap22 (DB9..DB12, 1844
  configurations, mostly 1–2 atoms, some up to 128), level-10 and level-16 potentials;
- ``magnetic``: bcc Fe cells (16 and 54 atoms, strained, random collinear moments) labelled
  by the built-in analytic magnetic model (energies, forces, stresses, ∂E/∂m), level-16
  magnetic potential (M = 2), fitted with the spin-symmetrised objective.

Potentials have random coefficients (the cost does not depend on their values). One thread,
one rank; medians of ``--repeat`` calls (alternating loss+gradient, loss only, evaluation)::

    python scripts/bench_training.py [--repeat 5] [--sets fe_gap22 magnetic] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtp_hpc.io.formats import read_configurations  # noqa: E402
from mmtp_hpc.potentials.analytic import AnalyticMagneticModel  # noqa: E402
from mmtp_hpc.potentials.mtp import kernels  # noqa: E402
from mmtp_hpc.potentials.mtp.basis import new_potential  # noqa: E402
from mmtp_hpc.potentials.mtp.engine import MTPEngine  # noqa: E402
from mmtp_hpc.system.lattice import bulk  # noqa: E402
from mmtp_hpc.training.loss import Objective, Weights, make_samples  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def fe_gap22() -> list:
    configs = []
    for name in ("DB9", "DB10", "DB11", "DB12"):
        configs += read_configurations(DATA / "fe_gap22" / f"{name}.xyz")
    return configs


def magnetic_set(n_configs: int, seed: int = 5) -> list:
    model = AnalyticMagneticModel.default()
    rng = np.random.default_rng(seed)
    configs = []
    for k in range(n_configs):
        repeat = 2 if k % 2 == 0 else 3
        cfg = bulk("bcc", rng.uniform(2.78, 2.95), repeat, magmoms=2.2, jitter=0.08, seed=int(rng.integers(1 << 30)))
        cfg.magmoms = rng.uniform(-2.6, 2.6, size=len(cfg))
        configs.append(model.label(cfg))
    return configs


def bench(name: str, level: int, configs: list, magnetic: bool, repeat: int) -> dict:
    species = sorted({int(t) for c in configs for t in c.types})
    pot = new_potential(level, max(species) + 1, radial_basis_size=8, mag_basis_size=2 if magnetic else 1,
                        mag_interval=(-3.0, 3.0) if magnetic else None, min_dist=1.5, max_dist=5.0,
                        init="random", seed=level)
    if magnetic:
        pot.symmetric = True
    weights = Weights(energy=1.0, force=0.01, stress=0.001, magnetic=0.01 if magnetic else 0.0)
    samples = make_samples(pot, configs, weights)
    objective = Objective(pot, samples, num_threads=1)
    engine = MTPEngine(pot, num_threads=1)
    theta = pot.get_params()
    n_atoms = sum(len(c) for c in configs)

    def evaluate_all():
        for s in samples:
            engine.evaluate(s.cfg, nl=s.nl, symmetric=bool(magnetic))

    objective(theta, gradient=True)          # warm-up (batch set-up)
    evaluate_all()
    times = {"loss_gradient": [], "loss": [], "evaluation": []}
    for _ in range(repeat):
        for key, fn in (("loss_gradient", lambda: objective(theta, gradient=True)),
                        ("loss", lambda: objective(theta, gradient=False)),
                        ("evaluation", evaluate_all)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    row = {"set": name, "level": level, "magnetic": magnetic, "symmetric": bool(magnetic),
           "configurations": len(configs), "configuration_atoms": n_atoms, "n_params": pot.n_params}
    for key, values in times.items():
        row[f"{key}_s_median"] = statistics.median(values)
        row[f"{key}_us_per_atom"] = 1e6 * statistics.median(values) / n_atoms
    row["gradient_over_evaluation"] = row["loss_gradient_s_median"] / row["evaluation_s_median"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--sets", nargs="+", default=["fe_gap22", "magnetic"], choices=["fe_gap22", "magnetic"])
    p.add_argument("--levels", type=int, nargs="+", default=[10, 16])
    p.add_argument("--magnetic-configs", type=int, default=40)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    print(f"training objective, 1 thread, {kernels.variant} kernels, medians of {args.repeat}", flush=True)
    print(f"{'set':<10}{'level':>6}{'configs':>9}{'atoms':>8}{'params':>8}  {'loss+grad':>10}{'loss':>9}"
          f"{'E+F+S':>9}  µs per configuration-atom   grad/eval", flush=True)
    for name in args.sets:
        configs = fe_gap22() if name == "fe_gap22" else magnetic_set(args.magnetic_configs)
        for level in args.levels:
            row = bench(name, level, configs, name == "magnetic", args.repeat)
            rows.append(row)
            print(f"{name:<10}{level:>6}{row['configurations']:>9}{row['configuration_atoms']:>8}"
                  f"{row['n_params']:>8}  {row['loss_gradient_us_per_atom']:>10.1f}{row['loss_us_per_atom']:>9.1f}"
                  f"{row['evaluation_us_per_atom']:>9.1f}  {'':<26}{row['gradient_over_evaluation']:>8.2f}",
                  flush=True)
    if args.json:
        print(json.dumps({"kernels": kernels.variant, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
