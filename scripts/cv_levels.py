"""Cross-validated choice of a campaign's MTP architecture (level, radial basis size R, magnetic
basis size M) on its DFT training set.

    python scripts/cv_levels.py inputs/learn_fe_abinit --archs 6,4,3 8,4,3 10,4,3 [--folds 5]
        [--seed 7] [--max-configs N] [--max-iter 3000]

For each architecture, K-fold cross-validation: the training set (``work/trainingset.h5``; its
first ``--max-configs`` configurations, the file only grows) is split at random (``--seed``) into
K folds; a potential of that architecture, with the campaign's magnetic interval and cutoffs,
is fitted from a random start with the campaign's training settings (``[train]`` weights,
symmetrisation; ``--max-iter`` iterations) to K − 1 folds and evaluated on the held-out one.
Printed per architecture: the number of parameters, the held-out RMSE, median and 90th
percentile of |error| of E per atom, the held-out RMSE of forces and ∂E/∂m, the training RMSE
of E. An actively learned set is made of configurations that were each new to the potential of
their time: a held-out one is often an extrapolation, so the RMSE is dominated by a few and
varies with the split and the random starts; compare several ``--seed`` values. The held-out errors,
never the validation against direct DFT, choose the architecture.
"""

from __future__ import annotations

import argparse
import dataclasses as dc
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtp_hpc.active.learn_settings import load_learn_settings  # noqa: E402
from mmtp_hpc.io.trainingset import read_trainingset_h5  # noqa: E402
from mmtp_hpc.potentials.mtp.basis import new_potential  # noqa: E402
from mmtp_hpc.potentials.mtp.engine import MTPEngine  # noqa: E402
from mmtp_hpc.potentials.mtp.mlip_io import load_potential  # noqa: E402
from mmtp_hpc.training.fit import train  # noqa: E402


def arch(text: str) -> tuple[int, int, int]:
    try:
        level, r, m = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LEVEL,R,M (e.g. 8,4,3)") from None
    return level, r, m


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("campaign", type=Path, help="the learn example's folder (input.toml, work/)")
    p.add_argument("--archs", type=arch, nargs="+", required=True, metavar="LEVEL,R,M")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-configs", type=int, default=None)
    p.add_argument("--max-iter", type=int, default=3000)
    args = p.parse_args()
    settings = load_learn_settings(args.campaign / "input.toml")
    work = args.campaign / settings.learn.workdir
    data = read_trainingset_h5(work / "trainingset.h5")
    if args.max_configs is not None:
        data = data[:args.max_configs]
    current = load_potential(work / "current.almtp")
    species = list(settings.learn.species)
    lo = [float(x) for x in np.atleast_1d(current.mag_min)]
    hi = [float(x) for x in np.atleast_1d(current.mag_max)]
    interval = list(zip(lo, hi, strict=True)) if len(lo) > 1 else (lo[0], hi[0])
    folds = np.array_split(np.random.default_rng(args.seed).permutation(len(data)), args.folds)
    base = dc.replace(settings.train_settings(first=True), init="random", max_iter=args.max_iter)
    print(f"cv_levels: {args.campaign}, {len(data)} configurations, {args.folds} folds (seed {args.seed}), "
          f"{args.max_iter} iterations per fit, weights of [train]", flush=True)
    for level, r, m in args.archs:
        t0 = time.perf_counter()
        err_e, err_f, err_g, train_e = [], [], [], []
        n_params = 0
        for k, held in enumerate(folds):
            out = set(held.tolist())
            fit_on = [c for i, c in enumerate(data) if i not in out]
            template = new_potential(level, len(species), radial_basis_size=r, mag_basis_size=m,
                                     mag_interval=interval, min_dist=float(current.min_dist),
                                     max_dist=float(current.max_dist), species_names=species, init="none")
            result = train(template, fit_on, dc.replace(base, seed=100 + k), log=lambda s: None)
            n_params = result.potential.n_params
            train_e.append(result.train_errors.get("energy_rmse", np.nan))
            engine = MTPEngine(result.potential)
            for i in held:
                c = data[i]
                res = engine.evaluate(c, symmetric=settings.train.symmetrize)
                err_e.append((res["energy"] - c.energy) / len(c) * 1000.0)
                if c.forces is not None:
                    err_f.append(np.ravel(res["forces"] - c.forces))
                if c.magnetic_gradient is not None:
                    err_g.append(np.ravel(res["magnetic_gradient"] - c.magnetic_gradient))
        e = np.array(err_e)

        def rmse(parts):
            return float(np.sqrt(np.mean(np.concatenate(parts) ** 2))) if parts else float("nan")

        print(f"level {level:2d} R {r} M {m}: {n_params:4d} parameters; held-out E RMSE {np.sqrt(np.mean(e**2)):7.2f} "
              f"meV/atom (median |e| {np.median(np.abs(e)):5.2f}, 90th percentile "
              f"{np.percentile(np.abs(e), 90):5.2f}), F {rmse(err_f):.4f} eV/Å, "
              f"dE/dm {rmse(err_g):.4f} eV/μB; training E {np.mean(train_e):.2f} meV/atom; "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
