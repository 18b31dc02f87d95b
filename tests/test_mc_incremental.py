"""Incremental Monte Carlo in the kernels: each trial's ΔE and every accept/reject decision
equal those of full recomputation with the same random numbers (serial here; sector-parallel
on 2 ranks in tests/test_mpi_domain.py)."""

from __future__ import annotations

import numpy as np
import pytest
from util import bcc, random_potential

from mmtp_hpc.dynamics.forcefield import ForceField
from mmtp_hpc.dynamics.moments import MonteCarloMoments, MTPSiteModel
from mmtp_hpc.dynamics.rng import Streams
from mmtp_hpc.dynamics.units import KB_EV_PER_K
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential

from conftest import REPO

FE_POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
# the shipped potential is also evaluated without symmetrisation here (a bookkeeping test)
pytestmark = pytest.mark.filterwarnings("ignore:the potential was trained spin-symmetrised")


def _cases():
    shipped = load_potential(FE_POT)          # level 16, trained, spin-symmetrised, symmetric interval
    wide = random_potential(level=10, species=2, mag_size=5, radial_size=8, seed=21)
    wide.moment_coeffs *= 0.05                # gentle energies: many accepted moves at 3000 K
    # a magnetic basis larger than any fixed-size scratch could hold (kernels size it from M)
    large_m = random_potential(level=6, species=1, mag_size=17, radial_size=4, seed=22)
    large_m.moment_coeffs *= 0.05
    return {
        "shipped_symmetric_one_pass": (shipped, True, 2),
        "one_species_M17": (large_m, False, 2),
        "shipped_plain": (shipped, False, 2),
        "shipped_self_images": (shipped, True, 1),      # cell smaller than the cutoff: own images
        "two_species_M5": (wide, False, 2),
        # cells wider than two cutoffs: every centre sees one image of the moved atom, so the
        # trials take the lane path (all pair changes of a trial at once, lane_pair_changes)
        "shipped_symmetric_large": (shipped, True, 4),
        "two_species_M5_large": (wide, False, 4),
    }


CASES = _cases()


def _setup(name):
    pot, symmetric, repeat = CASES[name]
    cfg = bcc(a=2.84, repeat=repeat, species=pot.species_count, seed=3, jitter=0.08, moment=2.0)
    cfg.magmoms[::3] *= -1.0
    ff = ForceField(MTPEngine(pot), symmetric=symmetric, skin=0.5)
    ff.build(cfg.positions, cfg.cell, cfg.pbc, cfg.types)
    lo = np.full(len(cfg), float(np.min(pot.mag_min)))
    hi = np.full(len(cfg), float(np.max(pot.mag_max)))
    return ff, cfg, lo, hi


def _sweep(ff, cfg, lo, hi, incremental, sweeps=3, seed=5):
    """``sweeps`` sweeps at 3000 K with the kernels (incremental or full recomputation);
    returns (moments, site energies, per-trial ΔE, accepted per sweep)."""
    n = len(cfg)
    mc = MonteCarloMoments(sweeps=sweeps, flip_fraction=0.2, max_change=0.4, temperature_K=3000.0,
                           lo=lo, hi=hi, streams=Streams(seed))
    magmoms = cfg.magmoms.copy()
    model = MTPSiteModel(ff, magmoms)
    site = np.zeros(n)                        # the first moves on a model fill E_k and the caches
    order_keys, draws = mc.random_numbers(np.arange(n), 7)
    beta = 1.0 / (KB_EV_PER_K * 3000.0)
    deltas, accepted = [], []
    for s in range(sweeps):
        order = np.argsort(order_keys[:, s], kind="stable").astype(np.int64)
        delta = np.zeros(n)
        accepted.append(model.metropolis(order, draws, 3 * s, lo, hi, mc.flip_fraction, mc.max_change, beta,
                                         magmoms, site, incremental=incremental, trial_delta=delta))
        deltas.append(delta)
    return magmoms, site, np.concatenate(deltas), accepted


@pytest.mark.parametrize("name", list(CASES))
def test_incremental_trials_equal_full_recomputation(name):
    ff, cfg, lo, hi = _setup(name)
    m_inc, site_inc, d_inc, acc_inc = _sweep(ff, cfg, lo, hi, incremental=True)
    m_ref, site_ref, d_ref, acc_ref = _sweep(ff, cfg, lo, hi, incremental=False)
    n = len(cfg)
    assert sum(acc_inc) > 0.2 * 3 * n                          # the test moves moments
    # the same decisions: identical moments after every accepted and rejected trial
    assert acc_inc == acc_ref
    assert np.array_equal(m_inc, m_ref)
    assert np.array_equal(np.isnan(d_inc), np.isnan(d_ref))
    ok = ~np.isnan(d_ref)
    scale = np.maximum(np.abs(d_ref[ok]), 1e-3)               # ΔE below 1 meV: relative to 1 meV
    err = np.abs(d_inc[ok] - d_ref[ok]) / scale
    print(f"\n{name}: {ok.sum()} trials, {sum(acc_inc)} accepted, max rel. ΔE error {err.max():.1e}")
    assert err.max() < 1e-10
    # the committed site energies are the potential's at the final moments
    fresh = ff.site_energies_of(m_inc[ff.nl.image_of], np.arange(n, dtype=np.int64))
    assert np.abs(site_inc - fresh).max() < 1e-10 * np.abs(fresh).max()


@pytest.mark.parametrize("name", ["shipped_symmetric_one_pass", "two_species_M5", "shipped_symmetric_large"])
def test_kernel_sweep_makes_the_python_sweeps_decisions(name):
    """MonteCarloMoments.sweep through the kernels and through the Python loop on
    site_energies_of (the previous implementation), same random numbers: same moves."""
    ff, cfg, lo, hi = _setup(name)
    n = len(cfg)
    results = []
    for native in (True, False):
        mc = MonteCarloMoments(sweeps=2, flip_fraction=0.3, max_change=0.4, temperature_K=3000.0,
                               lo=lo, hi=hi, streams=Streams(9))
        magmoms = cfg.magmoms.copy()
        model = MTPSiteModel(ff, magmoms)
        if not native:
            model._cache = None               # the Python loop: one site_energies_of call per trial
        site = ff.site_energies_of(magmoms[ff.nl.image_of], np.arange(n, dtype=np.int64))
        accepted = mc.sweep(model, magmoms, site, np.arange(n), 3)
        results.append((accepted, magmoms, site))
    (a1, m1, s1), (a2, m2, s2) = results
    assert a1 == a2 and a1 > 0.2 * 2 * n
    # the same moves; a magnitude proposal m + δ may round differently in C (FMA) than in Python
    assert np.abs(m1 - m2).max() < 1e-12
    assert np.abs(s1 - s2).max() < 1e-10 * np.abs(s2).max()


def _affected_by_sorting(nl, entry_owner, n_atoms):
    """The reference of the kernels' affected lists: every (owner, centre) key inside the
    cutoff, plus (a, a), sorted and made unique."""
    centres = nl.pair_centers()
    d = nl.positions[nl.neighbors] - nl.positions[centres]
    inside = np.einsum("ij,ij->i", d, d) < nl.cutoff ** 2 * (1.0 + 1e-9)
    owners = entry_owner[nl.neighbors[inside]]
    keep = (owners >= 0) & (owners < n_atoms)
    n = nl.n_local
    key = np.unique(np.concatenate([owners[keep] * n + centres[inside][keep],
                                    np.arange(n_atoms, dtype=np.int64) * (n + 1)]))
    return key % n, np.concatenate([[0], np.cumsum(np.bincount(key // n, minlength=n_atoms))])


def _pairs_by_loop(nl, entry_owner, n_atoms):
    """The reference of the kernels' pair lists: per atom a, the (centre k ≠ a, vector) of every
    entry of a strictly inside the cutoff, in the order of the centres and their entries."""
    per_atom = [[] for _ in range(n_atoms)]
    for k in range(nl.n_local):
        for j in nl.neighbors[nl.offsets[k]:nl.offsets[k + 1]]:
            a = entry_owner[j]
            d = nl.positions[j] - nl.positions[k]
            if 0 <= a < n_atoms and a != k and d @ d < nl.cutoff ** 2:
                per_atom[a].append((k, d))
    return per_atom


@pytest.mark.parametrize("repeat, skin", [(1, 0.5), (2, 0.0), (3, 1.0)])
def test_affected_centres_match_sorting(repeat, skin):
    """``metropolis_maps``: the affected centres against sorting, and the pairs each move changes
    against a loop. Self images (repeat 1), several images of one atom per centre, pairs in the
    skin (left out), and owners that are not atoms (−1 and ≥ n_atoms: ignored)."""
    pot = load_potential(FE_POT)
    cfg = bcc(a=2.84, repeat=repeat, species=1, seed=4, jitter=0.1, moment=2.0)
    ff = ForceField(MTPEngine(pot), symmetric=True, skin=skin)
    ff.build(cfg.positions, cfg.cell, cfg.pbc, cfg.types)
    nl, n = ff.nl, len(cfg)
    for owner, n_atoms in ((nl.image_of, n), (np.where(nl.image_of % 3 == 1, -1, nl.image_of), n),
                           (nl.image_of, max(n - 2, 1))):
        got = MTPEngine.metropolis_maps(nl, owner, n_atoms)
        want = _affected_by_sorting(nl, np.asarray(owner, dtype=np.int64), n_atoms)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        if n > 1:
            assert len(got[0]) > n_atoms        # not only the atoms themselves
        pair_off, pair_k, pair_d, fast = got[2]
        assert len(pair_off) == n_atoms + 2 and len(fast) == n_atoms + 1
        for a, pairs in enumerate(_pairs_by_loop(nl, np.asarray(owner, dtype=np.int64), n_atoms)):
            q = slice(pair_off[a], pair_off[a + 1])
            assert pair_k[q].tolist() == [k for k, _ in pairs]
            np.testing.assert_array_equal(pair_d[q], np.array([d for _, d in pairs]).reshape(-1, 3))
            # the lane path only where the affected centres are a and its pairs' centres, once each
            if fast[a]:
                assert sorted([a] + pair_k[q].tolist()) == got[0][got[1][a]:got[1][a + 1]].tolist()


@pytest.mark.parametrize("name", ["shipped_symmetric_large", "shipped_plain", "two_species_M5_large"])
def test_sweep_starts_from_the_force_evaluations_basic_moments(name):
    """The step's force evaluation hands its basic moments to the sweep (serial layout: no pass
    of its own over the centres): the same decisions, site energies and energy as a sweep that
    computes them itself, and the energy is the potential's."""
    from mmtp_hpc.dynamics.state import MDState

    ff, cfg, lo, hi = _setup(name)
    pot = ff.engine.pot
    n = len(cfg)
    results = []
    for seeded in (True, False):
        state = MDState(positions=cfg.positions.copy(), velocities=np.zeros((n, 3)), masses=np.ones(n),
                        types=np.asarray(cfg.types, dtype=np.int64), ids=np.arange(n),
                        magmoms=cfg.magmoms.copy(), cell=cfg.cell, pbc=cfg.pbc,
                        species=[f"X{k}" for k in range(pot.species_count)])
        state.step = 4
        ev = ff.evaluate(state, basic=seeded)
        assert (ev.basic is not None) == seeded
        mc = MonteCarloMoments(2, 0.3, 0.4, 3000.0, np.zeros(0), np.zeros(0), Streams(6))
        mc.type_bounds = (np.asarray(pot.mag_min, dtype=float), np.asarray(pot.mag_max, dtype=float))
        mc.set_types(state.types)
        mc.update(ff, state, ev)
        assert ev.basic is None                   # handed over
        results.append((mc.accepted, state.magmoms.copy(), ev.site_energies.copy(), ev.energy))
    (a1, m1, s1, e1), (a2, m2, s2, e2) = results
    assert a1 == a2 > 0.2 * 2 * n
    assert np.array_equal(m1, m2)
    assert np.abs(s1 - s2).max() < 1e-12 * np.abs(s2).max()
    fresh = ff.site_energies_of(m1[ff.nl.image_of], np.arange(n, dtype=np.int64))
    assert np.abs(s1 - fresh).max() < 1e-10 * np.abs(fresh).max()
    assert e1 == pytest.approx(fresh.sum(), rel=1e-12)


@pytest.mark.parametrize("name", ["shipped_symmetric_large", "two_species_M5", "shipped_self_images"])
def test_moves_mark_the_centres_they_change(name):
    """``touched``: the kernels mark exactly the centres whose cache row or energy an accepted
    move changed (the affected centres of the atoms whose moments changed; the parallel sweep
    sends those rows to their owners). The unmarked centres keep their rows and energies bit
    for bit; the lane path (large cells) and the general path (own images) both mark."""
    ff, cfg, lo, hi = _setup(name)
    n = len(cfg)
    magmoms = cfg.magmoms.copy()
    model = MTPSiteModel(ff, magmoms)
    site = np.zeros(n)
    model.update_site_energies(site)
    cache0, site0, mag0 = model._cache.copy(), site.copy(), magmoms.copy()
    model._touched = np.zeros(n, dtype=np.uint8)
    mc = MonteCarloMoments(sweeps=1, flip_fraction=0.0, max_change=0.05, temperature_K=3000.0,
                           lo=lo, hi=hi, streams=Streams(2))
    order_keys, draws = mc.random_numbers(np.arange(n), 1)
    moves = np.argsort(order_keys[:, 0], kind="stable")[:3].astype(np.int64)
    accepted = model.metropolis(moves, draws, 0, lo, hi, mc.flip_fraction, mc.max_change,
                                1.0 / (KB_EV_PER_K * 3000.0), magmoms, site)
    moved = np.flatnonzero(magmoms != mag0)
    assert accepted == len(moved) > 0
    want = np.zeros(n, dtype=bool)
    for a in moved:
        want[model.affected(a)] = True
    touched = model._touched.astype(bool)
    assert np.array_equal(touched, want)
    assert np.array_equal(model._cache[~touched], cache0[~touched]) and np.array_equal(site[~touched], site0[~touched])
    if n > 16:
        assert not touched.all()
