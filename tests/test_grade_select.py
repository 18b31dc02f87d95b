"""`mmtp grade` and `mmtp select` (spec §5): agreement with MLIP-3's worked example, MaxVol
invariants of the selection, duplicates, limits, the updated active set, and CLI errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mmtp_hpc.active import maxvol
from mmtp_hpc.active.selection import (
    grade_configurations,
    select_new,
    selected_configurations,
    updated_potential,
)
from mmtp_hpc.cli import main
from mmtp_hpc.io.cfg import read_cfg, write_cfg
from mmtp_hpc.io.trainingset import read_trainingset_h5
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential

REPO = Path(__file__).resolve().parents[1]
FE_POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
FE_TRAIN = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16_train.h5"
THRESHOLD = 1.001


@pytest.fixture(scope="module")
def ex(shared_data):
    return shared_data / "mlip3" / "examples"


@pytest.fixture(scope="module")
def fe_case():
    """The shipped bcc Fe potential, its training set and 12 strained, rattled candidates."""
    pot = load_potential(FE_POT)
    train = read_trainingset_h5(FE_TRAIN)
    rng = np.random.default_rng(0)
    cands = []
    for k in range(12):
        c = train[7 * k].copy()
        s = 1 + 0.06 * rng.uniform(-1, 1)
        c.cell *= s
        c.positions = c.positions * s + rng.normal(scale=0.15, size=c.positions.shape)
        c.magmoms = np.clip(c.magmoms * (1 + 0.1 * rng.normal(size=len(c))), -3.5, 3.5)
        c.features = {"cand": str(k)}
        cands.append(c)
    return pot, train, cands


def mlip3_rows(engine, configs):
    """Rows of the equations MLIP-3 lists in each configuration's selected_eqn_inds."""
    rows = []
    for c in configs:
        B, eqn = maxvol.configuration_rows(engine, c, "nbh")
        want = [int(e) for e in c.features["selected_eqn_inds"].split(",")]
        assert set(want) <= set(eqn.tolist())    # MLIP-3's numbering = ours (10 + 3N + i, ghosts left out)
        rows.append(B[np.isin(eqn, want)])
    return np.vstack(rows)


# ------------------------------------------------------------------ grades
def test_grade_cli_equals_mlip3_calculate_grade(ex, tmp_path, capsys):
    out = tmp_path / "graded.cfg"
    assert main(["grade", str(ex / "04_pot.almtp"), str(ex / "04_graded.cfg"), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 configurations" in text and "rows/s" in text and "1 above 10" in text
    ours, ref = read_cfg(out), read_cfg(ex / "04_graded.cfg")
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        # MLIP-3 prints nbh_grades with 5 decimals and MV_grade with 6
        np.testing.assert_allclose(a.nbh_grades, b.nbh_grades, rtol=0, atol=6e-6)
        assert float(a.features["MV_grade"]) == pytest.approx(float(b.features["MV_grade"]), abs=1.1e-6)
        assert a.features["MV_grade"] == b.features["MV_grade"]       # same text as MLIP-3
    assert "Feature   MV_grade\t2.901116" in out.read_text()


def test_grade_ghost_atoms_have_no_grade(ex):
    pot = load_potential(ex / "04_pot.almtp")
    cfgs = read_cfg(ex / "preselected.cfg")
    res = grade_configurations(pot, cfgs)
    for cfg, r in zip(cfgs, res, strict=True):
        assert cfg.ghost.any()
        assert np.all(cfg.nbh_grades[cfg.ghost] == 0.0)
        assert np.all(cfg.nbh_grades[~cfg.ghost] > 0.0)
        assert r.grade == cfg.nbh_grades.max()
        assert float(cfg.features["MV_grade"]) == pytest.approx(r.grade, abs=1e-6)
        assert not cfg.ghost[r.worst_atom]


def test_grade_cfg_mode(fe_case):
    pot, train, cands = fe_case
    pot = pot.copy()
    maxvol.attach_active_set(pot, train[:40], mode="cfg")
    graded = [c.copy() for c in train[:40] + cands]
    res = grade_configurations(pot, graded)          # auto → cfg (the set's mode)
    assert all(c.nbh_grades is None for c in graded)
    g = np.array([r.grade for r in res])
    assert g[:40].max() <= THRESHOLD + 1e-9           # the set's own configurations
    assert g[40:].max() > 2.0
    np.testing.assert_allclose([float(c.features["MV_grade"]) for c in graded], g, atol=1e-6)


# ------------------------------------------------------------------ MLIP-3 agreement
def test_attach_active_set_reproduces_mlip3_block(ex):
    """MaxVol over train.cfg rebuilds MLIP-3's stored active set slot for slot (swapped-out
    initial rows stay candidates, as in MLIP-3)."""
    pot = load_potential(ex / "04_pot.almtp")
    ref = pot.active_set
    sel = maxvol.attach_active_set(pot, read_cfg(ex / "train.cfg"))
    new = pot.active_set
    np.testing.assert_array_equal(new.cfg_indices, ref.cfg_indices)
    np.testing.assert_array_equal(new.eqn_indices, ref.eqn_indices)
    np.testing.assert_allclose(new.matrix, ref.matrix, rtol=0, atol=1e-12)
    assert sel.log_volume == pytest.approx(np.linalg.slogdet(ref.matrix)[1], abs=1e-9)


def test_select_cli_agrees_with_mlip3(ex, tmp_path, capsys):
    pot_path = ex / "04_pot.almtp"
    new, upd = tmp_path / "new.cfg", tmp_path / "updated.almtp"
    assert main(["select", str(pot_path), str(ex / "train.cfg"), str(ex / "preselected.cfg"),
                 "-o", str(new), "--update-potential", str(upd)]) == 0
    out = capsys.readouterr().out
    assert "selected 2 of 2" in out and "rows/s" in out
    ours, ref = read_cfg(new), read_cfg(ex / "selected.cfg")
    assert len(ours) == len(ref)                      # as many as MLIP-3 ...
    for a, b in zip(ours, ref, strict=True):          # ... and the same ones
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.features["ind"] == b.features["ind"]
        n = int((~a.ghost).sum())
        eq = [int(e) for e in a.features["selected_eqn_inds"].split(",")]
        assert all(10 + 3 * n <= e < 10 + 4 * n for e in eq)

    # volume of the active set: ours vs the MaxVol pass with MLIP-3's selected rows
    pot = load_potential(pot_path)
    engine = MTPEngine(pot)
    train, pre = read_cfg(ex / "train.cfg"), read_cfg(ex / "preselected.cfg")
    result = select_new(pot, train, pre)
    assert result.indices == [0, 1]
    base = np.vstack([maxvol.candidate_rows(engine, train, "nbh")[0],
                      maxvol.INITIAL_DIAGONAL * np.eye(pot.n_params)])
    theirs = maxvol.maxvol(np.vstack([base, mlip3_rows(engine, ref)]), matrix=result.initial.matrix,
                           rows=result.initial.rows)
    # equal up to MaxVol's own tolerance (measured: -91.2342106 vs -91.2342098)
    assert result.log_volume >= theirs.log_volume - math.log(THRESHOLD)
    assert result.log_volume > result.initial.log_volume + 10.0

    # the updated potential grades training ∪ selected (and here all candidates) ≤ threshold
    updated = load_potential(upd)
    assert max(r.grade for r in grade_configurations(updated, train + ours)) <= THRESHOLD + 1e-9
    assert updated.active_set.n_configurations == len({int(k) for k in updated.active_set.cfg_indices
                                                       if k >= 0})


# ------------------------------------------------------------------ invariants and behaviour
def test_selection_maxvol_invariants(fe_case):
    pot, train, cands = fe_case
    result = select_new(pot, train, cands)
    engine = MTPEngine(pot)
    rows = np.vstack([maxvol.candidate_rows(engine, train, "nbh")[0],
                      maxvol.candidate_rows(engine, cands, "nbh")[0]])
    sel = result.selection
    assert np.abs(rows @ sel.inverse).max() <= THRESHOLD + 1e-9        # all |B A⁻¹| ≤ 1.001
    np.testing.assert_allclose(sel.matrix @ sel.inverse, np.eye(pot.n_params), atol=1e-8)
    assert 0 < len(result.indices) < len(cands)
    assert result.log_volume > result.initial.log_volume
    # every selected candidate holds a slot; no unselected one does
    _, cand_of_slot, _ = result.slot_sources()
    assert sorted(set(cand_of_slot[cand_of_slot >= 0].tolist())) == result.indices
    # the grades before selection are those of the potential's stored set (built from the same data)
    stored = [r.grade for r in grade_configurations(pot, [c.copy() for c in cands])]
    np.testing.assert_allclose(result.candidate_grades, stored, rtol=1e-8)
    # well-represented candidates (grade < 1) are not selected
    low = np.flatnonzero(result.candidate_grades < 1.0)
    assert len(low) > 0 and not set(low.tolist()) & set(result.indices)


def test_known_configurations_are_not_selected(fe_case, ex, tmp_path, capsys):
    pot, train, _ = fe_case
    result = select_new(pot, train, [c.copy() for c in train[::10]])
    assert result.indices == [] and result.selection.swaps == 0
    assert result.candidate_grades.max() <= THRESHOLD + 1e-9
    # an MD run that saved no candidates: nothing selected, an empty output
    empty, new = tmp_path / "none.cfg", tmp_path / "new.cfg"
    empty.write_text("")
    assert main(["select", str(ex / "04_pot.almtp"), str(ex / "train.cfg"), str(empty), "-o", str(new)]) == 0
    assert "selected 0 of 0" in capsys.readouterr().out and read_cfg(new) == []


def test_duplicates_are_selected_once(ex):
    pot = load_potential(ex / "04_pot.almtp")
    train, pre = read_cfg(ex / "train.cfg"), read_cfg(ex / "preselected.cfg")
    plain = select_new(pot, train, pre)
    assert 1 in plain.indices
    copies = pre + [pre[1].copy(), pre[1].copy()]
    dup = select_new(pot, train, copies)
    assert len(set(dup.indices) & {1, 2, 3}) == 1      # only one of the identical copies
    assert dup.indices == plain.indices
    assert dup.log_volume == pytest.approx(plain.log_volume, abs=1e-9)


def test_limit_and_min_grade(fe_case, ex, tmp_path, capsys):
    pot, train, cands = fe_case
    full = select_new(pot, train, cands)
    assert len(full.indices) > 2
    lim = select_new(pot, train, cands, limit=2)
    assert len(lim.indices) == 2
    assert int(np.argmax(lim.candidate_grades)) in lim.indices      # the largest pivot comes first
    engine = MTPEngine(pot)
    kept = [cands[k] for k in lim.indices]
    rows = np.vstack([maxvol.candidate_rows(engine, train + kept, "nbh")[0]])
    assert np.abs(rows @ lim.selection.inverse).max() <= THRESHOLD + 1e-9
    assert lim.selection.max_grade > THRESHOLD     # the candidates left out are still extrapolative
    # min_grade: candidates graded <= it are not even considered
    cut = float(np.median(full.candidate_grades))
    mg = select_new(pot, train, cands, min_grade=cut)
    assert all(full.candidate_grades[k] > cut for k in mg.indices)
    assert set(mg.considered) == {k for k in range(len(cands)) if full.candidate_grades[k] > cut}
    # the CLI option
    new = tmp_path / "one.cfg"
    assert main(["select", str(ex / "04_pot.almtp"), str(ex / "train.cfg"), str(ex / "preselected.cfg"),
                 "-o", str(new), "--limit", "1"]) == 0
    (one,) = read_cfg(new)
    np.testing.assert_array_equal(one.positions, read_cfg(ex / "preselected.cfg")[1].positions)
    assert "limit 1" in capsys.readouterr().out


def test_select_cli_hdf5_training_set_and_updated_potential(fe_case, tmp_path):
    pot, train, cands = fe_case
    cand_path, new, upd = tmp_path / "cands.cfg", tmp_path / "new.h5", tmp_path / "updated.h5"
    write_cfg(cand_path, cands)
    assert main(["select", str(FE_POT), str(FE_TRAIN), str(cand_path), "-o", str(new),
                 "--update-potential", str(upd)]) == 0
    picked = read_trainingset_h5(new)
    expected = select_new(pot, train, cands).indices
    assert [int(c.features["cand"]) for c in picked] == expected
    updated = load_potential(upd)
    grades = [r.grade for r in grade_configurations(updated, [c.copy() for c in train + picked])]
    assert max(grades) <= THRESHOLD + 1e-9            # training ∪ selected are represented
    # the written set is the one the next selection (training ∪ selected) starts from
    again = select_new(updated, train + picked, cands)
    np.testing.assert_allclose(again.initial.matrix, updated.active_set.matrix, rtol=0, atol=1e-12)
    assert not set(again.indices) & set(expected)
    np.testing.assert_allclose(again.candidate_grades,
                               [r.grade for r in grade_configurations(updated, [c.copy() for c in cands])],
                               rtol=1e-8)


def test_selected_configurations_and_block(fe_case):
    pot, train, cands = fe_case
    result = select_new(pot, train, cands, mode="cfg")
    assert result.mode == "cfg" and result.indices
    chosen = selected_configurations(cands, result)
    assert all(c.features["selected_eqn_inds"] == "0" for c in chosen)
    p = updated_potential(pot, train, cands, result)
    assert p.active_set.site_en_weight == 0.0 and p.active_set.energy_weight == 1.0
    assert p.active_set.inverse_residual() < 1e-8
    assert pot.active_set.site_en_weight == 1.0                    # the original is untouched
    g = [r.grade for r in grade_configurations(p, [c.copy() for c in train + chosen])]
    assert max(g) <= THRESHOLD + 1e-9


# ------------------------------------------------------------------ CLI errors
def _error(argv, capsys) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


def test_cli_errors(ex, fe_case, tmp_path, capsys):
    pot_path = str(ex / "04_pot.almtp")
    missing = str(tmp_path / "nope.cfg")
    err = _error(["grade", pot_path, missing, "-o", str(tmp_path / "o.cfg")], capsys)
    assert "nope.cfg" in err
    err = _error(["select", pot_path, missing, str(ex / "preselected.cfg"), "-o", str(tmp_path / "o.cfg")],
                 capsys)
    assert "nope.cfg" in err

    # a type the single-species potential does not have
    cfg = read_cfg(ex / "train.cfg")[0]
    cfg.types[3] = 1
    two = tmp_path / "two_species.cfg"
    write_cfg(two, [cfg])
    err = _error(["grade", pot_path, str(two), "-o", str(tmp_path / "o.cfg")], capsys)
    assert "two_species.cfg" in err and "1 species" in err
    err = _error(["select", pot_path, str(ex / "train.cfg"), str(two), "-o", str(tmp_path / "o.cfg")], capsys)
    assert "two_species.cfg" in err and "1 species" in err

    # a potential without an active set cannot grade
    bare = load_potential(ex / "04_pot.almtp")
    bare.active_set = None
    bare_path = tmp_path / "bare.mtp"
    save_potential(bare, bare_path)
    err = _error(["grade", str(bare_path), str(ex / "train.cfg"), "-o", str(tmp_path / "o.cfg")], capsys)
    assert "bare.mtp" in err and "no active set" in err
    # ... and a neighbourhood-only set has no configuration grades
    err = _error(["grade", pot_path, str(ex / "train.cfg"), "-o", str(tmp_path / "o.cfg"), "--mode", "cfg"],
                 capsys)
    assert "04_pot.almtp" in err and "mode" in err

    # a magnetic potential needs moments: the file and the configuration are named
    _, _, cands = fe_case
    nomag = [c.copy() for c in cands[:3]]
    nomag[2].magmoms = None
    nm = tmp_path / "nomag.cfg"
    write_cfg(nm, nomag)
    err = _error(["select", str(FE_POT), str(FE_TRAIN), str(nm), "-o", str(tmp_path / "o.cfg")], capsys)
    assert "nomag.cfg" in err and "configuration 2" in err and "moments" in err
    err = _error(["grade", str(FE_POT), str(nm), "-o", str(tmp_path / "o.cfg")], capsys)
    assert "nomag.cfg" in err and "configuration 2" in err

    # bad options
    err = _error(["select", pot_path, str(ex / "train.cfg"), str(ex / "preselected.cfg"), "-o",
                  str(tmp_path / "o.cfg"), "--threshold", "0.5"], capsys)
    assert "threshold" in err
    err = _error(["select", pot_path, str(ex / "train.cfg"), str(ex / "preselected.cfg"), "-o",
                  str(tmp_path / "o.cfg"), "--update-potential", str(tmp_path / "x.mtp")], capsys)
    assert "x.mtp" in err
