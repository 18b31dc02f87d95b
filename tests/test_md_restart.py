"""Restarts are exact: N steps straight equal N/2 + restart + N/2 bit for bit, trajectories too."""

import shutil

import h5py
import numpy as np
import pytest
from md_potential import md_settings

from mmtp_hpc.cli import main
from mmtp_hpc.dynamics import Simulation
from mmtp_hpc.io import schema
from mmtp_hpc.io.checkpoint import read_checkpoint
from mmtp_hpc.io.trajectory import read_trajectory

CASES = {
    "langevin+mc": ({"ensemble": "nvt", "thermostat": "langevin", "damping_fs": 30.0},
                    {"mode": "mc", "every": 3, "mc_sweeps": 1, "mc_flip_fraction": 0.2}),
    "npt-csvr+langevin": ({"ensemble": "npt", "thermostat": "csvr", "pressure_GPa": 2.0,
                           "barostat_damping_fs": 100.0},
                          {"mode": "langevin", "gamma": 0.02}),
    "nose-hoover+relax": ({"ensemble": "nvt", "thermostat": "nose-hoover", "damping_fs": 40.0},
                          {"mode": "relax", "relax_tol": 1e-4}),
    "npt-aniso-nh": ({"ensemble": "npt", "thermostat": "nose-hoover", "barostat": "anisotropic",
                      "pressure_GPa": [0.0, 1.0, 2.0], "barostat_damping_fs": 100.0}, {"mode": "fixed"}),
}


def settings_for(pot, base, steps, md, moments, **output):
    return md_settings(pot, base, repeat=3,
                       md={"steps": steps, "temperature_K": 900.0, "initial_temperature_K": 900.0,
                           "skin": 0.3, "seed": 21, **md},
                       moments=moments,
                       output={"trajectory": "traj.h5", "every": 10, "checkpoint": "ckpt.h5",
                               "checkpoint_every": 1000, "store": ["positions", "velocities", "magmoms",
                                                                  "forces", "site_energies"], **output})


def final_state(sim):
    s = sim.state
    return {"positions": s.positions.copy(), "velocities": s.velocities.copy(), "magmoms": s.magmoms.copy(),
            "cell": s.cell.copy(), "forces": sim.evaluation.forces.copy(), "time": s.time_fs, "heat": s.heat,
            **{f"th_{k}": np.array(v) for k, v in s.thermostat.items()}}


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("case", list(CASES))
def test_restart_is_bit_identical(fe_potential, tmp_path, case):
    md, moments = CASES[case]
    n = 120
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight_dir.mkdir()
    split_dir.mkdir()

    straight = Simulation.from_settings(settings_for(fe_potential, straight_dir, n, md, moments), stream=None)
    straight.run()
    assert straight.forcefield.rebuilds > 1          # the list was rebuilt along the way

    first = Simulation.from_settings(settings_for(fe_potential, split_dir, n // 2, md, moments), stream=None)
    first.run()
    second = Simulation.from_settings(settings_for(fe_potential, split_dir, n, md, moments),
                                      restart=split_dir / "ckpt.h5", stream=None)
    assert second.state.step == n // 2
    second.run()

    assert_identical(final_state(straight), final_state(second))
    a, b = read_trajectory(straight_dir / "traj.h5"), read_trajectory(split_dir / "traj.h5")
    assert list(a["step"]) == list(range(0, n + 1, 10))
    for key in ("step", "time", "cell", "positions", "velocities", "magmoms", "forces", "site_energies",
                "potential_energy", "temperature", "pressure"):
        assert np.array_equal(a[key], b[key], equal_nan=True), key
    ca, cb = read_checkpoint(straight_dir / "ckpt.h5"), read_checkpoint(split_dir / "ckpt.h5")
    assert ca.step == cb.step == n


def test_killed_run_continues_from_last_checkpoint(fe_potential, tmp_path):
    """A run 'killed' after step 150 (last checkpoint at 100) and restarted gives the
    uninterrupted run's state and trajectory (frames after the checkpoint are redone)."""
    md, moments = CASES["langevin+mc"]
    straight_dir, run_dir = tmp_path / "straight", tmp_path / "run"
    straight_dir.mkdir()
    run_dir.mkdir()
    Simulation.from_settings(settings_for(fe_potential, straight_dir, 200, md, moments), stream=None).run()

    killed = Simulation.from_settings(settings_for(fe_potential, run_dir, 150, md, moments,
                                                   checkpoint_every=100), stream=None)
    killed.attach(lambda s: shutil.copy(run_dir / "ckpt.h5", run_dir / "ckpt100.h5")
                  if s.state.step == 100 else None, 100)
    killed.run()
    assert read_trajectory(run_dir / "traj.h5")["step"][-1] == 150
    resumed = Simulation.from_settings(settings_for(fe_potential, run_dir, 200, md, moments),
                                       restart=run_dir / "ckpt100.h5", stream=None)
    resumed.run()
    a, b = read_trajectory(straight_dir / "traj.h5"), read_trajectory(run_dir / "traj.h5")
    assert list(b["step"]) == list(range(0, 201, 10))
    for key in ("positions", "velocities", "magmoms", "forces"):
        assert np.array_equal(a[key], b[key]), key


def test_trajectory_and_checkpoint_files(fe_potential, tmp_path):
    md, moments = CASES["langevin+mc"]
    sim = Simulation.from_settings(settings_for(fe_potential, tmp_path, 30, md, moments), stream=None)
    sim.run()
    with h5py.File(tmp_path / "traj.h5", "r") as f:
        H = schema.H5MD
        assert f.attrs[schema.KIND_ATTR] == schema.KIND_TRAJECTORY
        assert int(f.attrs[schema.SCHEMA_VERSION_ATTR]) == schema.TRAJECTORY_SCHEMA_VERSION
        assert list(f[H.ROOT].attrs[H.VERSION_ATTR]) == [1, 1]
        assert f[H.ROOT][H.CREATOR].attrs[H.NAME_ATTR] == "mmtp_hpc" and H.NAME_ATTR in f[H.ROOT][H.AUTHOR].attrs
        p = f[H.particle_path()]
        assert p[H.BOX].attrs[H.DIMENSION_ATTR] == 3
        assert [b.decode() for b in p[H.BOX].attrs[H.BOUNDARY_ATTR]] == ["periodic"] * 3
        position = p["position/value"]
        assert position.maxshape == (None, 54, 3)
        assert position.attrs["unit"] == "Angstrom"
        assert p["velocity/value"].attrs["unit"] == "Angstrom fs-1"
        assert p["position/time"].attrs["unit"] == "fs"
        assert f["observables/pressure/value"].attrs["unit"] == "GPa"
        assert p["magnetic_moment/value"].attrs["unit"] == "muB"
        assert position.compression == "gzip"
        assert list(p["position/step"]) == list(range(0, 31, 10))
        # one step/time pair, hard-linked into every element
        assert p["velocity/step"] == p["position/step"] and f["observables/temperature/time"] == p["position/time"]
        assert p[H.SPECIES].shape == (54,) and p[H.ID].shape == (54,) and p[H.MASS].attrs["unit"] == "amu"
    traj = read_trajectory(tmp_path / "traj.h5")
    assert traj["settings"]["md"]["thermostat"] == "langevin"
    assert traj["settings"]["moments"]["mode"] == "mc"
    assert traj["species"] == ["Fe"]
    assert np.allclose(traj["masses"], 55.845)
    ck = read_checkpoint(tmp_path / "ckpt.h5")
    assert ck.step == 30 and ck.seed == 21 and ck.settings["md"]["steps"] == 30
    assert np.array_equal(ck.state["positions"], sim.state.positions)
    assert ck.potential_sha256 and ck.stop_reason == ""


def test_cli_restart(fe_potential, tmp_path, capsys):
    text = f"""
[system]
lattice = "bcc"
a = {fe_potential.a}
repeat = 2
species = ["Fe"]
magmoms = {fe_potential.magmoms}

[potential]
file = "{fe_potential.path}"

[md]
steps = 20
temperature_K = 300

[moments]
mode = "langevin"

[output]
every = 5
log_every = 5
"""
    path = tmp_path / "input.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["md", str(path)]) == 0
    out = capsys.readouterr().out
    assert "steps/s" in out and "mmtp md summary" in out and "trajectory:" in out
    assert main(["md", str(path), "--restart", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "restart from" in out and "step 20 → 40" in out
    assert read_trajectory(tmp_path / "trajectory.h5")["step"].tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40]


def test_interrupted_run_keeps_last_checkpoint(fe_potential, tmp_path):
    """An exception inside the run (here from an observer at step 30) leaves the last regular
    checkpoint (step 20) untouched; restarting from it reproduces the uninterrupted run."""
    md, moments = CASES["langevin+mc"]
    straight_dir, run_dir = tmp_path / "straight", tmp_path / "run"
    straight_dir.mkdir()
    run_dir.mkdir()
    Simulation.from_settings(settings_for(fe_potential, straight_dir, 60, md, moments), stream=None).run()

    sim = Simulation.from_settings(settings_for(fe_potential, run_dir, 60, md, moments, checkpoint_every=20),
                                   stream=None)

    def interrupt(s):
        if s.state.step == 30:
            raise KeyboardInterrupt

    sim.attach(interrupt, 10)
    with pytest.raises(KeyboardInterrupt):
        sim.run()
    assert sim.aborted and read_checkpoint(run_dir / "ckpt.h5").step == 20
    assert read_trajectory(run_dir / "traj.h5")["step"][-1] == 30
    resumed = Simulation.from_settings(settings_for(fe_potential, run_dir, 60, md, moments),
                                       restart=run_dir / "ckpt.h5", stream=None)
    resumed.run()
    a, b = read_trajectory(straight_dir / "traj.h5"), read_trajectory(run_dir / "traj.h5")
    assert np.array_equal(a["step"], b["step"])
    for key in ("positions", "velocities", "magmoms"):
        assert np.array_equal(a[key], b[key]), key
