"""Moment dynamics: Langevin and Monte Carlo sample exp(−E/kT); MC's local ΔE is exact."""

import math

import numpy as np
import pytest
from md_potential import md_settings

from mmtp_hpc.dynamics import Simulation
from mmtp_hpc.dynamics.moments import LangevinMoments, MonteCarloMoments, MTPSiteModel, reflect
from mmtp_hpc.dynamics.rng import Streams
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential

# a known single-site energy: a symmetric double well E(m) = A m² + B m⁴ (eV, μB),
# minima at ±√2 μB, barrier 0.12 eV = 1.2 kT
A, B = -0.12, 0.03
KT = 0.1                     # eV
LO, HI = -3.0, 3.0


def site_energy(m):
    return A * m ** 2 + B * m ** 4


def site_gradient(m):
    return 2 * A * m + 4 * B * m ** 3


def boltzmann_cdf(grid):
    """CDF of p(m) ∝ exp(−E(m)/kT) on [LO, HI] at the points ``grid``."""
    x = np.linspace(LO, HI, 200_001)
    w = np.exp(-site_energy(x) / KT)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(x))])
    return np.interp(grid, x, cdf / cdf[-1])


def boltzmann_mean(f):
    x = np.linspace(LO, HI, 200_001)
    w = np.exp(-site_energy(x) / KT)
    return float(np.sum(f(x) * w) / np.sum(w))


def check_distribution(samples, cdf_tol, moment_tol):
    samples = np.sort(samples.ravel())
    empirical = np.arange(1, len(samples) + 1) / len(samples)
    ks = np.abs(empirical - boltzmann_cdf(samples)).max()
    m2 = float(np.mean(samples ** 2))
    expected_m2 = boltzmann_mean(lambda x: x ** 2)
    print(f"  KS distance {ks:.4f}, <m²> {m2:.4f} (exact {expected_m2:.4f}), "
          f"P(m > 0) {np.mean(samples > 0):.3f}")
    assert ks < cdf_tol
    assert abs(m2 / expected_m2 - 1) < moment_tol
    assert abs(np.mean(samples > 0) - 0.5) < cdf_tol


class DoubleWellSites:
    """SiteModel of independent sites with energy E(m): a move at i changes only E_i."""

    def __init__(self, m):
        self.m = m.copy()

    def affected(self, i):
        return np.array([i])

    def set_moment(self, i, value):
        self.m[i] = value

    def site_energies(self, centers):
        return site_energy(self.m[centers])


def test_langevin_moments_sample_boltzmann_distribution():
    n = 2000
    ids = np.arange(1, n + 1)
    T = KT / 8.617333262e-5
    dyn = LangevinMoments(gamma=0.05, dt_fs=1.0, temperature_K=T, lo=np.full(n, LO), hi=np.full(n, HI),
                          streams=Streams(3))
    m = np.full(n, 1.4)          # all in one well: crossing the barrier is part of the test
    samples = []
    for step in range(1, 8001):
        m = dyn.step(m, site_gradient(m), ids, step)
        if step > 3000 and step % 50 == 0:
            samples.append(m.copy())
    print("\nLangevin moments vs exp(−E/kT):")
    # Euler–Maruyama bias is O(Γ Δt E'') ≈ 2 %
    check_distribution(np.array(samples), cdf_tol=0.02, moment_tol=0.03)


def test_monte_carlo_moments_sample_boltzmann_distribution():
    n = 400
    ids = np.arange(1, n + 1)
    T = KT / 8.617333262e-5
    mc = MonteCarloMoments(sweeps=1, flip_fraction=0.3, max_change=0.6, temperature_K=T,
                           lo=np.full(n, LO), hi=np.full(n, HI), streams=Streams(4))
    m = np.full(n, 1.4)
    model = DoubleWellSites(m)
    site = site_energy(m)
    samples = []
    for step in range(1, 401):
        mc.sweep(model, m, site, ids, step)
        assert np.array_equal(model.m, m)                    # rejected moves were undone
        if step > 50 and step % 2 == 0:
            samples.append(m.copy())
    assert np.allclose(site, site_energy(m))                 # bookkeeping of E_i
    print(f"\nMC moments vs exp(−E/kT), acceptance {mc.accepted / mc.tried:.2f}:")
    check_distribution(np.array(samples), cdf_tol=0.015, moment_tol=0.02)
    assert 0.2 < mc.accepted / mc.tried < 0.9


def test_reflection_keeps_moments_inside_bounds():
    m = reflect(np.array([3.5, -3.2, 0.0, 9.0, -20.0]), np.full(5, -3.0), np.full(5, 3.0))
    assert np.allclose(m, [2.5, -2.8, 0.0, -3.0, 3.0])


@pytest.mark.parametrize("repeat,symmetric", [(1, False), (2, False), (2, True)])
@pytest.mark.filterwarnings("ignore:the potential was trained spin-symmetrised")  # bookkeeping test
def test_mc_local_energy_changes_are_exact(fe_potential, tmp_path, repeat, symmetric):
    """After many accepted moves, the incrementally updated E_i equal a fresh evaluation —
    also in a cell smaller than the cutoff, where atoms see their own images."""
    settings = md_settings(fe_potential, tmp_path, system=fe_potential.system(repeat, jitter=0.1),
                           potential={"symmetrize": symmetric})
    sim = Simulation.from_settings(settings, stream=None)
    sim.initialize()
    state, ff = sim.state, sim.forcefield
    assert ff.symmetric == symmetric
    n = state.n_atoms
    mc = MonteCarloMoments(sweeps=20, flip_fraction=0.3, max_change=0.5, temperature_K=5000.0,
                           lo=np.full(n, float(load_potential(fe_potential.path).mag_min[0])),
                           hi=np.full(n, float(load_potential(fe_potential.path).mag_max[0])), streams=Streams(8))
    site = sim.evaluation.site_energies.copy()
    model = MTPSiteModel(ff, state.magmoms)
    before = state.magmoms.copy()
    accepted = mc.sweep(model, state.magmoms, site, state.ids, 1)
    assert accepted > 5 * n and np.abs(state.magmoms - before).min() > 1e-3
    fresh = ff.evaluate(state)
    assert np.abs(site - fresh.site_energies).max() < 1e-11
    engine = MTPEngine(load_potential(fe_potential.path))
    direct = engine.evaluate(state.configuration(), symmetric=symmetric)
    assert site.sum() == pytest.approx(direct["energy"], abs=1e-9)


@pytest.mark.slow
def test_mc_and_langevin_moments_agree_in_md(fe_potential, tmp_path):
    """Both moment samplers, coupled to the same NVT MD, give the same moment distribution.

    At 400 K the moments stay in the ferromagnetic basin (at 1200 K this model disorders
    and neither sampler equilibrates within a test's run time).
    """
    results = {}
    for mode, extra in (("mc", {"mc_sweeps": 1, "mc_flip_fraction": 0.0, "mc_max_change": 0.3, "every": 2}),
                        ("langevin", {"gamma": 0.02})):
        settings = md_settings(fe_potential, tmp_path, repeat=3,
                               md={"steps": 3000, "ensemble": "nvt", "temperature_K": 400.0,
                                   "initial_temperature_K": 400.0, "damping_fs": 50.0, "seed": 2},
                               moments={"mode": mode, **extra})
        sim = Simulation.from_settings(settings, stream=None)
        samples = []
        sim.attach(lambda s, out=samples: out.append(s.state.magmoms.copy()) if s.state.step > 500 else None,
                   10)
        sim.run()
        m = np.array(samples)
        results[mode] = (m.mean(), m.std())
        print(f"\n{mode}: <m> = {m.mean():.4f} μB, std {m.std():.4f} μB")
    (m_mc, s_mc), (m_lv, s_lv) = results["mc"], results["langevin"]
    assert s_mc > 0.1                                   # moments really fluctuate
    assert abs(m_mc - m_lv) < 0.02
    assert abs(s_mc / s_lv - 1) < 0.1
    assert math.isfinite(m_mc)


def test_time_split_adds_up_to_the_wall_time_with_monte_carlo(fe_potential, tmp_path):
    """The summary's time split: disjoint shares (Monte Carlo's own force-field work counted once,
    as Monte Carlo) that add up to the run's wall time."""
    settings = md_settings(fe_potential, tmp_path, repeat=2,
                           md={"steps": 12, "ensemble": "nvt", "temperature_K": 300.0, "seed": 3},
                           moments={"mode": "mc", "every": 2})
    sim = Simulation.from_settings(settings, stream=None)
    sim.run()
    split, wall = sim.time_split()
    assert wall > 0 and split["Monte Carlo moments"] > 0 and split["force"] > 0
    assert sum(split.values()) == pytest.approx(wall, rel=1e-9)
    assert all(v >= 0 for k, v in split.items() if k != "integration and other")


def test_npt_log_has_a_volume_column_and_average(fe_potential, tmp_path):
    """NPT runs log V/N (Å³/atom) beside the pressure, and the summary gives its average."""
    import io

    stream = io.StringIO()
    settings = md_settings(fe_potential, tmp_path, repeat=2,
                           md={"steps": 10, "ensemble": "npt", "temperature_K": 300.0, "pressure_GPa": 1.0},
                           output={"log_every": 5})
    sim = Simulation.from_settings(settings, stream=stream)
    sim.run()
    lines = stream.getvalue().splitlines()
    header = next(x for x in lines if x.split()[:1] == ["step"]).split()
    assert header[header.index("P_GPa") + 1] == "V_A3/at"
    rows = [x.split() for x in lines if x.split()[:1] in (["5"], ["10"])]
    volume = sim.state.volume / sim.state.n_global
    assert float(rows[-1][header.index("V_A3/at")]) == pytest.approx(volume, abs=1e-4)
    assert "V = " in next(x for x in lines if "logged averages" in x)


@pytest.mark.parametrize("mode", ["mc", "langevin", "relax"])
def test_moments_of_listed_species_only(tmp_path, mode):
    """[moments] species = ["Fe"]: every updater moves the Fe moments and leaves Al's as they were."""
    from mmtp_hpc.dynamics.settings import settings_from_dict
    from mmtp_hpc.errors import InputError

    from conftest import REPO

    def settings(species):
        return settings_from_dict({
            "system": {"lattice": "b2", "a": 2.88, "repeat": 3, "species": ["Fe", "Al"], "magmoms": [1.8, 0.05],
                       "jitter": 0.03},
            "potential": {"file": str(REPO / "inputs" / "potentials" / "feal_b2_analytic_l16.almtp")},
            "md": {"steps": 6, "timestep_fs": 1.0, "ensemble": "nvt", "temperature_K": 600.0, "seed": 4},
            "moments": {"mode": mode, "species": species},
            "output": {"trajectory": "", "checkpoint": "", "log_every": 10 ** 9},
        }, source=str(tmp_path / "input.toml"), base_dir=str(tmp_path))

    sim = Simulation.from_settings(settings(["Fe"]), stream=None)
    al = sim.state.types == 1
    before = sim.state.magmoms.copy()
    sim.run()
    after = sim.state.magmoms
    assert np.array_equal(after[al], before[al])                     # Al: untouched, bit for bit
    assert np.abs(after[~al] - before[~al]).max() > 1e-3             # Fe: moved
    if mode == "mc":
        assert sim.moments.tried == 6 * int((~al).sum())             # trials of Fe atoms only
    with pytest.raises(InputError, match="moments.species"):
        Simulation.from_settings(settings(["Fe", "Ni"]), stream=None)
