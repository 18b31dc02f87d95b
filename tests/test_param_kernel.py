"""The parameter kernels on the column layout (``_kernels.param_terms`` and
``_kernels.basis_jacobian``, one pass when spin-symmetrised) equal the NumPy reference
(``reference.py``: per atom, two passes M and −M) to 1e-12.

Random potentials: M = 1..6, R up to 10, 1–3 species, symmetric (one pass) and asymmetric
(two-pass fallback) magnetic intervals; with and without a tangent; site rows (grades); the
grouped mode of the batched training objective against the per-configuration objective;
thread counts; the basis Jacobian against the linear part of the reference's Jacobians and
finite differences.
"""

import numpy as np
import pytest
from util import bcc, random_configuration, random_potential

from mmtp_hpc.potentials.mtp import reference
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.kernels import kernels as _kernels
from mmtp_hpc.training.batch import Batch
from mmtp_hpc.training.loss import SUM_KEYS, Objective, Weights, make_samples

RTOL = 1e-12


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(initial=0.0), 1e-300)
    diff = np.abs(a - b).max(initial=0.0)
    assert diff <= rtol * scale, (diff, scale)


def make_potential(level, species, mag, radial, interval, seed):
    pot = random_potential(level=level, species=species, mag_size=mag, radial_size=radial, seed=seed,
                           per_species_interval=interval == "per_species", symmetric=mag > 1)
    if mag > 1 and interval == "global_symmetric":
        pot.mag_min = np.full(species, -2.8)
        pot.mag_max = np.full(species, 2.8)
    return pot


def make_config(kind, species, magnetic, seed):
    if kind == "triclinic":
        return random_configuration(n=7, species=species, seed=seed, magnetic=magnetic, cell_size=5.5)
    if kind == "tiny":
        return random_configuration(n=2, species=species, seed=seed, magnetic=magnetic, cell_size=2.6,
                                    triclinic=0.15, min_dist=1.8)
    cfg = bcc(repeat=2, species=species, seed=seed, vacancies=3, moment=1.1 if magnetic else None)
    if magnetic:
        cfg.magmoms[::2] *= -1.0
    return cfg


def reference_gradients(pot, cfg, site, tangent, symmetric):
    """What ``MTPEngine.param_gradients`` returns, from the NumPy reference."""
    ref = reference.evaluate(pot, cfg, param_grad=True, tangent=tangent, symmetric=symmetric)
    keys = ["site_energies", "energy"] + (["site_param_grad", "energy_param_grad"] if site else [])
    keys += ["tangent", "tangent_param_grad"] if tangent is not None else []
    return {k: ref[k] for k in keys}


# level, species, M, R, interval (asymmetric: two-pass fallback), configuration
CASES = [
    (6, 1, 1, 6, "asymmetric", "triclinic"),
    (10, 2, 1, 8, "asymmetric", "bcc"),
    (16, 3, 1, 10, "asymmetric", "tiny"),
    (8, 1, 2, 6, "global_symmetric", "triclinic"),
    (12, 2, 2, 8, "per_species", "bcc"),
    (16, 1, 2, 8, "global_symmetric", "bcc"),
    (16, 3, 2, 10, "per_species", "triclinic"),
    (10, 2, 3, 7, "per_species", "tiny"),
    (8, 2, 4, 10, "global_symmetric", "triclinic"),
    (8, 1, 5, 9, "per_species", "bcc"),
    (6, 3, 6, 10, "per_species", "triclinic"),
    (12, 2, 2, 8, "asymmetric", "bcc"),
    (8, 2, 3, 10, "asymmetric", "triclinic"),
    (6, 1, 6, 5, "asymmetric", "tiny"),
    (20, 2, 2, 8, "per_species", "triclinic"),
]


@pytest.mark.parametrize("level,species,mag,radial,interval,kind", CASES)
def test_columns_equal_reference(level, species, mag, radial, interval, kind):
    seed = 7 * level + 3 * species + mag
    pot = make_potential(level, species, mag, radial, interval, seed)
    cfg = make_config(kind, species, mag > 1, seed)
    eng = MTPEngine(pot)
    if mag > 1 and interval != "asymmetric":
        assert eng.param_one_pass()
    else:
        assert not eng.param_one_pass()
    rng = np.random.default_rng(seed)
    n = len(cfg)
    tangent = (rng.normal(size=(n, 3)), rng.normal(size=(3, 3)), rng.normal(size=n))
    for symmetric in ([False, True] if mag > 1 else [False]):
        b = reference_gradients(pot, cfg, True, tangent, symmetric)
        for tan in (None, tangent):
            for site in (True, False):
                a = eng.param_gradients(cfg, site=site, tangent=tan, symmetric=symmetric)
                want = {"site_energies", "energy"}
                want |= {"site_param_grad", "energy_param_grad"} if site else set()
                want |= {"tangent", "tangent_param_grad"} if tan is not None else set()
                assert set(a) == want
                for key in a:
                    close(a[key], b[key])


@pytest.mark.parametrize("mag,interval", [(2, "per_species"), (3, "asymmetric"), (1, "asymmetric")])
def test_grade_rows_on_list_and_threads(mag, interval):
    pot = make_potential(12, 2, mag, 8, interval, 11)
    cfg = bcc(repeat=3, species=2, seed=11, moment=1.0 if mag > 1 else None)
    if mag > 1:
        cfg.magmoms[1::3] *= -1.0
    a = MTPEngine(pot).param_gradients(cfg, site=True)
    b = reference_gradients(pot, cfg, True, None, None)
    close(a["site_param_grad"], b["site_param_grad"])
    two = MTPEngine(pot, num_threads=2).param_gradients(cfg, site=True)
    np.testing.assert_array_equal(a["site_param_grad"], two["site_param_grad"])
    np.testing.assert_array_equal(a["site_energies"], two["site_energies"])


@pytest.mark.parametrize("symmetric_interval", [True, False])
@pytest.mark.parametrize("species,mag,radial", [(1, 2, 8), (2, 3, 6), (2, 1, 8)])
def test_grouped_rows_equal_per_configuration(symmetric_interval, species, mag, radial):
    """The batched objective (grouped kernel rows: one row per configuration, e_weight) equals
    the per-configuration objective (``param_gradients`` of each configuration, whose kernel
    the tests above check against the reference), value and gradient, symmetrised or not."""
    pot = make_potential(10, species, mag, radial, "per_species" if symmetric_interval else "asymmetric", 21)
    pot.symmetric = mag > 1
    rng = np.random.default_rng(21)
    configs = []
    for k in range(5):
        cfg = make_config(("bcc", "triclinic", "tiny")[k % 3], species, mag > 1, 21 + k)
        n = len(cfg)
        cfg.energy = float(rng.normal()) * n
        cfg.forces = rng.normal(size=(n, 3))
        if k % 2 == 0:
            cfg.virial = rng.normal(size=(3, 3))
        if mag > 1:
            cfg.magnetic_gradient = rng.normal(size=n)
        configs.append(cfg)
    weights = Weights(energy=1.0, force=0.1, stress=0.01, magnetic=0.05 if mag > 1 else 0.0)
    samples = make_samples(pot, configs, weights)
    theta = pot.get_params()
    batched = Objective(pot, samples, batched=True, num_threads=1)(theta)
    single = Objective(pot, samples, batched=False, num_threads=1)(theta)
    close(batched.loss, single.loss)
    close(batched.gradient, single.gradient)


def test_symmetric_kernel_needs_magnetic_potential():
    pot = random_potential(level=6, species=1, mag_size=1, seed=2)
    cfg = random_configuration(n=3, species=1, seed=2, magnetic=False)
    eng = MTPEngine(pot)
    nl = eng.neighbor_list(cfg)
    with pytest.raises(ValueError):
        _kernels.param_terms(eng.tables(), np.ascontiguousarray(nl.positions), np.zeros(nl.n_total, np.int32),
                             np.zeros(nl.n_total), nl.offsets.astype(np.int64), nl.neighbors.astype(np.int64),
                             nl.n_local, np.zeros(nl.n_local), np.zeros((0, pot.n_params)), False,
                             np.zeros((0, 3)), np.zeros(0), False, np.zeros(0), np.zeros((0, pot.n_params)),
                             1, symmetric=True)


@pytest.mark.parametrize("level,species,mag,radial,interval,kind",
                         [CASES[0], CASES[3], CASES[6], CASES[7], CASES[9], CASES[12]])
def test_basis_jacobian_equals_reference(level, species, mag, radial, interval, kind):
    """The column basis Jacobian (one pass when spin-symmetrised) equals the linear-coefficient
    part of the reference's full parameter Jacobians, every output."""
    seed = 5 * level + species + 11 * mag
    pot = make_potential(level, species, mag, radial, interval, seed)
    cfg = make_config(kind, species, mag > 1, seed)
    eng = MTPEngine(pot)
    xi = slice(pot.n_radial_params + pot.species_count, pot.n_params)
    for symmetric in ([False, True] if mag > 1 else [False]):
        lin = eng.basis_jacobian(cfg, symmetric=symmetric)
        full = reference.jacobians(pot, cfg, symmetric=symmetric)
        close(lin["forces"], full["forces"][..., xi])
        close(lin["virial"], full["virial"][..., xi])
        if mag > 1:
            close(lin["magnetic_gradient"], full["magnetic_gradient"][..., xi])
        ref = reference.evaluate(pot, cfg, param_grad=True, symmetric=symmetric)
        close(lin["basis_sum"], ref["energy_param_grad"][xi])


def test_basis_jacobian_is_the_derivative_of_the_basis_sum():
    """Finite differences of Σ_i B_α(i) (the energy row of the linear coefficients) in the
    positions and moments give the column kernel's forces and ∂/∂m rows, symmetrised."""
    pot = make_potential(10, 2, 3, 8, "per_species", 5)
    cfg = make_config("triclinic", 2, True, 5)
    eng = MTPEngine(pot)
    jac = eng.basis_jacobian(cfg, symmetric=True)
    h = 1e-5
    for atom, d in ((0, 0), (3, 2), (5, 1)):
        plus, minus = cfg.copy(), cfg.copy()
        plus.positions[atom, d] += h
        minus.positions[atom, d] -= h
        fd = (eng.basis_jacobian(plus, symmetric=True)["basis_sum"]
              - eng.basis_jacobian(minus, symmetric=True)["basis_sum"]) / (2 * h)
        close(jac["forces"][atom, d], -fd, rtol=1e-6)
    for atom in (1, 4):
        mp, mm = cfg.magmoms.copy(), cfg.magmoms.copy()
        mp[atom] += h
        mm[atom] -= h
        fd = (eng.basis_jacobian(cfg, mp, symmetric=True)["basis_sum"]
              - eng.basis_jacobian(cfg, mm, symmetric=True)["basis_sum"]) / (2 * h)
        close(jac["magnetic_gradient"][atom], fd, rtol=1e-6)
