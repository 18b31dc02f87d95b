"""Symmetries: rotation, translation, permutation; spin-flip symmetry of symmetrised potentials."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from util import bcc, random_configuration, random_potential

from mmtp_hpc.potentials.mtp.engine import MTPEngine


@pytest.fixture(scope="module")
def engine():
    return MTPEngine(random_potential(level=16, species=2, mag_size=2, seed=21))


@pytest.fixture(scope="module")
def cfg():
    return random_configuration(n=10, species=2, seed=21, cell_size=6.0)


def test_rotation(engine, cfg):
    rot = Rotation.random(random_state=1).as_matrix()
    turned = cfg.copy()
    turned.cell = cfg.cell @ rot.T
    turned.positions = cfg.positions @ rot.T
    a, b = engine.evaluate(cfg), engine.evaluate(turned)
    assert b["energy"] == pytest.approx(a["energy"], rel=1e-11)
    np.testing.assert_allclose(b["site_energies"], a["site_energies"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b["forces"], a["forces"] @ rot.T, atol=1e-9)
    np.testing.assert_allclose(b["virial"], rot @ a["virial"] @ rot.T, atol=1e-9)
    np.testing.assert_allclose(b["magnetic_gradient"], a["magnetic_gradient"], atol=1e-10)


def test_translation_and_wrapping(engine, cfg):
    moved = cfg.copy()
    moved.positions = cfg.positions + np.array([0.37, -1.3, 12.9])  # also leaves the cell
    a, b = engine.evaluate(cfg), engine.evaluate(moved)
    assert b["energy"] == pytest.approx(a["energy"], rel=1e-11)
    np.testing.assert_allclose(b["forces"], a["forces"], atol=1e-9)
    np.testing.assert_allclose(b["virial"], a["virial"], atol=1e-9)


def test_permutation(engine, cfg):
    perm = np.random.default_rng(2).permutation(len(cfg))
    shuffled = cfg.copy()
    shuffled.positions = cfg.positions[perm]
    shuffled.types = cfg.types[perm]
    shuffled.magmoms = cfg.magmoms[perm]
    a, b = engine.evaluate(cfg), engine.evaluate(shuffled)
    assert b["energy"] == pytest.approx(a["energy"], rel=1e-12)
    np.testing.assert_allclose(b["site_energies"], a["site_energies"][perm], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b["forces"], a["forces"][perm], atol=1e-10)
    np.testing.assert_allclose(b["magnetic_gradient"], a["magnetic_gradient"][perm], atol=1e-11)


def test_raw_model_is_not_spin_symmetric(engine, cfg):
    plus = engine.evaluate(cfg, symmetric=False)["energy"]
    minus = engine.evaluate(cfg, -cfg.magmoms, symmetric=False)["energy"]
    assert abs(plus - minus) > 1e-6  # otherwise the symmetrisation test below proves nothing


def test_symmetrised_energy_is_exactly_even(engine, cfg):
    a = engine.evaluate(cfg, symmetric=True)
    b = engine.evaluate(cfg, -cfg.magmoms, symmetric=True)
    assert a["energy"] == b["energy"]
    np.testing.assert_array_equal(a["site_energies"], b["site_energies"])
    np.testing.assert_array_equal(a["forces"], b["forces"])
    np.testing.assert_array_equal(a["virial"], b["virial"])
    np.testing.assert_array_equal(a["magnetic_gradient"], -b["magnetic_gradient"])


def test_symmetrised_with_per_species_intervals():
    pot = random_potential(level=10, species=2, mag_size=3, seed=8, per_species_interval=True,
                           symmetric=True)
    engine = MTPEngine(pot)
    cfg = bcc(repeat=2, species=2, seed=8, moment=0.3)
    a = engine.evaluate(cfg)
    b = engine.evaluate(cfg, -cfg.magmoms)
    assert a["energy"] == b["energy"]
    np.testing.assert_array_equal(a["magnetic_gradient"], -b["magnetic_gradient"])
