"""Central finite differences confirm forces, virial, ∂E/∂m and every parameter gradient."""

import numpy as np
import pytest
from util import random_configuration, random_potential

from mmtp_hpc.potentials.mtp.engine import MTPEngine


def strained(cfg, eps):
    out = cfg.copy()
    deform = np.eye(3) + eps
    out.cell = cfg.cell @ deform.T
    out.positions = cfg.positions @ deform.T
    return out


@pytest.fixture(params=[(12, 2, 2, False), (12, 2, 2, True), (16, 1, 1, False),
                        (8, 2, 5, False, 10), (8, 1, 6, True, 10), (8, 1, 4, False, 3)],
                ids=["magnetic", "symmetrised", "nonmagnetic", "M5_R10", "symmetrised_M6_R10", "M4_R3"])
def setup(request):
    level, species, mag, symmetric, *radial = request.param
    pot = random_potential(level=level, species=species, mag_size=mag, seed=11, symmetric=symmetric,
                           radial_size=radial[0] if radial else 6)
    cfg = random_configuration(n=6, species=species, seed=11, magnetic=mag > 1, cell_size=5.0)
    return pot, cfg, MTPEngine(pot)


def test_forces_virial_magnetic_gradient(setup):
    pot, cfg, engine = setup
    out = engine.evaluate(cfg)
    energy = lambda c, m=None: engine.evaluate(c, m, derivatives=False)["energy"]  # noqa: E731
    h = 1e-5
    scale_f = np.abs(out["forces"]).max()
    for i in range(len(cfg)):
        for d in range(3):
            plus, minus = cfg.copy(), cfg.copy()
            plus.positions[i, d] += h
            minus.positions[i, d] -= h
            fd = -(energy(plus) - energy(minus)) / (2 * h)
            assert fd == pytest.approx(out["forces"][i, d], abs=1e-6 * scale_f)
    scale_s = np.abs(out["virial"]).max()
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            fd = -(energy(strained(cfg, eps)) - energy(strained(cfg, -eps))) / (2 * h)
            assert fd == pytest.approx(out["virial"][a, b], abs=1e-6 * scale_s)
    # stress in GPa is −virial / V (ASE sign)
    np.testing.assert_allclose(out["stress"], -out["virial"] / cfg.volume * 160.21766208)
    if pot.magnetic:
        scale_m = np.abs(out["magnetic_gradient"]).max()
        for i in range(len(cfg)):
            mp, mm = cfg.magmoms.copy(), cfg.magmoms.copy()
            mp[i] += h
            mm[i] -= h
            fd = (energy(cfg, mp) - energy(cfg, mm)) / (2 * h)
            assert fd == pytest.approx(out["magnetic_gradient"][i], abs=1e-6 * scale_m)


def test_parameter_gradients(setup):
    """∂E_i/∂θ, ∂E/∂θ and the tangent's ∂T/∂θ (which gives ∂F/∂θ, ∂S/∂θ, ∂(∂E/∂m)/∂θ)."""
    pot, cfg, engine = setup
    rng = np.random.default_rng(0)
    n = len(cfg)
    tangent = (rng.normal(size=(n, 3)), rng.normal(size=(3, 3)),
               rng.normal(size=n) if pot.magnetic else np.zeros(n))
    out = engine.param_gradients(cfg, tangent=tangent)
    ev = engine.evaluate(cfg)
    # T is the directional derivative along the tangent
    t_expected = (-(ev["forces"] * tangent[0]).sum() - (ev["virial"] * tangent[1]).sum()
                  + (ev["magnetic_gradient"] * tangent[2]).sum())
    assert out["tangent"] == pytest.approx(t_expected, rel=1e-10)
    theta = pot.get_params()
    # every species/moment coefficient, and a spread of radial ones
    idx = np.concatenate([rng.choice(pot.n_radial_params, min(25, pot.n_radial_params), replace=False),
                          np.arange(pot.n_radial_params, pot.n_params)])
    h = 1e-6
    for p in idx:
        vals = []
        for sign in (1, -1):
            th = theta.copy()
            th[p] += sign * h
            pot.set_params(th)
            g = engine.param_gradients(cfg, tangent=tangent)
            vals.append((g["site_energies"], g["tangent"]))
        pot.set_params(theta)
        fd_site = (vals[0][0] - vals[1][0]) / (2 * h)
        fd_t = (vals[0][1] - vals[1][1]) / (2 * h)
        np.testing.assert_allclose(out["site_param_grad"][:, p], fd_site, rtol=1e-6,
                                   atol=1e-7 * np.abs(out["site_param_grad"]).max())
        assert out["tangent_param_grad"][p] == pytest.approx(
            fd_t, rel=1e-6, abs=1e-7 * np.abs(out["tangent_param_grad"]).max())


def test_jacobians_are_derivatives_of_forces():
    pot = random_potential(level=10, species=2, mag_size=2, seed=4)
    cfg = random_configuration(n=4, species=2, seed=4, cell_size=4.5)
    engine = MTPEngine(pot)
    jac = engine.jacobians(cfg)
    theta = pot.get_params()
    h = 1e-6
    for p in [0, 7, pot.n_radial_params + 1, pot.n_params - 1]:
        res = []
        for sign in (1, -1):
            th = theta.copy()
            th[p] += sign * h
            pot.set_params(th)
            res.append(engine.evaluate(cfg))
        pot.set_params(theta)
        for key in ("forces", "virial", "magnetic_gradient"):
            fd = (res[0][key] - res[1][key]) / (2 * h)
            np.testing.assert_allclose(jac[key][..., p], fd, rtol=1e-6,
                                       atol=1e-7 * max(np.abs(fd).max(), 1e-12))
