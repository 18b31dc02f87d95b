"""The Cython engine equals the NumPy reference to 1e-12 relative on randomised inputs.

Levels 8–20, 1–3 species, magnetic basis sizes 1–6, radial basis sizes 1–10, per-species
intervals, triclinic cells, tiny cells with many self-images, vacancies, negative moments.
The sizes sweep what the file formats allow, so a kernel scratch buffer sized for less
than M·M or R·M shows up here (and under AddressSanitizer, ``scripts/asan_kernels.sh``).
"""

import numpy as np
import pytest
from util import bcc, random_configuration, random_potential

from mmtp_hpc.potentials.mtp import reference
from mmtp_hpc.potentials.mtp.engine import MTPEngine

RTOL = 1e-12


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(np.abs(a).max(initial=0.0), 1e-300)
    assert np.abs(a - b).max(initial=0.0) <= rtol * scale, (np.abs(a - b).max(), scale)


CASES = [
    # level, species, M, per-species interval, configuration
    (8, 1, 1, False, "triclinic"),
    (8, 3, 3, True, "tiny"),
    (10, 2, 2, False, "vacancies"),
    (12, 1, 2, True, "triclinic"),
    (16, 2, 2, False, "triclinic"),
    (16, 1, 1, False, "tiny"),
    (20, 2, 3, False, "triclinic"),
    (20, 1, 1, False, "vacancies"),
]


def make_config(kind, species, magnetic, seed):
    if kind == "triclinic":
        return random_configuration(n=7, species=species, seed=seed, magnetic=magnetic, cell_size=5.5)
    if kind == "tiny":  # a 2-atom cell far smaller than the cutoff: dozens of self-images
        return random_configuration(n=2, species=species, seed=seed, magnetic=magnetic, cell_size=2.6,
                                    triclinic=0.15, min_dist=1.8)
    cfg = bcc(repeat=2, species=species, seed=seed, vacancies=3, moment=0.5 if magnetic else None)
    if magnetic:
        cfg.magmoms[::2] *= -1.0  # negative moments
    return cfg


# level, species, M, R, per-species interval, configuration: magnetic basis sizes 4–6 and
# radial basis sizes up to 10 (the parameter-gradient scratch is (M·M), the site kernel's (R·M))
WIDE_CASES = [
    (8, 1, 4, 10, False, "triclinic"),
    (8, 2, 5, 9, True, "triclinic"),
    (10, 1, 6, 10, False, "vacancies"),
    (8, 2, 6, 7, True, "tiny"),
    (8, 1, 5, 1, False, "triclinic"),
    (8, 1, 1, 10, False, "triclinic"),
]


@pytest.mark.parametrize("level,species,mag,per_species,kind", CASES)
def test_engine_equals_reference(level, species, mag, per_species, kind):
    check_engine_equals_reference(level, species, mag, 6, per_species, kind)


@pytest.mark.parametrize("level,species,mag,radial,per_species,kind", WIDE_CASES)
def test_engine_equals_reference_wide_bases(level, species, mag, radial, per_species, kind):
    check_engine_equals_reference(level, species, mag, radial, per_species, kind)


def check_engine_equals_reference(level, species, mag, radial, per_species, kind):
    seed = level * 10 + species
    pot = random_potential(level=level, species=species, mag_size=mag, seed=seed,
                           per_species_interval=per_species, radial_size=radial)
    cfg = make_config(kind, species, mag > 1, seed)
    engine = MTPEngine(pot)
    rng = np.random.default_rng(seed)
    n = len(cfg)
    tangent = (rng.normal(size=(n, 3)), rng.normal(size=(3, 3)), rng.normal(size=n))
    for symmetric in ([False, True] if mag > 1 else [False]):
        ref = reference.evaluate(pot, cfg, param_grad=True, tangent=tangent, symmetric=symmetric)
        fast = engine.evaluate(cfg, basis=True, symmetric=symmetric)
        grads = engine.param_gradients(cfg, tangent=tangent, symmetric=symmetric)
        for key in ("energy", "site_energies", "forces", "virial", "stress", "basis"):
            close(ref[key], fast[key])
        if mag > 1:
            close(ref["magnetic_gradient"], fast["magnetic_gradient"])
        for key in ("site_param_grad", "energy_param_grad", "tangent", "tangent_param_grad"):
            close(ref[key], grads[key])


def test_threads_do_not_change_results():
    pot = random_potential(level=12, species=2, mag_size=2, seed=3)
    cfg = bcc(repeat=3, species=2, seed=3)
    one = MTPEngine(pot, num_threads=1).evaluate(cfg)
    two = MTPEngine(pot, num_threads=2).evaluate(cfg)
    for key in ("site_energies", "forces", "magnetic_gradient", "virial"):
        np.testing.assert_array_equal(one[key], two[key])


def test_full_jacobians_match_reference():
    pot = random_potential(level=8, species=2, mag_size=2, seed=5)
    cfg = random_configuration(n=3, species=2, seed=5, cell_size=4.0)
    ref = reference.jacobians(pot, cfg)
    fast = MTPEngine(pot).jacobians(cfg)
    for key in ("forces", "virial", "magnetic_gradient"):
        close(ref[key], fast[key])


def test_site_energies_of_subset_equal_full_evaluation():
    pot = random_potential(level=12, species=2, mag_size=2, seed=9)
    cfg = bcc(repeat=2, species=2, seed=9)
    engine = MTPEngine(pot)
    nl = engine.neighbor_list(cfg)
    full = engine.evaluate(cfg, nl=nl)["site_energies"]
    centers = np.array([5, 0, 11, 3])
    part = engine.site_energies_of(nl, cfg.types[nl.image_of], cfg.magmoms[nl.image_of], centers)
    np.testing.assert_array_equal(part, full[centers])


@pytest.mark.parametrize("symmetric", [False, True])
def test_basis_jacobian_equals_linear_part_of_full_jacobians(symmetric):
    pot = random_potential(level=10, species=2, mag_size=2, seed=13, symmetric=symmetric)
    cfg = random_configuration(n=4, species=2, seed=13, cell_size=4.2)
    engine = MTPEngine(pot)
    full = reference.jacobians(pot, cfg)
    lin = engine.basis_jacobian(cfg)
    xi = slice(pot.n_radial_params + pot.species_count, pot.n_params)
    close(full["forces"][..., xi], lin["forces"])
    close(full["virial"][..., xi], lin["virial"])
    close(full["magnetic_gradient"][..., xi], lin["magnetic_gradient"])
    close(reference.evaluate(pot, cfg, param_grad=True)["energy_param_grad"][xi], lin["basis_sum"])
