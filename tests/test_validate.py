"""``mmtp validate``: the potential against a reference oracle's unconstrained ground states and
constrained points. The reference here is the analytic Fe model run as an external command
(tests/data/oracles/penalty_oracle.py; real runs use ABINIT the same way)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmtp_hpc.active.oracles import CommandOracle
from mmtp_hpc.active.validate import validate
from mmtp_hpc.cli import main
from mmtp_hpc.potentials.analytic import AnalyticMagneticModel
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA
from mmtp_hpc.system.lattice import bulk

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "data" / "oracles" / "penalty_oracle.py"
FE_POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"


def command(tmp_path):
    return [sys.executable, str(SCRIPT), "input.cfg", "output.cfg", "--calls", str(tmp_path / "calls.txt")]


@pytest.fixture(scope="module")
def env_path() -> dict:
    import os

    return {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_validate_reference_side_and_a_failing_potential(tmp_path, env_path):
    oracle = CommandOracle(command(tmp_path), workers=2, env=env_path, timeout=120)
    engine = MTPEngine(load_potential(FE_POT))
    a = [2.80, 2.85, 2.90, 3.00, 3.05]
    v = validate(engine, oracle, ["Fe"], "bcc", a, a_ref=2.85, start=[3.0], workdir=tmp_path / "w",
                 moment_values=[1.5, 2.5], antiparallel_m=2.0, curve=np.linspace(2.75, 3.1, 8),
                 trained_a=(2.83, 2.89))
    model = AnalyticMagneticModel.default()
    for k, x in enumerate(a):                   # the reference side is the model's own ground state
        cfg = bulk("bcc", x, 1, sublattice_types=(0, 0))
        cfg.magmoms = np.array([3.0, 3.0])
        ref = model.label(cfg, relax=True)
        assert v.dft_energy[k] == pytest.approx(ref.energy / 2, abs=1e-9)
        assert v.dft_moments["Fe"][k] == pytest.approx(abs(ref.magmoms.mean()), abs=1e-6)
        p = np.trace(ref.virial) / (3 * ref.volume) * EV_PER_A3_TO_GPA
        assert v.dft_pressure[k] == pytest.approx(p, abs=1e-6)
    # the shipped analytic-model fit loses its moment beyond 2.97 Å: validation must say so
    errors, passed = v.errors(), v.passed()
    assert errors["moment"] > 1.0 and not passed["moment"]
    k3 = list(a).index(3.00)
    assert v.pot_moments["Fe"][k3] < 0.5 < v.dft_moments["Fe"][k3]
    # E(m), dE/dm: the reference's constrained values, the potential at the moments reached
    assert len(v.m_values) == 2 and np.all(np.abs(v.dft_gradient_m) > 0.0)
    assert v.dft_antiparallel > 0.0           # ferromagnetic bcc Fe: antiparallel costs energy
    text = v.markdown()
    assert "FAIL" in text and "Antiparallel" in text


def test_validate_command_writes_outputs_and_reuses_the_reference(tmp_path, env_path):
    toml = tmp_path / "oracle.toml"
    cmd = ", ".join(json.dumps(x) for x in command(tmp_path))
    env = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env_path.items())
    toml.write_text(f"[oracle]\nkind = \"command\"\ncommand = [{cmd}]\nworkers = 2\nenv = {{{env}}}\n")
    args = ["validate", str(FE_POT), "--oracle", str(toml), "--a", "2.80", "2.90", "--points", "3",
            "--a-ref", "2.85", "--start", "3.0", "--moments", "2.0", "2.4", "--workdir",
            str(tmp_path / "w"), "-o", str(tmp_path / "out" / "val"), "--trained-a", "2.83", "2.89",
            "--tol-moment", "0.2", "--tol-energy", "20", "--tol-pressure", "5", "--tol-energy-m", "40",
            "--tol-gradient-m", "0.2"]
    rc = main(args)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 8          # 3 ground states, each checked by a constrained run, + 2 points
    summary = json.loads((tmp_path / "out" / "val.json").read_text())
    assert set(summary["errors"]) == {"moment", "energy", "pressure", "energy_m", "gradient_m"}
    assert rc == (0 if all(summary["passed"].values()) else 1)
    for name in ("val.md", "val.csv", "val.png", "val_moments.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "| criterion |" in (tmp_path / "out" / "val.md").read_text()
    assert main(args) == rc                     # a rerun reads the reference back ...
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 8     # ... without new runs


def test_constrained_ground_state_where_the_free_scf_fails(tmp_path, env_path):
    """When the unconstrained run fails, the ground state is the constrained one with dE/dm = 0."""
    oracle = CommandOracle(command(tmp_path) + ["--fail-free"], workers=2, env=env_path, timeout=120)
    engine = MTPEngine(load_potential(FE_POT))
    a = [2.80, 2.85, 2.90]
    v = validate(engine, oracle, ["Fe"], "bcc", a, a_ref=2.85, start=[3.0], workdir=tmp_path / "w",
                 curve=np.linspace(2.8, 2.9, 3))
    assert v.constrained_points == a and not v.failures
    model = AnalyticMagneticModel.default()
    for k, x in enumerate(a):
        cfg = bulk("bcc", x, 1, sublattice_types=(0, 0))
        cfg.magmoms = np.array([3.0, 3.0])
        ref = model.label(cfg, relax=True)              # the model's own relaxed moment
        assert v.dft_moments["Fe"][k] == pytest.approx(abs(ref.magmoms.mean()), abs=0.01)
        assert v.dft_energy[k] == pytest.approx(ref.energy / 2, abs=1e-4)
    assert "secant search" in v.markdown()
    runs = len((tmp_path / "calls.txt").read_text().splitlines())
    validate(engine, oracle, ["Fe"], "bcc", a, a_ref=2.85, start=[3.0], workdir=tmp_path / "w",
             curve=np.linspace(2.8, 2.9, 3))
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == runs      # all read back


def test_free_scf_that_stops_off_the_root_is_corrected(tmp_path, env_path):
    """A free SCF that stops 0.3 μB above the ground state (as ABINIT's does on the flat
    landscape near a magnetic transition) and reports success: the constrained check finds
    dE/dm ≠ 0 there and the reference becomes the root of dE/dm (within the 0.02 μB bracket)."""
    oracle = CommandOracle(command(tmp_path) + ["--free-offset", "0.3"], workers=2, env=env_path, timeout=120)
    engine = MTPEngine(load_potential(FE_POT))
    a = [2.85, 2.90]
    v = validate(engine, oracle, ["Fe"], "bcc", a, a_ref=2.85, start=[3.0], workdir=tmp_path / "w",
                 curve=np.linspace(2.8, 2.9, 3))
    assert v.moved_points == a and not v.constrained_points and not v.failures
    model = AnalyticMagneticModel.default()
    for k, x in enumerate(a):
        cfg = bulk("bcc", x, 1, sublattice_types=(0, 0))
        cfg.magmoms = np.array([3.0, 3.0])
        ref = model.label(cfg, relax=True)
        assert v.dft_moments["Fe"][k] == pytest.approx(abs(ref.magmoms.mean()), abs=0.02)
        assert v.dft_energy[k] == pytest.approx(ref.energy / 2, abs=1e-3)
    assert "stopped at a moment where dE/dm" in v.markdown()
