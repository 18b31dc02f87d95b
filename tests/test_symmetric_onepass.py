"""One-pass spin-symmetrised evaluation (issue #7) equals the two-pass ½[X(M) + X(−M)].

With symmetric magnetic intervals (m_min = −m_max for every species) ψ_b(−m) = (−1)^b ψ_b(m),
so the engine evaluates E(M) and E(−M) in one neighbour pass
(``_kernels.site_terms_symmetric``). Here it is compared with the two-pass path
(``engine.symmetric_one_pass = False``) to 1e-12 relative: random potentials of levels 8–20,
1–3 species, M = 2–3, global or per-species intervals, triclinic and tiny cells, negative
moments; the shipped potentials; the local layout used by MD, the Monte Carlo site energies,
the force fields, threads, and finite differences of the symmetrised energy.
"""

from pathlib import Path

import numpy as np
import pytest
from util import bcc, random_configuration, random_potential

from mmtp_hpc.dynamics.forcefield import ForceField
from mmtp_hpc.dynamics.state import MDState
from mmtp_hpc.potentials.mtp.engine import MagneticRangeWarning, MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential

RTOL = 1e-12
POTENTIALS = Path(__file__).resolve().parents[1] / "inputs" / "potentials"
KEYS = ("energy", "site_energies", "forces", "virial", "stress", "magnetic_gradient", "basis")


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(np.abs(b).max(initial=0.0), 1e-300)
    diff = np.abs(a - b).max(initial=0.0)
    assert diff <= rtol * scale, (diff, scale)
    return diff / scale


def symmetric_potential(level, species, mag, seed, per_species):
    pot = random_potential(level=level, species=species, mag_size=mag, seed=seed,
                           per_species_interval=per_species, symmetric=True)
    if not per_species:  # one global symmetric interval
        pot.mag_min = np.full(species, -2.8)
        pot.mag_max = np.full(species, 2.8)
    return pot


def make_config(kind, species, seed):
    if kind == "triclinic":
        return random_configuration(n=7, species=species, seed=seed, cell_size=5.5)
    if kind == "tiny":
        return random_configuration(n=2, species=species, seed=seed, cell_size=2.6, triclinic=0.15,
                                    min_dist=1.8)
    cfg = bcc(repeat=2, species=species, seed=seed, vacancies=2, moment=1.2)
    cfg.magmoms[::2] *= -1.0
    return cfg


def both(engine, cfg, **kw):
    engine.symmetric_one_pass = True
    one = engine.evaluate(cfg, symmetric=True, **kw)
    engine.symmetric_one_pass = False
    two = engine.evaluate(cfg, symmetric=True, **kw)
    engine.symmetric_one_pass = True
    return one, two


CASES = [
    # level, species, M, per-species interval, configuration
    (8, 1, 2, False, "triclinic"),
    (8, 3, 3, True, "tiny"),
    (10, 2, 2, True, "bcc"),
    (12, 1, 3, False, "triclinic"),
    (16, 2, 2, True, "triclinic"),
    (16, 3, 2, False, "bcc"),
    (20, 2, 3, True, "triclinic"),
    (20, 1, 2, False, "tiny"),
]


@pytest.mark.parametrize("level,species,mag,per_species,kind", CASES)
def test_one_pass_equals_two_pass(level, species, mag, per_species, kind):
    seed = 100 + level * 10 + species
    pot = symmetric_potential(level, species, mag, seed, per_species)
    cfg = make_config(kind, species, seed)
    engine = MTPEngine(pot)
    assert engine.one_pass_symmetric()
    one, two = both(engine, cfg, basis=True)
    for key in KEYS:
        close(one[key], two[key])
    # the symmetrised energy is even in M, its gradient odd — bit for bit, as with two passes
    flipped = engine.evaluate(cfg, -cfg.magmoms, symmetric=True)
    np.testing.assert_array_equal(flipped["site_energies"], one["site_energies"])
    np.testing.assert_array_equal(flipped["forces"], one["forces"])
    np.testing.assert_array_equal(-flipped["magnetic_gradient"], one["magnetic_gradient"])
    e_one, e_two = both(engine, cfg, derivatives=False)
    close(e_one["site_energies"], e_two["site_energies"])


@pytest.mark.parametrize("name,species", [("fe_bcc_analytic_l16.almtp", 1), ("feal_b2_analytic_l16.almtp", 2)])
def test_shipped_potentials(name, species):
    pot = load_potential(POTENTIALS / name)
    engine = MTPEngine(pot)
    assert engine.one_pass_symmetric(), "shipped potentials have symmetric intervals"
    cfg = bcc(repeat=3, species=species, seed=7, moment=None)
    rng = np.random.default_rng(7)
    span = pot.mag_max[cfg.types]
    cfg.magmoms = rng.uniform(-0.9, 0.9, size=len(cfg)) * span   # negative moments included
    one, two = both(engine, cfg, basis=True)
    for key in KEYS:
        close(one[key], two[key])


def test_non_symmetric_interval_falls_back():
    pot = random_potential(level=10, species=2, mag_size=2, seed=4, symmetric=True)  # [-2.5, 3.0]
    engine = MTPEngine(pot)
    assert not engine.one_pass_symmetric()
    cfg = random_configuration(n=6, species=2, seed=4, cell_size=5.0)
    one, two = both(engine, cfg)
    for key in KEYS[:-1]:
        np.testing.assert_array_equal(one[key], two[key])
    # compute_local(symmetric=True) falls back to two passes as well
    nl = engine.neighbor_list(cfg)
    types_all, mag_all = cfg.types[nl.image_of], cfg.magmoms[nl.image_of]
    res = engine.compute_local(nl, types_all, mag_all, symmetric=True)
    plus = engine.compute_local(nl, types_all, mag_all)
    minus = engine.compute_local(nl, types_all, -mag_all)
    np.testing.assert_array_equal(res.forces, 0.5 * (plus.forces + minus.forces))
    np.testing.assert_array_equal(res.magnetic_gradient, 0.5 * (plus.magnetic_gradient - minus.magnetic_gradient))


def test_non_magnetic_symmetric_is_plain():
    pot = random_potential(level=10, species=1, mag_size=1, seed=2)
    engine = MTPEngine(pot)
    assert not engine.one_pass_symmetric()
    cfg = random_configuration(n=5, species=1, seed=2, magnetic=False)
    nl = engine.neighbor_list(cfg)
    a = engine.compute_local(nl, cfg.types[nl.image_of], np.zeros(nl.n_total), symmetric=True)
    b = engine.compute_local(nl, cfg.types[nl.image_of], np.zeros(nl.n_total))
    np.testing.assert_array_equal(a.forces, b.forces)


def test_local_layout_and_site_energies_of():
    pot = symmetric_potential(12, 2, 2, 11, True)
    engine = MTPEngine(pot)
    cfg = make_config("triclinic", 2, 11)
    nl = engine.neighbor_list(cfg)
    types_all, mag_all = cfg.types[nl.image_of], cfg.magmoms[nl.image_of]
    res = engine.compute_local(nl, types_all, mag_all, symmetric=True, basis=True)
    plus = engine.compute_local(nl, types_all, mag_all, basis=True)
    minus = engine.compute_local(nl, types_all, -mag_all, basis=True)
    close(res.site_energies, 0.5 * (plus.site_energies + minus.site_energies))
    close(res.forces, 0.5 * (plus.forces + minus.forces))
    close(res.magnetic_gradient, 0.5 * (plus.magnetic_gradient - minus.magnetic_gradient))
    close(res.virial, 0.5 * (plus.virial + minus.virial))
    close(res.basis, 0.5 * (plus.basis + minus.basis))
    centers = np.array([0, 3, 5], dtype=np.int64)
    sym = engine.site_energies_of(nl, types_all, mag_all, centers, symmetric=True)
    ref = 0.5 * (engine.site_energies_of(nl, types_all, mag_all, centers)
                 + engine.site_energies_of(nl, types_all, -mag_all, centers))
    close(sym, ref)
    close(sym, res.site_energies[centers])


def test_threads_do_not_change_one_pass():
    pot = symmetric_potential(12, 2, 2, 3, False)
    cfg = bcc(repeat=3, species=2, seed=3)
    one = MTPEngine(pot, num_threads=1).evaluate(cfg, symmetric=True)
    two = MTPEngine(pot, num_threads=2).evaluate(cfg, symmetric=True)
    for key in ("site_energies", "forces", "magnetic_gradient", "virial"):
        np.testing.assert_array_equal(one[key], two[key])


def test_one_pass_finite_differences():
    pot = symmetric_potential(10, 2, 3, 21, True)
    engine = MTPEngine(pot)
    cfg = make_config("triclinic", 2, 21)
    out = engine.evaluate(cfg, symmetric=True)
    h = 1e-5
    for i in range(2):
        for d in range(3):
            pos = cfg.positions.copy()
            pos[i, d] += h
            ep = engine.evaluate(cfg.__class__(cell=cfg.cell, positions=pos, types=cfg.types, pbc=cfg.pbc,
                                               magmoms=cfg.magmoms), symmetric=True, derivatives=False)["energy"]
            pos[i, d] -= 2 * h
            em = engine.evaluate(cfg.__class__(cell=cfg.cell, positions=pos, types=cfg.types, pbc=cfg.pbc,
                                               magmoms=cfg.magmoms), symmetric=True, derivatives=False)["energy"]
            assert abs(-(ep - em) / (2 * h) - out["forces"][i, d]) < 1e-6 * max(1.0, abs(out["forces"][i, d]))
        mag = cfg.magmoms.copy()
        mag[i] += h
        ep = engine.evaluate(cfg, mag, symmetric=True, derivatives=False)["energy"]
        mag[i] -= 2 * h
        em = engine.evaluate(cfg, mag, symmetric=True, derivatives=False)["energy"]
        g = out["magnetic_gradient"][i]
        assert abs((ep - em) / (2 * h) - g) < 1e-6 * max(1.0, abs(g))


def test_forcefield_one_pass_equals_two_pass():
    pot = load_potential(POTENTIALS / "fe_bcc_analytic_l16.almtp")
    cfg = bcc(repeat=3, species=1, seed=5, moment=None)
    n = len(cfg)
    rng = np.random.default_rng(5)
    state = MDState(positions=cfg.positions, velocities=np.zeros((n, 3)), masses=np.ones(n),
                    types=cfg.types, ids=np.arange(n), magmoms=rng.uniform(-3.0, 3.0, size=n),
                    cell=cfg.cell, pbc=cfg.pbc, species=["Fe"])
    results = []
    for one_pass in (True, False):
        engine = MTPEngine(pot)
        engine.symmetric_one_pass = one_pass
        ff = ForceField(engine, symmetric=True, skin=0.5)
        ff.setup(state)
        results.append(ff.evaluate(state))
    a, b = results
    close(a.energy, b.energy)
    close(a.site_energies, b.site_energies)
    close(a.forces, b.forces)
    close(a.virial, b.virial)
    close(a.magnetic_gradient, b.magnetic_gradient)


def test_out_of_interval_moments_still_agree():
    """No clamping: moments outside the interval are evaluated as-is by both paths."""
    pot = symmetric_potential(8, 1, 2, 9, False)
    engine = MTPEngine(pot)
    cfg = make_config("triclinic", 1, 9)
    cfg.magmoms = cfg.magmoms * 2.0
    with pytest.warns(MagneticRangeWarning):
        one, two = both(engine, cfg)
    for key in KEYS[:-1]:
        close(one[key], two[key])


@pytest.mark.parametrize("symmetric, one_pass, mag, level", [(True, True, 2, 16), (True, False, 3, 12),
                                                              (False, True, 4, 10), (False, True, 1, 8)])
def test_magnetic_only_derivatives_equal_the_full_ones(symmetric, one_pass, mag, level):
    """``derivatives="magnetic"`` (the relaxation's trial points: ∂E/∂m without forces) gives the
    energy, site energies and ∂E/∂m of the full evaluation: one-pass and two-pass symmetrised,
    plain, and a non-magnetic potential (∂E/∂m = 0); in the force field too (folded images)."""
    pot = (symmetric_potential(level, 2, mag, level, per_species=False) if symmetric
           else random_potential(level=level, species=2, mag_size=mag, seed=level))
    cfg = bcc(repeat=2, species=2, seed=3, vacancies=1, moment=1.1)
    cfg.magmoms[::3] *= -1.0
    engine = MTPEngine(pot)
    engine.symmetric_one_pass = one_pass
    assert not symmetric or engine.one_pass_symmetric() == one_pass
    nl = engine.neighbor_list(cfg)
    mag_all = cfg.magmoms[nl.image_of]
    types_all = cfg.types[nl.image_of]
    full = engine.compute_local(nl, types_all, mag_all, True, symmetric=symmetric)
    only = engine.compute_local(nl, types_all, mag_all, "magnetic", symmetric=symmetric)
    assert only.forces is None and only.virial is None
    close(only.site_energies, full.site_energies, 1e-15)
    close(only.magnetic_gradient, full.magnetic_gradient, 1e-12)
    if mag == 1:
        assert not np.any(only.magnetic_gradient)
    n = len(cfg)
    state = MDState(positions=cfg.positions, velocities=np.zeros((n, 3)), masses=np.ones(n),
                    types=cfg.types, ids=np.arange(n), magmoms=cfg.magmoms.copy(),
                    cell=cfg.cell, pbc=cfg.pbc, species=["Fe", "Al"])
    ff = ForceField(engine, symmetric=symmetric, skin=0.5)
    ff.setup(state)
    a, b = ff.evaluate(state, derivatives="magnetic"), ff.evaluate(state)
    assert a.forces is None and a.virial is None
    close(a.energy, b.energy, 1e-15)
    close(a.magnetic_gradient, b.magnetic_gradient, 1e-12)
    assert np.abs(b.magnetic_gradient).max() > 0 or mag == 1
