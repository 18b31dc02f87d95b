"""Make the shipped level-16 magnetic MTPs (bcc Fe, B2 Fe–Al) from the built-in analytic model.

For each system: generate strained, thermally displaced supercells with constrained moments
(scattered around the relaxed ones, some flipped), label them with the analytic model (energy,
forces, virial, ∂E/∂m — like constrained-moment DFT), train a spin-symmetrised level-16 MTP
with per-species magnetic intervals, and write to inputs/potentials/:

    <name>.almtp           the potential with its MaxVol active set (grades work right away)
    <name>_train.h5        the training set (HDF5, with provenance)
    <name>_errors.txt      training and validation error report

Run: ``python scripts/make_shipped_potentials.py [--systems fe feal] [--max-iter 400]``
(deterministic for fixed seeds; ~5–15 minutes per system on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mmtp_hpc.active.maxvol import attach_active_set
from mmtp_hpc.io.trainingset import write_trainingset_h5
from mmtp_hpc.potentials.analytic import AnalyticMagneticModel
from mmtp_hpc.potentials.mtp.basis import new_potential
from mmtp_hpc.potentials.mtp.mlip_io import save_potential
from mmtp_hpc.system.lattice import bulk
from mmtp_hpc.training.fit import TrainSettings, train
from mmtp_hpc.training.report import error_report, format_report

OUT = Path(__file__).resolve().parents[1] / "inputs" / "potentials"

SYSTEMS = {
    # name: lattice, a range (Å), species names, sublattice types
    "fe": {"lattice": "bcc", "a": (2.74, 3.00), "species": ["Fe"], "types": (0, 0), "file": "fe_bcc_analytic_l16"},
    "feal": {"lattice": "b2", "a": (2.80, 3.00), "species": ["Fe", "Al"], "types": (0, 1),
             "file": "feal_b2_analytic_l16"},
}


def make_configurations(system: dict, model: AnalyticMagneticModel, n: int, seed: int) -> list:
    """Strained, displaced 2×2×2 supercells with constrained moments around the relaxed ones."""
    rng = np.random.default_rng(seed)
    configs = []
    for k in range(n):
        a = rng.uniform(*system["a"])
        cfg = bulk(system["lattice"], a, 2, sublattice_types=system["types"])
        strain = rng.normal(scale=0.015, size=(3, 3))
        strain = 0.5 * (strain + strain.T)
        deform = np.eye(3) + strain
        cfg.cell = cfg.cell @ deform.T
        cfg.positions = cfg.positions @ deform.T
        cfg.positions += rng.normal(scale=rng.uniform(0.02, 0.15), size=cfg.positions.shape)
        if len(system["species"]) > 1 and rng.random() < 0.3:   # a few antisite pairs
            fe, al = np.flatnonzero(cfg.types == 0), np.flatnonzero(cfg.types == 1)
            i, j = rng.choice(fe), rng.choice(al)
            cfg.types[i], cfg.types[j] = 1, 0
        relaxed = model.relax_moments(cfg)
        spread = rng.uniform(0.05, 0.4)
        moments = relaxed + rng.normal(scale=spread, size=len(cfg)) * (cfg.types == 0)
        moments += rng.normal(scale=0.05, size=len(cfg)) * (cfg.types == 1)
        if rng.random() < 0.15:  # flipped moments: Monte Carlo and Langevin runs visit them
            flip = rng.random(len(cfg)) < 0.15
            moments[flip] *= -1.0
        if rng.random() < 0.25:  # relaxed (unconstrained) configurations too
            moments = relaxed
        cfg.magmoms = moments
        labelled = model.label(cfg)
        labelled.features["provenance"] = f"analytic model, seed {seed}, #{k}, a={a:.4f}"
        configs.append(labelled)
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-valid", type=int, default=40)
    parser.add_argument("--max-iter", type=int, default=400)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    model = AnalyticMagneticModel.default()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.systems:
        system = SYSTEMS[name]
        t0 = time.perf_counter()
        train_set = make_configurations(system, model, args.n_train, seed=1)
        valid_set = make_configurations(system, model, args.n_valid, seed=2)
        print(f"{name}: {len(train_set)} training / {len(valid_set)} validation configurations "
              f"labelled in {time.perf_counter() - t0:.1f} s")
        pot = new_potential(16, len(system["species"]), radial_basis_size=8, mag_basis_size=2,
                            mag_interval=(-3.0, 3.0), min_dist=2.0, max_dist=5.0,
                            species_names=system["species"], init="none")
        settings = TrainSettings(max_iter=args.max_iter, magnetic_weight=0.01, symmetrize=True,
                                 magnetic_interval="auto", min_dist="auto", log_every=50, seed=0)
        result = train(pot, train_set, settings)
        trained = result.potential
        trained.species_names = system["species"]
        attach_active_set(trained, train_set)
        stem = args.out / system["file"]
        save_potential(trained, stem.with_suffix(".almtp"))
        write_trainingset_h5(stem.parent / f"{stem.name}_train.h5", train_set,
                             provenance=[c.features["provenance"] for c in train_set],
                             species=system["species"])
        text = [f"# {system['file']}: level 16, R=8, M=2, symmetrised; trained on the built-in analytic "
                f"model ({result.wall_time:.0f} s, {settings.max_iter} iterations max)",
                *result.notes, "",
                format_report(error_report(trained, train_set, species_names=system["species"]),
                              "training set"), "",
                format_report(error_report(trained, valid_set, species_names=system["species"]),
                              "validation set")]
        (stem.parent / f"{stem.name}_errors.txt").write_text("\n".join(text) + "\n")
        print("\n".join(text))


if __name__ == "__main__":
    main()
