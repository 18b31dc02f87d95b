"""Train level-10 and level-16 MTPs on the ferromagnetic-Fe DFT data of fe_gap22 and report errors.

Data: ../shared/data/fe_gap22/DB9..DB12.xyz concatenated in that order; validation = every
5th configuration counting from the first (indices 0, 5, 10, …), training = the rest.
Default weights (energy 1, forces 0.01, stress 0.001, weight_scaling 1).

Run (2 cores)::

    mpiexec -n 2 .venv/bin/python -m mpi4py scripts/train_fe_gap22.py [--levels 10 16] [--max-iter 1000]

Before training, the sign convention of the data set's ``virial`` is checked against the
energy–volume slope of DB9 (its README warns about the convention): MLIP-3's PlusStress
S = −∂E/∂ε has tr S = −3V dE/dV, positive under compression.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mmtp_hpc.io.formats import read_configurations
from mmtp_hpc.parallel.comm import get_comm
from mmtp_hpc.potentials.mtp.basis import new_potential
from mmtp_hpc.potentials.mtp.mlip_io import save_potential
from mmtp_hpc.training.fit import TrainSettings, train
from mmtp_hpc.training.loss import Objective, make_samples, rmse_from_sums

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fe_gap22"


def virial_sign(db9: list) -> int:
    """+1 if the file's virial is PlusStress (tr S = −3V dE/dV), −1 if it is the opposite."""
    volume = np.array([c.volume for c in db9])
    energy = np.array([c.energy for c in db9])
    trace = np.array([np.trace(c.virial) for c in db9])
    fit = np.polynomial.Polynomial.fit(volume, energy, 3)
    predicted = -3.0 * volume * fit.deriv()(volume)
    corr = float(np.corrcoef(predicted, trace)[0, 1])
    print(f"virial check on DB9: corr(tr virial, −3V dE/dV) = {corr:+.3f} -> sign "
          f"{'+1 (PlusStress, as MLIP-3)' if corr > 0 else '-1 (opposite convention)'}")
    return 1 if corr > 0 else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 16])
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--radial-size", type=int, default=8)
    parser.add_argument("--rmin", type=float, default=1.9)
    parser.add_argument("--rcut", type=float, default=5.0)
    parser.add_argument("--min-dist", choices=("auto", "keep"), default="auto",
                        help="auto: R_min = 0.99 × shortest distance in the data (what MLIP-3 does "
                             "silently; DB9 has pairs at 1.55 Å)")
    parser.add_argument("--optimizer", choices=("bfgs", "lbfgs"), default="bfgs")
    parser.add_argument("--out", default="fe_gap22_results")
    args = parser.parse_args()
    comm = get_comm()
    root = comm.Get_rank() == 0
    log = print if root else (lambda *a, **k: None)

    files = [DATA / f"DB{k}.xyz" for k in (9, 10, 11, 12)]
    sign = virial_sign(read_configurations(files[0])) if root else None
    sign = comm.bcast(sign, root=0)
    configs = []
    for f in files:
        configs += read_configurations(f, virial_sign=sign)
    valid = [c for k, c in enumerate(configs) if k % 5 == 0]
    train_set = [c for k, c in enumerate(configs) if k % 5 != 0]
    log(f"{len(configs)} configurations: {len(train_set)} training "
        f"({sum(len(c) for c in train_set)} atoms), {len(valid)} validation; {comm.Get_size()} rank(s)")
    out = Path(args.out)
    if root:
        out.mkdir(exist_ok=True)
    results = {}
    for level in args.levels:
        pot = new_potential(level, 1, radial_basis_size=args.radial_size, min_dist=args.rmin,
                            max_dist=args.rcut, species_names=["Fe"], init="none")
        settings = TrainSettings(max_iter=args.max_iter, log_every=50, min_dist=args.min_dist,
                                 optimizer=args.optimizer)
        t0 = time.perf_counter()
        result = train(pot, train_set, settings, comm=comm, log=log)
        wall = time.perf_counter() - t0
        samples = make_samples(result.potential, valid, settings.weights, comm)
        valid_errors = rmse_from_sums(Objective(result.potential, samples, comm)(
            result.potential.get_params(), gradient=False).sums)
        results[level] = {"train": result.train_errors, "validation": valid_errors, "wall_s": wall,
                          "params": result.potential.n_params, "ranks": comm.Get_size()}
        if root:
            save_potential(result.potential, out / f"fe_level{level}.mtp")
            log(f"level {level}: {result.potential.n_params} parameters, {wall:.0f} s on "
                f"{comm.Get_size()} rank(s)")
            for name, errs in (("train", result.train_errors), ("validation", valid_errors)):
                log(f"  {name:10s} E {errs['energy_rmse']:8.3f} meV/atom  F {errs['force_rmse']:.4f} eV/Å  "
                    f"S {errs.get('stress_rmse', float('nan')):.3f} GPa")
    if root:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        log(f"results written to {out / 'results.json'}")


if __name__ == "__main__":
    main()
