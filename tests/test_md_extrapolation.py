"""Extrapolation grades during MD: MLIP-3 agreement, saving, clean stop at break."""

import json

import numpy as np
import pytest
from md_potential import MDPotential, fe_model_potential, md_settings, write_model_potential

from mmtp_hpc.potentials.mtp.grades import ActiveSet
from mmtp_hpc.cli import main
from mmtp_hpc.dynamics import Simulation
from mmtp_hpc.errors import InputError
from mmtp_hpc.io.checkpoint import read_checkpoint
from mmtp_hpc.io.formats import read_configurations
from mmtp_hpc.io.trajectory import read_trajectory
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential


def test_grades_match_mlip3(shared_data):
    """MLIP-3's own grades of its worked example (neighbourhood mode, 04_graded.cfg)."""
    pot = load_potential(shared_data / "mlip3/examples/04_pot.almtp")
    active = ActiveSet.from_potential(pot)
    assert active.default_mode == "nbh"
    engine = MTPEngine(pot)
    configs = read_configurations(shared_data / "mlip3/examples/04_graded.cfg")
    assert len(configs) == 2
    for cfg in configs:
        result = active.grade(engine, cfg)
        expected = float(cfg.features["MV_grade"])
        assert result.grade == pytest.approx(expected, rel=1e-6)
        # nbh_grades are printed with 5 decimals
        assert np.abs(result.nbh_grades - cfg.nbh_grades).max() < 6e-6
        assert result.nbh_grades[result.worst_atom] == result.grade
    with pytest.raises(InputError, match="neighbourhood rows only"):
        active.grade(engine, configs[0], mode="cfg")


def test_configuration_mode_grades(fe_potential):
    """Configuration mode: γ = max |A⁻ᵀ (∂E/∂θ / N)|, the rows MaxVol selected with, so a
    training configuration grades ≤ 1 and the grade is independent of the cell's repetition."""
    from mmtp_hpc.active.maxvol import attach_active_set
    from mmtp_hpc.system.lattice import bulk

    pot = fe_model_potential()
    rng = np.random.default_rng(0)
    train = []
    for k in range(40):
        cfg = bulk("bcc", 2.87 * (1 + 0.01 * rng.normal()), 1, jitter=0.1, seed=k)
        cfg.magmoms = 2.3 + 0.3 * rng.normal(size=len(cfg))
        train.append(cfg)
    attach_active_set(pot, train, mode="cfg")
    active = ActiveSet.from_potential(pot)
    assert active.default_mode == "cfg" and active.weight_scaling == 2
    engine = MTPEngine(pot)
    grades = [active.grade(engine, c).grade for c in train]
    assert max(grades) <= 1.001 + 1e-6
    # a 2×2×2 repetition of a configuration has the same ∂E/∂θ / N, hence the same grade
    cell = train[3].cell
    shifts = np.array([(i, j, k) for i in range(2) for j in range(2) for k in range(2)]) @ cell
    doubled = train[3].copy()
    doubled.positions = (train[3].positions[None] + shifts[:, None]).reshape(-1, 3)
    doubled.types = np.tile(train[3].types, 8)
    doubled.magmoms = np.tile(train[3].magmoms, 8)
    doubled.ids = np.arange(1, len(doubled.types) + 1)
    doubled.cell = 2 * cell
    assert active.grade(engine, doubled).grade == pytest.approx(grades[3], rel=1e-9)
    with pytest.raises(InputError, match="configuration rows"):
        active.grade(engine, train[0], mode="nbh")


@pytest.fixture(scope="module")
def fe_with_active_set(fe_potential, tmp_path_factory) -> MDPotential:
    """The Fe potential with an active set selected (MaxVol, neighbourhoods) from 300 K MD frames."""
    from mmtp_hpc.active.maxvol import attach_active_set

    base = tmp_path_factory.mktemp("active")
    settings = md_settings(fe_potential, base, repeat=3,
                           md={"steps": 2000, "ensemble": "nvt", "temperature_K": 300.0, "damping_fs": 20.0,
                               "initial_temperature_K": 300.0, "seed": 1},
                           moments={"mode": "langevin", "gamma": 0.02})
    sim = Simulation.from_settings(settings, stream=None)
    frames = []
    sim.attach(lambda s: frames.append(s.state.configuration()), 50)
    sim.run()
    pot = load_potential(fe_potential.path)
    attach_active_set(pot, frames, mode="nbh")
    path = base / "fe_active.almtp"
    save_potential(pot, path)
    return MDPotential(path, fe_potential.species, fe_potential.lattice, fe_potential.a, fe_potential.magmoms)


def write_input(tmp_path, pot: MDPotential, temperature: float, steps: int, save_to: str,
                every: int = 10, brk: float = 100.0) -> object:
    text = f"""
[system]
lattice = "{pot.lattice}"
a = {pot.a}
repeat = 3
species = {json.dumps(pot.species)}
magmoms = {pot.magmoms}

[potential]
file = "{pot.path}"

[md]
steps = {steps}
ensemble = "nvt"
temperature_K = {temperature}
damping_fs = 20
seed = 2

[moments]
mode = "langevin"
gamma = 0.02

[extrapolation]
every = {every}
select = 3.0
break = {brk}
save_to = "{save_to}"

[output]
every = 10
log_every = 50
checkpoint_every = 100000
"""
    path = tmp_path / "input.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("save_to", ["extrapolative.cfg", "extrapolative.h5"])
def test_break_stops_cleanly_with_checkpoint(fe_with_active_set, tmp_path, capsys, save_to):
    """At 1500 K (trained at 300 K) the grade passes break: the run stops with a message that
    says where and why, a checkpoint to continue from and the saved configurations."""
    path = write_input(tmp_path, fe_with_active_set, 1500.0, 3000, save_to)
    assert main(["md", str(path)]) == 3
    captured = capsys.readouterr()
    assert "stopped at step" in captured.err and "extrapolation grade" in captured.err
    assert "break = 100" in captured.err and "worst neighbourhood: atom id" in captured.err
    worst_id = int(captured.err.split("worst neighbourhood: atom id ")[1].split(";")[0].split()[0])
    assert "STOPPED EARLY" in captured.out
    ck = read_checkpoint(tmp_path / "checkpoint.h5")
    assert 0 < ck.step < 3000 and "extrapolation grade" in ck.stop_reason
    saved = read_configurations(tmp_path / save_to)
    grades = [float(c.features["MV_grade"]) for c in saved]
    assert len(saved) >= 1 and min(grades) > 3.0 and grades[-1] > 100.0
    assert int(saved[-1].features["md_step"]) == ck.step
    assert saved[-1].nbh_grades is not None and saved[-1].nbh_grades.max() == pytest.approx(grades[-1])
    # the message names the atom (by id) whose neighbourhood has the largest grade
    assert worst_id == int(saved[-1].ids[int(np.argmax(saved[-1].nbh_grades))])
    assert np.array_equal(saved[-1].positions, ck.state["positions"])
    traj = read_trajectory(tmp_path / "trajectory.h5")
    assert traj["step"][-1] == ck.step and np.nanmax(traj["grade"]) > 100.0
    # the saved configurations load with `mmtp info`
    assert main(["info", str(tmp_path / save_to), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["configurations"] == len(saved) and info["labels"]["MV_grade"] == len(saved)
    # the checkpoint is usable: continue without grading, to the end
    path = write_input(tmp_path, fe_with_active_set, 1500.0, ck.step + 50, save_to, every=0)
    assert main(["md", str(path), "--restart", "--quiet"]) == 0
    assert read_checkpoint(tmp_path / "checkpoint.h5").step == ck.step + 50
    assert len(read_configurations(tmp_path / save_to)) == len(saved)


def test_grades_stay_low_near_the_training_data(fe_with_active_set, tmp_path):
    sim = Simulation.from_settings(md_settings(
        fe_with_active_set, tmp_path, repeat=3,
        md={"steps": 300, "ensemble": "nvt", "temperature_K": 300.0, "damping_fs": 20.0, "seed": 9},
        moments={"mode": "langevin", "gamma": 0.02},
        extrapolation={"every": 20, "select": 1e6, "break": 1e7, "save_to": "x.cfg"}), stream=None)
    sim.run()
    assert sim._extrapolation.evaluated == 16
    assert sim._extrapolation.max_grade < 30.0
    assert not (tmp_path / "x.cfg").exists()
    # the grade on the MD's Verlet list (with skin, ghosts refreshed) equals a fresh one
    pot = load_potential(fe_with_active_set.path)
    fresh = ActiveSet.from_potential(pot).grade(MTPEngine(pot), sim.state.configuration())
    # (A⁻¹ has entries ~1e6 where the training data span little: round-off is amplified)
    assert sim.last_grade == pytest.approx(fresh.grade, rel=1e-7)
    assert np.allclose(sim.nbh_grades(), fresh.nbh_grades, rtol=1e-7, atol=0)


def test_extrapolation_needs_an_active_set(fe_potential, tmp_path):
    # the hand-built model potential has no active set (the shipped trained one has)
    model = MDPotential(write_model_potential(tmp_path / "model.mtp"), ["Fe"], "bcc", 2.87, 2.35)
    with pytest.raises(InputError, match="no active set"):
        Simulation.from_settings(md_settings(model, tmp_path, extrapolation={"every": 10}),
                                 stream=None)
