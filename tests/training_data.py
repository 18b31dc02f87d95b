"""A known magnetic MTP and data labelled by it: the recovery problem of the training tests."""

from __future__ import annotations

import numpy as np
from util import bcc, random_potential

from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.training.fit import TrainSettings, prepare_potential


def known_problem(n_configs: int = 24, level: int = 8, seed: int = 5):
    """(template potential, configurations labelled by a hidden 'true' potential of the same form)."""
    template = random_potential(level=level, species=1, mag_size=2, seed=1, rmin=1.8, rcut=4.5,
                                radial_size=6)
    template.radial_coeffs = template.moment_coeffs = template.species_coeffs = None
    configs = [bcc(a=2.85 + 0.05 * np.sin(k), repeat=2, seed=k, jitter=0.1) for k in range(n_configs)]
    true, _ = prepare_potential(template, configs, TrainSettings(seed=99), log=lambda m: None)
    rng = np.random.default_rng(seed)
    true.radial_coeffs = rng.uniform(-1, 1, size=true.radial_shape) * 0.3
    true.moment_coeffs = rng.normal(size=true.n_basis) * 0.1
    true.species_coeffs[:] = -3.0
    engine = MTPEngine(true)
    for cfg in configs:
        out = engine.evaluate(cfg)
        cfg.energy, cfg.forces, cfg.virial = out["energy"], out["forces"], out["virial"]
        cfg.magnetic_gradient = out["magnetic_gradient"]
    return template, configs, true
