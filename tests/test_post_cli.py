"""`mmtp post`, `mmtp scan` and trajectory export on a real `mmtp md` trajectory; the README's
plain-h5py example runs as written."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest
from mpi_helpers import REPO
from plot_helpers import png_ok

from mmtp_hpc.analysis.csvtable import read_csv
from mmtp_hpc.cli import main
from mmtp_hpc.io.formats import read_configurations_and_species
from mmtp_hpc.io.trajectory import TrajectoryWriter, read_trajectory

A = 2.855                               # fe_bcc_analytic_l16 equilibrium
POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
N_ATOMS = 54


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 54-atom bcc Fe NVT run (shipped level-16 potential) at 300 K, 600 steps, a frame
    every 2 fs (positions, velocities, moments), with Monte Carlo moments."""
    d = tmp_path_factory.mktemp("md")
    shutil.copy(POT, d)
    (d / "input.toml").write_text(f"""
[system]
lattice = "bcc"
a = {A}
repeat = 3
species = ["Fe"]
magmoms = 2.25

[potential]
file = "fe_bcc_analytic_l16.almtp"

[md]
steps = 600
timestep_fs = 1.0
temperature_K = 300.0
thermostat = "langevin"
damping_fs = 200.0
seed = 11

[moments]
mode = "mc"
every = 10

[output]
trajectory = "trajectory.h5"
every = 2
store = ["positions", "velocities", "magmoms"]
checkpoint = "checkpoint.h5"
checkpoint_every = 600
log_every = 600
""")
    assert main(["md", str(d / "input.toml"), "--quiet"]) == 0
    return d


@pytest.mark.parametrize("analysis", ["thermo", "magnetisation", "rdf", "vacf", "vdos", "msd"])
def test_every_analysis_writes_table_and_figure(run_dir, analysis, capsys):
    png, csv = run_dir / f"{analysis}.png", run_dir / f"{analysis}.csv"
    assert main(["post", analysis, str(run_dir / "trajectory.h5"), "--plot", str(png),
                 "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert f"mmtp post {analysis}" in out and "301 frames" in out
    png_ok(png)
    table = read_csv(csv)
    assert all(np.isfinite(v).any() for k, v in table.items() if k != "max_grade")   # no grades here


def test_thermo_and_magnetisation_values(run_dir):
    main(["post", "thermo", str(run_dir / "trajectory.h5"), "--frames", "100:",
          "--csv", str(run_dir / "t.csv")])
    t = read_csv(run_dir / "t.csv")
    assert len(t["step"]) == 201 and t["step"][0] == 200
    assert 150 < t["temperature_K"].mean() < 450
    np.testing.assert_allclose(t["magnetization_per_atom_uB"], t["magnetization_uB"] / N_ATOMS)
    main(["post", "magnetisation", str(run_dir / "trajectory.h5"), "--csv", str(run_dir / "m.csv")])
    m = read_csv(run_dir / "m.csv")
    assert 2.0 < m["mean_Fe_uB"].mean() < 2.7                  # ferromagnetic bcc Fe


def test_vdos_of_the_fe_run_integrates_to_3n_and_agrees_with_the_periodogram(run_dir, capsys):
    traj = str(run_dir / "trajectory.h5")
    main(["post", "vdos", traj, "--csv", str(run_dir / "v.csv")])
    main(["post", "vdos", traj, "--method", "spectrum", "--csv", str(run_dir / "s.csv")])
    out = capsys.readouterr().out
    assert re.search(r"∫ DOS dν = 162\.0000 \(3N = 162\)", out)
    v, s = read_csv(run_dir / "v.csv"), read_csv(run_dir / "s.csv")
    for dos in (v, s):
        assert np.trapezoid(dos["dos_total"], dos["freq_THz"]) == pytest.approx(3 * N_ATOMS, rel=1e-9)

    def mean_freq(d):
        return np.trapezoid(d["dos_total"] * d["freq_THz"], d["freq_THz"]) / (3 * N_ATOMS)

    # two routes to the same spectrum: VACF → windowed cosine transform, and |FFT v|²
    assert mean_freq(v) == pytest.approx(mean_freq(s), rel=0.05)
    assert 3.0 < mean_freq(v) < 10.0                             # THz: bcc Fe phonons
    assert v["freq_THz"][np.argmax(v["dos_total"])] == pytest.approx(
        s["freq_THz"][np.argmax(s["dos_total"])], abs=1.5)


def test_rdf_of_the_fe_run_peaks_at_bcc_shells(run_dir, capsys):
    main(["post", "rdf", str(run_dir / "trajectory.h5"), "--frames", "::10"])
    out = capsys.readouterr().out
    peaks = [float(x) for x in re.search(r"peaks of g\(r\) at r = ([0-9., ]+) Å", out).group(1).split(",")]
    np.testing.assert_allclose(peaks[:3], [A * np.sqrt(3) / 2, A, A * np.sqrt(2)], atol=0.05)


def test_export_to_extxyz_and_ase_traj_and_read_as_structure(run_dir, capsys):
    from ase.io import read
    from ase.units import fs

    traj = run_dir / "trajectory.h5"
    ref = read_trajectory(traj)
    assert main(["convert", str(traj), str(run_dir / "out.xyz"), "--frames", "::100"]) == 0
    assert main(["convert", str(traj), str(run_dir / "out.traj"), "--frames", "-1"]) == 0
    assert main(["convert", str(traj), str(run_dir / "wrapped.xyz"), "--frames", "-1", "--wrap"]) == 0
    assert "exported 4 frames" in capsys.readouterr().out
    images = read(run_dir / "out.xyz", ":")
    assert len(images) == 4 and images[1].info["step"] == 200
    np.testing.assert_allclose(images[1].get_velocities() * fs, ref["velocities"][100], atol=1e-7)
    np.testing.assert_allclose(images[1].get_initial_magnetic_moments(), ref["magmoms"][100], atol=1e-7)
    (last,) = read(run_dir / "out.traj", ":")
    np.testing.assert_allclose(last.positions, ref["positions"][-1], atol=1e-12)
    assert last.get_potential_energy() == pytest.approx(ref["potential_energy"][-1])
    wrapped = read(run_dir / "wrapped.xyz")
    frac = wrapped.get_scaled_positions(wrap=False)
    assert np.all((frac >= -1e-9) & (frac < 1 + 1e-9))
    # a trajectory is a structure source like any other file: every frame a configuration
    configs, species = read_configurations_and_species(traj)
    assert species == ["Fe"] and len(configs) == 301 and configs[-1].features["step"] == "600"
    np.testing.assert_array_equal(configs[-1].magmoms, ref["magmoms"][-1])


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    """A trajectory written through the writer API without velocities: the VACF says what to store."""
    w = TrajectoryWriter(tmp_path / "t.h5", ["positions"], species=["Fe"], types=np.zeros(2, int),
                         ids=np.arange(1, 3), masses=np.full(2, 55.845), pbc=np.ones(3, bool))
    for k in range(5):
        w.append({"step": k, "time": float(k), "cell": np.eye(3) * 3, "temperature": 300.0,
                  "positions": np.array([[0, 0, 0], [1.5, 1.5, 1.5]]) + 0.01 * k})
    w.close()
    assert main(["post", "vacf", str(tmp_path / "t.h5")]) == 1
    assert "add \"velocities\" to [output] store" in capsys.readouterr().err
    assert main(["post", "msd", str(tmp_path / "t.h5")]) == 0


def test_scan_cli_with_oracle_writes_figure_and_table(tmp_path, capsys):
    png, csv = tmp_path / "scan.png", tmp_path / "scan.csv"
    assert main(["scan", str(REPO / "inputs/potentials/fe_bcc_analytic_l16.almtp"), "--lattice", "bcc",
                 "--a", "2.75", "2.95", "--points", "7", "--oracle", "builtin",
                 "--plot", str(png), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "fe_bcc_analytic_l16.almtp: E minimum at a = 2.85" in out
    assert "oracle (builtin): E minimum at a = 2.85" in out
    png_ok(png)
    table = read_csv(csv)
    assert {"a_A", "energy_eV_per_atom", "pressure_GPa", "m_Fe_uB", "oracle_m_Fe_uB"} <= set(table)
    k = int(np.argmin(np.abs(table["a_A"] - 2.85)))
    assert table["oracle_m_Fe_uB"][k] == pytest.approx(2.25, abs=0.03)


def test_readme_h5py_example_runs(run_dir, capsys):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## HDF5 files"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace('path = "trajectory.h5"', f'path = r"{run_dir / "trajectory.h5"}"')
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "Angstrom fs-1" in out and "Fe mean moment" in out
    with h5py.File(run_dir / "trajectory.h5") as f:
        assert f["particles/all/position/value"].shape == (301, N_ATOMS, 3)


_SBATCH_SHIM = r"""#!/bin/bash
# stands in for sbatch: runs the --wrap script at once with the --export variables
wrap=""; exports=""
for arg in "$@"; do
  case "$arg" in
    --wrap=*) wrap=${arg#--wrap=} ;;
    --export=*) exports=${arg#--export=} ;;
    --dependency=*) echo "$arg" >> sbatch.log ;;
  esac
done
IFS=',' read -ra kv <<< "$exports"
for item in "${kv[@]}"; do [[ $item == ALL ]] || export "$item"; done
n=$(( $(cat jobid 2>/dev/null || echo 100) + 1 )); echo $n > jobid
SLURM_NTASKS=1 bash -c "$wrap" > "job$n.log" 2>&1 || exit 1
echo "$n;cluster"
"""


def test_batch_templates_parse_and_the_restart_chain_continues_a_run(run_dir, tmp_path):
    """chain_restart.sh with a stand-in sbatch: job 2 depends on job 1 and continues its
    checkpoint; the trajectory runs 0 → 120 without gaps or repeats."""
    import os
    import subprocess
    import sys

    for name in ("slurm_md.sh", "pbs_md.sh", "slurm_learn.sh", "chain_restart.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / name)], check=True)
    (tmp_path / "bin").mkdir()
    shim = tmp_path / "bin" / "sbatch"
    shim.write_text(_SBATCH_SHIM)
    shim.chmod(0o755)
    shutil.copy(POT, tmp_path)
    text = (run_dir / "input.toml").read_text().replace("every = 2\n", "every = 10\n")
    (tmp_path / "input.toml").write_text(text.replace("checkpoint_every = 600", "checkpoint_every = 1000"))
    venv = os.path.dirname(os.path.dirname(sys.executable))
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", VENV=venv,
               PYTHONPATH=str(REPO), NODES="1", TASKS_PER_NODE="1")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "chain_restart.sh"), "input.toml", "2", "60"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "".join(
        p.read_text() for p in tmp_path.glob("job*.log"))
    assert "job 2: 102, runs to step 120 after 101" in proc.stdout
    assert (tmp_path / "sbatch.log").read_text().strip() == "--dependency=afterok:101"
    assert "restart from checkpoint.h5 at step 60" in (tmp_path / "job102.log").read_text()
    np.testing.assert_array_equal(read_trajectory(tmp_path / "trajectory.h5")["step"], np.arange(0, 121, 10))


@pytest.mark.parametrize("name", ["POSCAR", "s.cif", "s.lmp", "trajectory.h5"])
def test_structure_input_from_ase_formats_and_our_trajectory(run_dir, tmp_path, name):
    """`[system] structure` takes POSCAR, cif, LAMMPS data and an MD trajectory (first frame
    by default, any frame with structure_index)."""
    from ase.build import bulk
    from ase.io import write

    from mmtp_hpc.dynamics import Simulation, load_settings

    atoms = bulk("Fe", "bcc", a=A, cubic=True) * (3, 3, 3)
    if name == "trajectory.h5":
        shutil.copy(run_dir / "trajectory.h5", tmp_path / name)
        index = "structure_index = 300"
    else:
        write(tmp_path / name, atoms, **({"format": "lammps-data", "masses": True} if name.endswith(".lmp")
                                         else {}))
        index = ""
    shutil.copy(POT, tmp_path)
    (tmp_path / "in.toml").write_text(f"""
[system]
structure = "{name}"
{index}
species = ["Fe"]
magmoms = 2.25
[potential]
file = "fe_bcc_analytic_l16.almtp"
[md]
steps = 2
[output]
trajectory = "t.h5"
checkpoint = "c.h5"
""")
    sim = Simulation.from_settings(load_settings(tmp_path / "in.toml"), stream=None)
    assert len(sim.state.positions) == N_ATOMS
    if name == "trajectory.h5":
        frame = read_trajectory(run_dir / "trajectory.h5")["positions"][300]
        np.testing.assert_array_equal(sim.state.positions, frame)
    else:
        np.testing.assert_allclose(np.sort(sim.state.positions[:, 0]), np.sort(atoms.positions[:, 0]),
                                   atol=1e-6)


def test_vdos_and_rdf_say_when_the_frames_cannot_resolve_them(run_dir, capsys):
    traj = str(run_dir / "trajectory.h5")
    main(["post", "vdos", traj])
    out = capsys.readouterr().out
    assert "frames are" not in out                     # 2 fs apart: fine
    assert "warning: resolution ≈ 3.33 THz" in out     # 0.6 ps run: max lag 300 fs
    png = run_dir / "thin_vdos.png"
    main(["post", "vdos", traj, "--frames", "::10", "--plot", str(png)])
    out = capsys.readouterr().out
    assert "warning: frames are 20 fs apart (Nyquist 25 THz)" in out and "only 31 frames" in out
    png_ok(png)
    main(["post", "rdf", traj, "--frames", "0:3", "--plot", str(run_dir / "few_rdf.png")])
    out = capsys.readouterr().out
    assert "warning: only 3 frame(s) averaged" in out
    main(["post", "rdf", traj, "--frames", "::10"])
    out = capsys.readouterr().out
    assert "warning" not in out
    # bcc: 8 nearest neighbours, then 6 more at a = 2.855 Å
    m = re.search(r"first shell \(to the first minimum, ([0-9.]+) Å\): coordination ([0-9.]+)", out)
    assert 2.5 < float(m.group(1)) < 2.8 and 7.5 < float(m.group(2)) < 9.5


def test_info_understands_trajectories_and_checkpoints(run_dir, capsys):
    assert main(["info", str(run_dir / "trajectory.h5"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "MD trajectory" and info["frames"] == 301 and info["atoms"] == N_ATOMS
    assert info["species"] == {"Fe": N_ATOMS} and info["frame_spacing_fs"] == pytest.approx(2.0)
    assert info["vdos_nyquist_THz"] == pytest.approx(250.0) and "velocities" in info["datasets"]
    assert main(["info", str(run_dir / "checkpoint.h5"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "MD checkpoint" and info["step"] == 600 and info["atoms"] == N_ATOMS
