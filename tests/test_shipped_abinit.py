"""The shipped real-DFT potentials (issue 17) against the ABINIT results stored beside their campaigns.

``mmtp validate`` caches every DFT run in its work directory; the campaigns commit theirs
(``inputs/learn_*_abinit/validation/``), so the comparison runs here without ABINIT: a copy of
the cache is read back and the shipped potential is compared with it, criterion by criterion.
A potential that is re-shipped must still agree with DFT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmtp_hpc.active.oracles import oracle_from_settings
from mmtp_hpc.active.validate import validate
from mmtp_hpc.cli import main
from mmtp_hpc.io.potential_card import range_warnings, read_card
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential
from mmtp_hpc.settings import read_toml

REPO = Path(__file__).resolve().parents[1]
POT = REPO / "inputs" / "potentials"
FE = REPO / "inputs" / "learn_fe_abinit"

SHIPPED = {
    # name: species, the lattice range (Å), least upper moment bound of the data (μB)
    "fe_bcc_abinit": (["Fe"], (2.70, 3.02), 3.0),
    "feal_b2_abinit": (["Fe", "Al"], (2.80, 3.00), 1.0),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_card_states_the_range_and_the_dft(name, capsys):
    species, (a_lo, a_hi), m_hi = SHIPPED[name]
    path = POT / f"{name}.almtp"
    pot = load_potential(path)
    assert pot.trained and pot.magnetic and pot.active_set is not None
    assert list(pot.species_names) == species
    card = read_card(path)
    tr = card["training"]
    assert tr["species"] == species and tr["labels"]["dE/dm"] == tr["configurations"] > 0
    lo, hi = tr["cubic2_lattice_parameter_A"]
    assert lo <= a_lo + 0.01 and hi >= a_hi - 0.01          # the data span the stated range
    assert tr["moments_uB"]["Fe"][1] >= m_hi
    ab = card["oracle"]["abinit"]                            # the DFT settings, all labels
    assert (ab["ecut"], ab["pawecutdg"], ab["kspacing"], ab["occopt"], ab["tsmear"],
            ab["constraint_kind"]) == (26.0, 52.0, 0.25, 3, 0.01, 1)
    assert card["labels_computed"]["runs"] >= tr["configurations"]
    assert card["labels_computed"]["core_hours"] > 0
    assert card["status"] and card["limits"]
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for key in ("status", "lattice range", "DFT runs", "training RMSE", "limits"):
        assert key in out


def test_range_warnings_follow_the_card():
    card = read_card(POT / "fe_bcc_abinit.almtp")
    tr = card["training"]
    v_lo, v_hi = tr["volume_per_atom_A3"]
    m_lo, m_hi = tr["moments_uB"]["Fe"]
    inside = 0.5 * (v_lo + v_hi)
    assert range_warnings(card, 2, 2 * inside, {"Fe": (m_lo, m_hi)}) == []
    assert range_warnings(None, 2000, 1.0, {"Fe": (9.0, 9.0)}) == []
    (line,) = range_warnings(card, 2, 2 * v_hi * 1.05, {"Fe": (1.0, 2.0)})
    assert "volume per atom" in line and "outside" in line
    (line,) = range_warnings(card, 2, 2 * inside, {"Fe": (1.0, m_hi + 0.5)})
    assert "moments of Fe" in line
    (line,) = range_warnings(card, 2, 2 * inside, {"Al": (0.0, 0.0)})
    assert "species Al" in line
    plain = {**card, "training": {k: v for k, v in tr.items() if k != "moments_uB"}}   # no moments
    (line,) = range_warnings(plain, 2, 2 * inside, {"Al": (0.0, 0.0)})
    assert "species Al" in line
    (line,) = range_warnings(card, 54, 54 * inside, {"Fe": (2.0, 2.2)})
    assert "cells of 2 atoms only" in line and "54 atoms" in line
    analytic = read_card(POT / "fe_bcc_analytic_l16.almtp")      # 16-atom cells: no size warning
    lines = range_warnings(analytic, 250, 250 * np.mean(analytic["training"]["volume_per_atom_A3"]),
                           {"Fe": (2.0, 2.2)})
    assert len(lines) == 1 and "not physics" in lines[0]


def test_md_warns_outside_the_training_range(tmp_path, capsys):
    toml = tmp_path / "md.toml"
    toml.write_text(f"""[system]
lattice = "bcc"
a = 2.83
repeat = 3
species = ["Fe"]
magmoms = 2.2
[potential]
file = "{POT / 'fe_bcc_abinit.almtp'}"
[md]
steps = 1
[moments]
mode = "fixed"
[output]
trajectory = ""
checkpoint = ""
""")
    assert main(["md", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "warning: the potential was trained on cells of 2 atoms only; in 54 atoms" in out


def test_fe_agrees_with_the_stored_abinit_results(tmp_path):
    # (the DFT side starts from 3.0 μB, 4e-5 above the interval the data gave the potential: the
    # potential's side starts inside it, so no MagneticRangeWarning, which the suite makes an error)
    """Nine unconstrained ground states (2.70–3.02 Å), six constrained E(m) at 2.86 Å and the
    antiparallel pair, as `inputs/learn_fe_abinit/README.md` runs them; the shipped ensemble's
    spread."""
    cache = tmp_path / "validation"
    shutil.copytree(FE / "validation", cache, ignore=shutil.ignore_patterns("*.png", "fe.*"))
    data, text = read_toml(FE / "input.toml")
    oracle = oracle_from_settings(data["oracle"], FE, ["Fe"], source=str(FE / "input.toml"), text=text)
    engine = MTPEngine(load_potential(POT / "fe_bcc_abinit.almtp"))
    a = np.linspace(2.70, 3.02, 9)
    members = [MTPEngine(load_potential(m)) for m in sorted((POT / "fe_bcc_abinit_ensemble").glob("member_*.almtp"))]
    assert len(members) == 5
    v = validate(engine, oracle, ["Fe"], "bcc", a, a_ref=2.86, start=[3.0], workdir=cache,
                 moment_values=[1.0, 1.5, 1.75, 2.25, 2.75, 3.0], a_moment=2.86, antiparallel_m=2.0,
                 members=members, curve=np.linspace(2.55, 3.17, 16), trained_a=(2.70, 3.02))
    assert not v.failures                                    # every DFT point read back, none run
    errors, passed = v.errors(), v.passed()
    # the converged loop's potential (the README's table): four criteria pass; two miss their
    # tolerance at one point each, and the table says so. E(a) − E(2.86 Å) is within 2.5
    # meV/atom from 2.74 Å on and 5.5 off at the compressed edge, 2.70 Å (5 asked; 3.7 % of DFT's
    # 150 meV/atom there). E(m) is worst at m = 1.0 μB, where the constrained DFT energy jumps by
    # ≈ 16 meV/atom between 1.00 and 1.05 μB (two electronic solutions; see the campaign README)
    # and a smooth potential cannot follow; at the other five moments it is within 5 meV/atom
    for key in ("moment", "pressure", "gradient_m", "antiparallel"):
        assert passed[key], (key, errors[key])
    assert (errors["energy"] <= 5.0) == passed["energy"] and (errors["energy_m"] <= 10.0) == passed["energy_m"]
    k_ref = int(np.argmin(np.abs(v.a - 2.86)))
    de = 1e3 * np.abs((v.pot_energy - v.pot_energy[k_ref]) - (v.dft_energy - v.dft_energy[k_ref]))
    assert de.max() <= 6.0 and np.all(de[v.a >= 2.74 - 1e-9] <= 2.5), de
    dm = 1e3 * np.abs(v.pot_energy_m - v.dft_energy_m)
    assert dm.max() <= 11.0 and np.all(dm[v.m_values > 1.01] <= 5.0), dm
    # the DFT side is what the README's table quotes: ferromagnetic, moment rising with a
    assert np.all(np.diff(v.dft_moments["Fe"]) > 0) and 1.7 < v.dft_moments["Fe"][0] < v.dft_moments["Fe"][-1] < 2.8
    # the ensemble spreads outside the trained lattice range; inside, its band is narrower than
    # the accuracy asked of E(a) (5 meV/atom; the level-8 members from random starts: ≈ 3)
    inside, outside = v.spread_inside_outside()
    assert inside < 5.0 and outside > 3 * inside, (inside, outside)
    saved = json.loads((FE / "validation" / "fe.json").read_text())
    assert set(saved["passed"]) == set(passed)


def test_feal_agrees_with_the_stored_abinit_results(tmp_path):
    """B2 FeAl, as `inputs/learn_feal_abinit/validate_shipped.sh` runs it: nine ground states over
    2.80–3.00 Å, each a root of ∂E/∂m on Fe from constrained runs (three searched where the free
    SCF failed, six checks of converged free SCFs, three of which moved the moment; read back like
    the rest), E(m) at 2.86 Å, the antiparallel Fe pair (4-atom cells)."""
    feal = REPO / "inputs" / "learn_feal_abinit"
    cache = tmp_path / "validation"
    shutil.copytree(feal / "validation", cache, ignore=shutil.ignore_patterns("*.png", "feal.*"))
    data, text = read_toml(feal / "validation" / "oracle.toml")
    oracle = oracle_from_settings(data["oracle"], feal / "validation", ["Fe", "Al"],
                                  source=str(feal / "validation" / "oracle.toml"), text=text)
    engine = MTPEngine(load_potential(POT / "feal_b2_abinit.almtp"))
    members = [MTPEngine(load_potential(m)) for m in sorted((POT / "feal_b2_abinit_ensemble").glob("member_*.almtp"))]
    assert len(members) == 5
    a = np.linspace(2.80, 3.00, 9)
    v = validate(engine, oracle, ["Fe", "Al"], "b2", a, a_ref=2.875, start=[1.6, 0.0], workdir=cache,
                 moment_values=[0.2, 0.6, 1.0, 1.4], a_moment=2.86, antiparallel_m=0.8, members=members,
                 curve=np.linspace(2.70, 3.10, 9), trained_a=(2.80, 3.00), tolerances={"moment": 0.1})
    assert not v.failures
    errors, passed = v.errors(), v.passed()
    for key in ("energy", "pressure", "energy_m", "gradient_m", "antiparallel"):
        assert passed[key], (key, errors[key])
    # the DFT side: non-magnetic below the onset, a weak moment (< 0.1 μB) at it, then the Fe
    # moment growing with a; every ground state checked, three of the converged free SCFs moved
    m_dft, m_pot = v.dft_moments["Fe"], v.pot_moments["Fe"]
    assert m_dft[0] == 0.0 and m_dft[1] == 0.0 and np.all(m_dft[2:4] < 0.1)
    assert np.all(np.diff(m_dft[3:]) > 0) and 1.0 < m_dft[-1] < 1.2
    assert len(v.moved_points) == 3, v.moved_points
    # the relaxed Fe moment: 0 where DFT has 0–0.08 μB, within 0.05 μB from 2.925 Å on; at the
    # onset (2.90 Å: DFT 0.397 μB, potential 0.296) 0.101 μB off, the one criterion that fails,
    # by 0.001 μB: there d²E/dm² ≈ 0.04 eV/μB², so an error of 0.003 eV/μB in ∂E/∂m moves the
    # root by 0.1 μB, and E(0.30) − E(0.40) is 0.05 meV/atom (campaign README)
    assert np.all(np.abs(m_pot[:4]) < 1e-4) and np.all(m_dft[:4] <= 0.08)
    assert np.abs(m_pot - m_dft).max() <= 0.11
    assert passed["moment"] == (errors["moment"] <= 0.1)
    above = v.a >= 2.925 - 1e-9
    assert np.abs(m_pot[above] - m_dft[above]).max() <= 0.05
    inside, outside = v.spread_inside_outside()
    assert outside > inside
