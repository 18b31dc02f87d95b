"""MaxVol invariants and the active set written into .almtp files."""

import numpy as np
import pytest
from training_data import known_problem

from mmtp_hpc.active.maxvol import attach_active_set, candidate_rows, grades, maxvol
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential


def test_maxvol_invariants_random_rows():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(400, 30)) * rng.uniform(0.1, 10, size=30)
    sel = maxvol(B)
    assert sel.max_grade <= 1.001
    assert np.abs(B @ sel.inverse).max() <= 1.001
    np.testing.assert_allclose(sel.matrix, B[sel.rows])          # every slot is a candidate row
    np.testing.assert_allclose(sel.matrix @ sel.inverse, np.eye(30), atol=1e-9)
    # a random square subset has a smaller volume than the MaxVol one
    vol = np.linalg.slogdet(sel.matrix)[1]
    for seed in range(5):
        pick = np.random.default_rng(seed).choice(400, 30, replace=False)
        assert np.linalg.slogdet(B[pick])[1] < vol


def test_maxvol_extends_an_existing_set():
    rng = np.random.default_rng(1)
    first = maxvol(rng.normal(size=(100, 10)))
    new = rng.normal(size=(50, 10)) * 3.0
    assert grades(new, first.inverse).max() > 1.001
    sel = maxvol(new, matrix=first.matrix, rows=np.full(10, -1))
    assert sel.max_grade <= 1.001
    assert np.linalg.slogdet(sel.matrix)[1] > np.linalg.slogdet(first.matrix)[1]


def test_maxvol_agrees_with_mlip3_grades(shared_data):
    pot = load_potential(shared_data / "mlip3" / "examples" / "04_pot.almtp")
    from mmtp_hpc.io.cfg import read_cfg
    engine = MTPEngine(pot)
    inverse = pot.active_set.inverse.T    # stored A⁻ᵀ → A⁻¹
    for cfg in read_cfg(shared_data / "mlip3" / "examples" / "04_graded.cfg"):
        site = engine.param_gradients(cfg)["site_param_grad"]
        nbh = grades(site, inverse)
        np.testing.assert_allclose(nbh, cfg.nbh_grades, rtol=1e-5, atol=1e-6)
        assert nbh.max() == pytest.approx(float(cfg.features["MV_grade"]), rel=1e-5)


@pytest.mark.parametrize("mode", ["nbh", "cfg"])
def test_attach_active_set_roundtrip(tmp_path, mode):
    template, configs, true = known_problem(n_configs=12)
    pot = true.copy()
    sel = attach_active_set(pot, configs, mode=mode)
    assert sel.max_grade <= 1.001
    path = tmp_path / "pot.almtp"
    save_potential(pot, path)
    back = load_potential(path)
    block = back.active_set
    assert block.inverse_residual() < 1e-8
    assert block.site_en_weight == (1.0 if mode == "nbh" else 0.0)
    B, _, _ = candidate_rows(MTPEngine(back), configs, mode)
    assert grades(B, block.inverse.T).max() <= 1.001 + 1e-9
    selected = np.sum(block.cfg_indices >= 0)
    assert block.n_configurations == len(set(block.cfg_indices[block.cfg_indices >= 0].tolist()))
    assert selected > 0
