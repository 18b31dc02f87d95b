"""MD trajectories in the H5MD 1.1 layout: MDAnalysis' own H5MD reader sees our frames, and
files of the first layout (``/frames``) are still read, converted and continued."""

import json

import h5py
import numpy as np
import pytest
from md_potential import md_settings

from mmtp_hpc.cli import main
from mmtp_hpc.dynamics import Simulation
from mmtp_hpc.io import schema
from mmtp_hpc.io.schema import Trajectory as T
from mmtp_hpc.io.trajectory import read_trajectory
from mmtp_hpc.io.trajectory_frames import trajectory_layout

STORE = ["positions", "velocities", "magmoms", "site_energies"]
NPT = {"ensemble": "npt", "thermostat": "csvr", "pressure_GPa": 3.0, "barostat_damping_fs": 100.0}


def run_md(pot, base, steps, md, *, restart=None, store=STORE, checkpoint_every=1000):
    settings = md_settings(pot, base, repeat=3,
                           md={"steps": steps, "temperature_K": 600.0, "skin": 0.3, "seed": 5, **md},
                           moments={"mode": "langevin", "gamma": 0.02},
                           output={"trajectory": "traj.h5", "every": 5, "checkpoint": "ckpt.h5",
                                   "checkpoint_every": checkpoint_every, "store": store})
    sim = Simulation.from_settings(settings, restart=restart, stream=None)
    sim.run()
    return sim


def write_legacy(traj: dict, path):
    """A trajectory in the first layout (schema version 1, ``/frames``), as mmtp_hpc 0.1 wrote it."""
    with h5py.File(path, "w") as f:
        schema.write_header(f, schema.KIND_TRAJECTORY, traj["settings"],
                            version=schema.LEGACY_TRAJECTORY_SCHEMA_VERSION)
        f.attrs[T.SPECIES_ATTR] = json.dumps(traj["species"])
        f.attrs[T.N_ATOMS_ATTR] = len(traj[T.TYPES])
        for name in (T.TYPES, T.IDS, T.MASSES, T.PBC):
            f[name] = traj[name]
        g = f.create_group(T.FRAMES)
        for name in (T.STEP, T.TIME, T.CELL, *T.SCALARS, *T.PER_ATOM):
            if name in traj:
                ds = g.create_dataset(name, data=traj[name], maxshape=(None, *traj[name].shape[1:]))
                schema.set_units(ds, name)


@pytest.mark.parametrize("md", [NPT, {"ensemble": "nvt", "thermostat": "langevin", "damping_fs": 50.0}],
                         ids=["npt", "nvt"])
def test_mdanalysis_reads_positions_box_and_observables(fe_potential, tmp_path, md):
    from MDAnalysis.coordinates.H5MD import H5MDReader

    run_md(fe_potential, tmp_path, 30, md)
    ours = read_trajectory(tmp_path / "traj.h5")
    assert list(ours["step"]) == list(range(0, 31, 5))
    if md is NPT:
        assert not np.allclose(ours["cell"][0], ours["cell"][-1])      # the box does change
    reader = H5MDReader(str(tmp_path / "traj.h5"))
    assert reader.n_frames == len(ours["step"]) and reader.n_atoms == 54
    assert reader.units["length"] == "Angstrom" and reader.units["time"] == "fs"
    for k, ts in enumerate(reader):
        # MDAnalysis keeps float32 coordinates and converts to its units: Å, Å/ps, ps
        np.testing.assert_allclose(ts.positions, ours["positions"][k], rtol=0, atol=2e-5)
        np.testing.assert_allclose(ts.velocities / 1000.0, ours["velocities"][k], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ts.triclinic_dimensions, ours["cell"][k], rtol=0, atol=2e-5)
        assert ts.time * 1000.0 == pytest.approx(ours["time"][k]) and ts.data["step"] == ours["step"][k]
        assert ts.data["temperature"] == ours["temperature"][k]
        assert ts.data["potential_energy"] == ours["potential_energy"][k]
    reader.close()


def test_first_layout_is_read_converted_and_continued(fe_potential, tmp_path, capsys):
    straight = tmp_path / "straight"
    straight.mkdir()
    run_md(fe_potential, straight, 40, NPT)
    ref = read_trajectory(straight / "traj.h5")

    # an old file: read the same, summarised, post-processed, converted exactly
    old = tmp_path / "old.h5"
    write_legacy(ref, old)
    assert trajectory_layout(old) == "legacy"
    legacy = read_trajectory(old)
    for key in (*STORE, "step", "time", "cell", "temperature", "types", "ids", "masses", "pbc"):
        assert np.array_equal(legacy[key], ref[key]), key
    assert main(["info", str(old), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "MD trajectory" and info["frames"] == 9 and info["atoms"] == 54
    assert info["layout"].startswith("first")
    assert main(["post", "thermo", str(old)]) == 0
    new = tmp_path / "new.h5"
    assert main(["convert", str(old), str(new)]) == 0
    assert "(H5MD 1.1)" in capsys.readouterr().out
    assert trajectory_layout(new) == "h5md"
    converted = read_trajectory(new)
    for key in ref:
        if key not in ("settings", "species"):
            assert np.array_equal(converted[key], ref[key], equal_nan=key in T.SCALARS), key
    assert converted["species"] == ref["species"] == ["Fe"]
    assert converted["settings"] == ref["settings"]
    assert main(["info", str(new), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layout"] == "H5MD 1.1"

    # a restart that continues an old file converts it, truncates to the checkpoint, goes on
    split = tmp_path / "split"
    split.mkdir()
    run_md(fe_potential, split, 20, NPT, checkpoint_every=20)
    write_legacy(read_trajectory(split / "traj.h5"), split / "traj.h5")
    assert trajectory_layout(split / "traj.h5") == "legacy"
    run_md(fe_potential, split, 40, NPT, restart=split / "ckpt.h5")
    assert trajectory_layout(split / "traj.h5") == "h5md"
    continued = read_trajectory(split / "traj.h5")
    for key in (*STORE, "step", "time", "cell", "temperature"):
        assert np.array_equal(continued[key], ref[key]), key


def test_restart_with_another_store_is_refused(fe_potential, tmp_path):
    from mmtp_hpc.errors import InputError

    run_md(fe_potential, tmp_path, 10, NPT, checkpoint_every=10)
    with pytest.raises(InputError, match="store must match"):
        run_md(fe_potential, tmp_path, 20, NPT, restart=tmp_path / "ckpt.h5", store=["positions"])


def test_uncompressed_frames_hold_the_same_numbers(fe_potential, tmp_path):
    """``[output] compress = false`` (large runs: write at the file system's speed) stores the
    per-atom frames without a filter, and the frames equal the compressed run's bit for bit."""
    runs = {}
    for compress in (True, False):
        base = tmp_path / str(compress)
        base.mkdir()
        settings = md_settings(fe_potential, base, repeat=3, md={"steps": 10, "temperature_K": 600.0, "seed": 5},
                               output={"trajectory": "traj.h5", "every": 5, "checkpoint": "",
                                       "store": STORE, "compress": compress})
        Simulation.from_settings(settings, stream=None).run()
        with h5py.File(base / "traj.h5") as f:
            filters = {f[f"particles/all/{name}/value"].compression for name in ("position", "velocity")}
        assert filters == ({"gzip"} if compress else {None})
        runs[compress] = read_trajectory(base / "traj.h5")
    for name in STORE:
        np.testing.assert_array_equal(runs[True][name], runs[False][name])
