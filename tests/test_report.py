"""Error reports, parity plots and ensemble statistics against numbers computed by hand.

The data are labelled by the potential itself plus known offsets, so every error is an
offset and every RMSE/MAE/max follows from the offsets alone.
"""

import json

import numpy as np
import pytest
from util import random_configuration, random_potential

from mmtp_hpc.parallel.comm import SerialComm
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA
from mmtp_hpc.training.ensemble import ensemble_evaluation, ensemble_predict
from mmtp_hpc.training.loss import Objective, Weights, make_samples, rmse_from_sums
from mmtp_hpc.training.report import error_report, format_report, parity_plot, report_summary

N_CONFIGS = 6
E_OFFSET = 1e-3 * np.arange(1, N_CONFIGS + 1)          # eV/atom, per configuration
F_OFFSET = {0: 0.1, 1: -0.3}                            # eV/Å, per species, every component
S_OFFSET = 0.5                                           # GPa, ASE-sign stress, every component
M_OFFSET = {0: 0.02, 1: 0.05}                            # eV/μB, per species


@pytest.fixture(scope="module")
def offset_case():
    """A two-species magnetic potential and data = its predictions + the offsets above.

    Configuration 4 is periodic in x, y only (no stress compared), configuration 5 has no
    virial and no energy label.
    """
    pot = random_potential(level=8, species=2, mag_size=2, seed=3, radial_size=4)
    pot.species_names = ["Fe", "Al"]
    engine = MTPEngine(pot)
    configs = []
    for k in range(N_CONFIGS):
        pbc = (True, True, False) if k == 4 else (True, True, True)
        cfg = random_configuration(n=8, species=2, seed=10 + k, pbc=pbc, mag_range=(-2.0, 2.0))
        cfg.types[:2] = [0, 1]  # both species in every configuration
        out = engine.evaluate(cfg)
        n = len(cfg)
        cfg.energy = out["energy"] + E_OFFSET[k] * n
        cfg.forces = out["forces"] + np.array([F_OFFSET[t] for t in cfg.types])[:, None]
        # label stress = predicted stress + S_OFFSET  <=>  virial label = virial − S_OFFSET·V/160.2
        cfg.virial = out["virial"] - S_OFFSET * cfg.volume / EV_PER_A3_TO_GPA
        cfg.magnetic_gradient = out["magnetic_gradient"] + np.array([M_OFFSET[t] for t in cfg.types])
        configs.append(cfg)
    configs[5].energy = None
    configs[5].virial = None
    return pot, configs


def test_rmse_equals_the_offsets(offset_case):
    pot, configs = offset_case
    rep = error_report(pot, configs)
    # energy: configurations 0..4 carry a label; errors are −offset (prediction − reference)
    e = E_OFFSET[:5] * 1000
    assert rep["energy"]["count"] == 5
    assert rep["energy"]["rmse"] == pytest.approx(np.sqrt(np.mean(e ** 2)), rel=1e-9)
    assert rep["energy"]["mae"] == pytest.approx(np.mean(e), rel=1e-9)
    assert rep["energy"]["max_abs"] == pytest.approx(e.max(), rel=1e-9)
    assert rep["energy"]["unit"] == "meV/atom"
    # forces: per species the offset, overall the count-weighted root mean square
    types = np.concatenate([c.types for c in configs])
    f_off = np.array([F_OFFSET[t] for t in types])
    assert rep["forces"]["count"] == 3 * len(types)
    assert rep["forces"]["rmse"] == pytest.approx(np.sqrt(np.mean(f_off ** 2)), rel=1e-9)
    assert rep["forces"]["mae"] == pytest.approx(np.mean(np.abs(f_off)), rel=1e-9)
    for name, t in (("Fe", 0), ("Al", 1)):
        per = rep["forces"]["per_species"][name]
        assert per["count"] == 3 * np.sum(types == t)
        assert per["rmse"] == pytest.approx(abs(F_OFFSET[t]), rel=1e-9)
        assert per["mae"] == pytest.approx(abs(F_OFFSET[t]), rel=1e-9)
    # stress: only fully periodic configurations with a virial (0..3), 6 components each
    assert rep["stress"]["count"] == 4 * 6
    np.testing.assert_array_equal(rep["stress"]["config_index"], [0, 1, 2, 3])
    assert rep["stress"]["rmse"] == pytest.approx(S_OFFSET, rel=1e-9)
    assert rep["stress"]["max_abs"] == pytest.approx(S_OFFSET, rel=1e-9)
    # ASE sign: the reference is the label's −virial/V
    cfg0 = configs[0]
    np.testing.assert_allclose(rep["stress"]["reference"][0, :3], np.diag(cfg0.stress_gpa), rtol=1e-12)
    # dE/dm per species
    m_off = np.array([M_OFFSET[t] for t in types])
    assert rep["magnetic_gradient"]["rmse"] == pytest.approx(np.sqrt(np.mean(m_off ** 2)), rel=1e-9)
    for name, t in (("Fe", 0), ("Al", 1)):
        assert rep["magnetic_gradient"]["per_species"][name]["rmse"] == pytest.approx(M_OFFSET[t], rel=1e-9)
    # per-value arrays for parity plots
    assert rep["energy"]["reference"].shape == (5,)
    assert rep["forces"]["reference"].shape == (len(types), 3)
    assert rep["stress"]["predicted"].shape == (4, 6)
    assert rep["n_configurations"] == N_CONFIGS and rep["n_atoms"] == len(types)


def test_absent_labels_are_left_out(offset_case):
    pot, configs = offset_case
    bare = [c.copy() for c in configs[:2]]
    for c in bare:
        c.virial = c.magnetic_gradient = c.forces = None
    rep = error_report(pot, bare)
    assert set(rep) & {"energy", "forces", "stress", "magnetic_gradient"} == {"energy"}
    text = format_report(rep, "bare")
    assert "energy per atom" in text and "forces" not in text


def test_report_agrees_with_the_training_log(offset_case):
    """The report uses the definitions of the RMSEs that train() logs."""
    pot, configs = offset_case
    samples = make_samples(pot, configs, Weights(magnetic=1.0))
    ev = Objective(pot, samples)(pot.get_params(), gradient=False)
    logged = rmse_from_sums(ev.sums)
    rep = error_report(pot, configs)
    for key, name in (("energy", "energy"), ("force", "forces"), ("stress", "stress"),
                      ("magnetic", "magnetic_gradient")):
        assert rep[name]["rmse"] == pytest.approx(logged[f"{key}_rmse"], rel=1e-10)
        assert rep[name]["mae"] == pytest.approx(logged[f"{key}_mae"], rel=1e-10)


def test_split_evaluation_and_summary(offset_case):
    pot, configs = offset_case
    rep = error_report(pot, configs, comm=SerialComm())
    summary = report_summary(rep)
    text = json.dumps(summary)  # plain numbers only
    assert "reference" not in text
    assert summary["forces"]["rmse"] == rep["forces"]["rmse"]
    table = format_report(rep, "offsets")
    lines = table.splitlines()
    assert lines[0].startswith("offsets: 6 configurations")
    assert any(line.split()[:2] == ["Fe", "eV/Å"] for line in lines)
    row = next(line for line in lines if line.strip().startswith("stress"))
    assert float(row.split()[3]) == pytest.approx(S_OFFSET, rel=1e-5)


def test_parity_plot_writes_a_png(tmp_path, offset_case):
    pot, configs = offset_case
    rep_train = error_report(pot, configs[:4])
    rep_valid = error_report(pot, configs[4:])
    path = tmp_path / "parity.png"
    panels = parity_plot(rep_train, rep_valid, path)
    assert panels == ["energy", "forces", "stress", "magnetic_gradient"]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    # one set and fewer labels: fewer panels
    bare = [c.copy() for c in configs[:3]]
    for c in bare:
        c.virial = c.magnetic_gradient = None
    assert parity_plot(error_report(pot, bare), None, tmp_path / "p2.png") == ["energy", "forces"]
    assert (tmp_path / "p2.png").read_bytes()[:4] == b"\x89PNG"


def test_ensemble_mean_and_spread(offset_case):
    pot, configs = offset_case
    other = pot.copy()
    other.moment_coeffs = other.moment_coeffs * 1.1
    cfg = configs[0]
    a, b = MTPEngine(pot).evaluate(cfg), MTPEngine(other).evaluate(cfg)
    pred = ensemble_predict([pot, other], cfg)
    n = len(cfg)
    # two members: mean is the midpoint, population σ is half the difference
    assert pred["energy_per_atom"] == pytest.approx((a["energy"] + b["energy"]) / 2 / n, rel=1e-12)
    assert pred["energy_per_atom_std"] == pytest.approx(abs(a["energy"] - b["energy"]) / 2 / n, rel=1e-9)
    np.testing.assert_allclose(pred["forces_std"], np.abs(a["forces"] - b["forces"]) / 2, atol=1e-12)
    np.testing.assert_allclose(pred["magnetic_gradient_std"],
                               np.abs(a["magnetic_gradient"] - b["magnetic_gradient"]) / 2, atol=1e-12)
    same = ensemble_predict([pot, pot], cfg)
    assert same["energy_std"] == 0.0 and not same["forces_std"].any()
    rep, spread = ensemble_evaluation([pot, other], configs)
    assert spread["energy_std_mean"] > 0 and spread["force_std_rms"] > 0
    assert spread["magnetic_gradient_std_rms"] > 0
    assert rep["energy"]["count"] == 5
