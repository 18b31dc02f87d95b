"""An MLIP-3 user's session with MLIP-3's command names, option spellings and positional outputs.

``calculate_efs``, ``calculate_grade``, ``select_add``, ``train`` and ``check_errors`` run on the
files in ``../shared/data/mlip3`` and give MLIP-3's own outputs (the reference files there).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mmtp_hpc.potentials.mtp.grades import ActiveSet
from mmtp_hpc.active.selection import grade_configurations
from mmtp_hpc.cli import main
from mmtp_hpc.io.cfg import read_cfg
from mmtp_hpc.potentials.mtp.mlip_io import load_potential


@pytest.fixture(scope="module")
def mlip3(shared_data):
    return shared_data / "mlip3"


def test_calculate_efs_positional_output_equals_mlip3(mlip3, tmp_path, capsys):
    out = tmp_path / "efs.cfg"
    assert main(["calculate_efs", str(mlip3 / "magnetic" / "al_fe_mag.mtpr"),
                 str(mlip3 / "magnetic" / "al_fe_mag.cfg"), str(out)]) == 0
    assert "-> " + str(out) in capsys.readouterr().out
    ours, ref = read_cfg(out), read_cfg(mlip3 / "reference" / "ref_alfe_efs.cfg")
    for a, b in zip(ours, ref, strict=True):
        assert a.energy == pytest.approx(b.energy, rel=1e-12)
        np.testing.assert_allclose(a.site_energies, b.site_energies, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.virial, b.virial, rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.magnetic_gradient, b.magnetic_gradient, rtol=0, atol=1e-8)
    # MLIP-3's --output_filename spelling is the same option
    other = tmp_path / "efs2.cfg"
    assert main(["calculate_efs", str(mlip3 / "magnetic" / "al_fe_mag.mtpr"),
                 str(mlip3 / "magnetic" / "al_fe_mag.cfg"), f"--output_filename={other}"]) == 0
    assert other.read_text() == out.read_text()


def test_calculate_grade_and_select_add_equal_mlip3(mlip3, tmp_path, capsys):
    ex = mlip3 / "examples"
    graded = tmp_path / "graded.cfg"
    assert main(["calculate_grade", str(ex / "04_pot.almtp"), str(ex / "04_graded.cfg"), str(graded)]) == 0
    for a, b in zip(read_cfg(graded), read_cfg(ex / "04_graded.cfg"), strict=True):
        assert a.features["MV_grade"] == b.features["MV_grade"]              # same text as MLIP-3
        np.testing.assert_allclose(a.nbh_grades, b.nbh_grades, rtol=0, atol=6e-6)
    diff = tmp_path / "diff.cfg"
    assert main(["select_add", str(ex / "04_pot.almtp"), str(ex / "train.cfg"), str(ex / "preselected.cfg"),
                 str(diff), "--selection_limit=10", "--al_mode=nbh"]) == 0
    assert "selected 2 of 2" in capsys.readouterr().out
    ours, ref = read_cfg(diff), read_cfg(ex / "selected.cfg")
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.features["ind"] == b.features["ind"]


def test_check_errors_reproduces_mlip3_error_report(mlip3, capsys):
    """MLIP-3's "Errors report" of its trained potential (02_errors.txt): our numbers agree."""
    ex = mlip3 / "examples"
    text = (ex / "02_errors.txt").read_text()

    def value(section: str, name: str) -> float:
        block = text[text.index(section + ":"):]
        return float(re.search(re.escape(name) + r" = (\S+)", block).group(1))

    assert main(["check_errors", str(ex / "04_pot.almtp"), str(ex / "train.cfg")]) == 0
    out = capsys.readouterr().out
    rel = re.search(r"forces RMS\(Δ\)/RMS = (\S+), Max\(Δ\)/Max = (\S+); "
                    r"stress RMS\(Δ\)/RMS = (\S+), Max\(Δ\)/Max = (\S+)", out)
    assert float(rel.group(1)) == pytest.approx(value("Forces", "RMS(ForceDiff) / RMS(Force)"), rel=1e-4)
    assert float(rel.group(2)) == pytest.approx(value("Forces", "Max(ForceDiff) / Max(Force)"), rel=1e-4)
    assert float(rel.group(3)) == pytest.approx(value("Stresses (in energy units)",
                                                      "RMS(StresDiff) / RMS(Stres)"), rel=1e-4)
    assert float(rel.group(4)) == pytest.approx(value("Stresses (in energy units)",
                                                      "Max(StresDiff) / Max(Stres)"), rel=1e-4)
    assert main(["check_errors", str(ex / "04_pot.almtp"), str(ex / "train.cfg"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["energy"]["rmse"] / 1000 == pytest.approx(value("Energy per atom", "RMS     absolute difference"),
                                                         rel=1e-4)
    # MLIP-3's force RMS is over atom vectors: sqrt(3) × our per-component RMSE
    assert np.sqrt(3) * got["forces"]["rmse"] == pytest.approx(
        value("Forces", "RMS     absolute difference"), rel=1e-4)


def test_train_with_mlip3_option_names(mlip3, tmp_path, capsys):
    """`mmtp train` with mlp train's spellings: weights, iteration limit, save_to, al_mode, mindist."""
    ex = mlip3 / "examples"
    out = tmp_path / "out_pot.almtp"
    assert main(["train", str(mlip3 / "templates" / "06.almtp"), str(ex / "train.cfg"),
                 "--iteration_limit=4", "--energy_weight=1", "--force_weight=0.01", "--stress_weight=0.001",
                 "--weight_scaling=1", "--update_mindist", "--al_mode=cfg", "--init_random=true",
                 f"--save_to={out}"]) == 0
    text = capsys.readouterr().out
    assert "min_dist:" in text and "max_iter=4" in text and "force_weight=0.01" in text
    pot = load_potential(out)
    assert pot.trained and pot.min_dist == pytest.approx(0.99 * 2.39245, abs=1e-4)
    assert ActiveSet.from_potential(pot).resolve_mode("auto") == "cfg"
    # the active set represents its own training set: every grade <= MaxVol's threshold
    assert max(r.grade for r in grade_configurations(pot, read_cfg(ex / "train.cfg"))) <= 1.001 + 1e-9
    # MLIP-3's trained_pot_name spelling names the same output
    again = tmp_path / "again.mtp"
    assert main(["train", str(out), str(ex / "train.cfg"), "--iteration_limit=0", "--init_random=false",
                 f"--trained_pot_name={again}"]) == 0
    assert "init=keep" in capsys.readouterr().out        # a trained potential is continued, as in MLIP-3
    assert load_potential(again).trained


def test_species_maps_cfg_types_and_a_wrong_order_gets_a_hint(tmp_path, capsys):
    """A .cfg whose type 0 is Al, with the Fe–Al potential (Fe = 0): --species Al Fe maps it,
    outputs keep the file's numbering, and without it `errors` names the fix."""
    from pathlib import Path

    from mmtp_hpc.io.cfg import write_cfg
    from mmtp_hpc.io.trainingset import read_trainingset_h5

    repo = Path(__file__).resolve().parents[1]
    pot = str(repo / "inputs" / "potentials" / "feal_b2_analytic_l16.almtp")
    configs = read_trainingset_h5(repo / "inputs" / "potentials" / "feal_b2_analytic_l16_train.h5")[:3]
    swapped = [c.copy() for c in configs]
    for c in swapped:
        c.types = 1 - c.types                    # the file's type 0 is Al
    write_cfg(tmp_path / "pot_order.cfg", configs)
    write_cfg(tmp_path / "al_first.cfg", swapped)

    assert main(["errors", pot, str(tmp_path / "pot_order.cfg"), "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert main(["errors", pot, str(tmp_path / "al_first.cfg"), "--species", "Al", "Fe", "--json"]) == 0
    mapped = json.loads(capsys.readouterr().out)
    for key in ("energy", "forces", "magnetic_gradient"):
        assert mapped[key]["rmse"] == pytest.approx(reference[key]["rmse"], rel=1e-12)

    import warnings

    from mmtp_hpc.potentials.mtp.engine import MagneticRangeWarning

    with warnings.catch_warnings():     # Fe moments on atoms taken for Al: outside Al's interval
        warnings.simplefilter("ignore", MagneticRangeWarning)
        assert main(["errors", pot, str(tmp_path / "al_first.cfg")]) == 0
    out = capsys.readouterr().out
    assert "--species Al Fe" in out and "another species order" in out

    # efs: evaluated in the potential's order, written with the file's own type numbers
    assert main(["calculate_efs", pot, str(tmp_path / "al_first.cfg"), str(tmp_path / "efs.cfg"),
                 "--species", "Al", "Fe"]) == 0
    assert main(["efs", pot, str(tmp_path / "pot_order.cfg"), "-o", str(tmp_path / "efs_ref.cfg")]) == 0
    for a, b in zip(read_cfg(tmp_path / "efs.cfg"), read_cfg(tmp_path / "efs_ref.cfg"), strict=True):
        np.testing.assert_array_equal(a.types, 1 - b.types)
        assert a.energy == b.energy
        np.testing.assert_array_equal(a.forces, b.forces)
