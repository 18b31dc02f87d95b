"""Nothing lost, nothing hangs: kill -9 at any moment, readers during a run, one run per set of
files, no silent overwrite, restarts that check what they continue, crashes that tell the
truth, output errors that end every rank (issue 15)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mpi_helpers import mpiexec

from mmtp_hpc.io.trajectory import read_trajectory
from mmtp_hpc.io.trajectory_frames import open_trajectory

REPO = Path(__file__).resolve().parents[1]
POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO))


STEPS = 1500


def write_input(directory: Path, *, steps: int = STEPS, every: int = 10, checkpoint_every: int = 50,
                out: str = "", temperature: float = 600.0, timestep: float = 1.0, repeat: int = 3,
                potential: Path = POT, moments: str = 'mode = "mc"\nevery = 5') -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "input.toml"
    path.write_text(f"""
[system]
lattice = "bcc"
a = 2.855
repeat = {repeat}
species = ["Fe"]
magmoms = 2.25

[potential]
file = "{potential}"

[md]
steps = {steps}
timestep_fs = {timestep}
ensemble = "nvt"
temperature_K = {temperature}
thermostat = "langevin"
damping_fs = 50.0
seed = 7

[moments]
{moments}

[output]
trajectory = "{out}traj.h5"
every = {every}
store = ["positions", "velocities", "magmoms", "forces", "site_energies"]
checkpoint = "{out}ckpt.h5"
checkpoint_every = {checkpoint_every}
log = "{out}md.log"
log_every = {every}
speed_log = ""
""")
    return path


def mmtp(*args, cwd: Path, wait: bool = True, timeout: float = 300):
    cmd = [sys.executable, "-m", "mmtp_hpc", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by name (the kill script's comparison)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from kill_md import datasets as read_all
    finally:
        sys.path.pop(0)
    return read_all(path)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".lock")))


def log_steps(path: Path) -> list[int]:
    return [int(line.split()[0]) for line in path.read_text().splitlines() if line.split() and line.split()[0].isdigit()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: the datasets every interrupted run must end with."""
    d = tmp_path_factory.mktemp("straight")
    write_input(d, steps=STEPS)
    t0 = time.perf_counter()
    proc = mmtp("md", "input.toml", "--quiet", cwd=d)
    assert proc.returncode == 0, proc.stderr
    return d, datasets(d / "traj.h5"), time.perf_counter() - t0


def test_kill_at_random_moments_then_restart_gives_the_uninterrupted_trajectory(reference, tmp_path):
    ref_dir, ref, wall = reference
    rng = random.Random(15)
    d = tmp_path / "killed"
    write_input(d)
    kills = 0
    for attempt in range(40):
        args = ["md", "input.toml", "--quiet"]
        args += ["--restart"] if (d / "ckpt.h5").exists() else ["--overwrite"]
        proc = mmtp(*args, cwd=d, wait=False)
        if kills < 6:
            time.sleep(rng.uniform(0.1, 0.45) * wall)   # anywhere: start-up, frames, checkpoints
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills += 1
                # readable at every moment, frames before the checkpoint never altered
                if (d / "traj.h5").exists():
                    t = read_trajectory(d / "traj.h5")
                    k = len(t["step"])
                    assert np.array_equal(t["positions"], ref["particles/all/position/value"][:k])
                continue
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        break
    assert kills >= 3
    got = datasets(d / "traj.h5")
    assert got.keys() == ref.keys()
    for name in ref:
        assert np.array_equal(got[name], ref[name], equal_nan=True), name
    assert leftovers(d) == []
    assert sum(1 for ln in (d / "md.log").read_text().splitlines() if ln.split()[:1] == ["step"]) == 1
    steps = log_steps(d / "md.log")
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, (     # no step logged twice
        [s for k, s in enumerate(steps) if k and s <= steps[k - 1]], (d / "md.log").read_text()[-3000:])


def test_a_reader_polling_the_trajectory_does_not_disturb_the_run(reference, tmp_path):
    ref_dir, ref, wall = reference
    d = tmp_path / "watched"
    write_input(d)
    proc = mmtp("md", "input.toml", "--quiet", cwd=d, wait=False)
    reads, frames_seen = 0, []
    held = None
    while proc.poll() is None:
        if (d / "traj.h5").exists():
            t = read_trajectory(d / "traj.h5")            # never raises while the run writes
            frames_seen.append(len(t["step"]))
            reads += 1
            if held is None:
                held = open_trajectory(d / "traj.h5")     # a notebook keeping the file open
        time.sleep(0.02)
    out, err = proc.communicate()
    if held is not None:
        held.close()
    assert proc.returncode == 0, err
    assert reads > 20 and frames_seen == sorted(frames_seen)
    got = datasets(d / "traj.h5")
    for name in ref:
        assert np.array_equal(got[name], ref[name], equal_nan=True), name


def test_one_run_per_file_and_no_silent_overwrite(tmp_path):
    d = tmp_path / "twice"
    write_input(d, steps=3000)
    first = mmtp("md", "input.toml", "--quiet", cwd=d, wait=False)
    time.sleep(0.3)
    while not list(d.glob(".*.lock")) and first.poll() is None:
        time.sleep(0.05)
    second = mmtp("md", "input.toml", "--quiet", "--overwrite", cwd=d)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert second.returncode == 1
    assert "another mmtp md run (pid" in second.stderr and "Traceback" not in second.stderr
    # after the first run died, its stale lock does not block: a plain rerun is refused because
    # files exist, and it says what to do
    plain = mmtp("md", "input.toml", "--quiet", "--steps", "20", cwd=d)
    assert plain.returncode == 1 and "--restart" in plain.stderr and "--overwrite" in plain.stderr
    again = mmtp("md", "input.toml", "--quiet", "--steps", "20", "--overwrite", cwd=d)
    assert again.returncode == 0, again.stderr
    assert leftovers(d) == []


def test_restart_refuses_another_potential_or_changed_physics(tmp_path):
    d = tmp_path / "changed"
    pot = d / "pot.almtp"
    d.mkdir()
    shutil.copy(POT, pot)
    write_input(d, steps=40, checkpoint_every=20, potential=pot)
    assert mmtp("md", "input.toml", "--quiet", cwd=d).returncode == 0
    # the potential replaced in place by another file
    shutil.copy(REPO / "inputs" / "potentials" / "feal_b2_analytic_l16.almtp", pot)
    proc = mmtp("md", "input.toml", "--restart", "--steps", "60", "--quiet", cwd=d)
    assert proc.returncode == 1 and "is not the file the run used" in proc.stderr
    shutil.copy(POT, pot)
    # the temperature changed
    text = (d / "input.toml").read_text().replace("temperature_K = 600.0", "temperature_K = 900.0")
    (d / "input.toml").write_text(text)
    proc = mmtp("md", "input.toml", "--restart", "--steps", "60", "--quiet", cwd=d)
    assert proc.returncode == 1 and "md.temperature_K: 600.0 → 900.0" in proc.stderr
    proc = mmtp("md", "input.toml", "--restart", "--steps", "60", "--quiet", "--allow-changes", cwd=d)
    assert proc.returncode == 0, proc.stderr
    assert "continuing with changes" in proc.stderr


def test_blown_up_dynamics_are_explained_and_the_summary_tells_the_truth(tmp_path):
    d = tmp_path / "blowup"
    write_input(d, steps=200, checkpoint_every=1000, temperature=3.0e5, timestep=5.0,
                moments='mode = "fixed"')
    proc = mmtp("md", "input.toml", cwd=d)
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr
    assert "blew up" in proc.stderr and "smaller timestep" in proc.stderr
    # no checkpoint was written (the interval was not reached) and the summary says so
    assert not (d / "ckpt.h5").exists()
    assert "checkpoint: none written by this run" in proc.stdout
    assert "ABORTED at step" in proc.stdout
    assert leftovers(d) == []


def _launch(mode: str, directory: Path) -> subprocess.Popen:
    if mode == "serial":
        cmd = [sys.executable, "-m", "mmtp_hpc"]
    elif mode == "mpi4py":
        cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "mmtp_hpc"]
    else:                                     # plain `mpirun mmtp`
        cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mmtp_hpc"]
    return subprocess.Popen([*cmd, "md", "input.toml", "--quiet"], cwd=directory, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("mode", ["serial", "mpi4py", "plain-mpirun"])
def test_output_directory_deleted_mid_run_ends_every_rank_with_the_message(tmp_path, mode):
    """The output directory vanishes during the run: the next checkpoint cannot be written, and
    every rank ends within 10 s with one clear message (no hang, no traceback)."""
    d = tmp_path / mode
    write_input(d, steps=100000, every=20, checkpoint_every=20, out="out/", repeat=5,
                moments='mode = "fixed"')
    (d / "out").mkdir()
    start = time.time()
    proc = _launch(mode, d)
    deadline = time.time() + 120
    while not (d / "out" / "ckpt.h5").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    # the time to the first checkpoint (start-up and 20 steps) measures this machine's speed now
    first = time.time() - start
    shutil.rmtree(d / "out")
    t0 = time.time()
    try:
        out, err = proc.communicate(timeout=60 + 3 * first)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"{mode}: still running {60 + 3 * first:.0f} s after the directory was deleted") \
            from None
    # it ends at the next checkpoint (20 steps on): well within the time start-up and 20 steps took
    limit = max(10.0, 2.0 * first)
    assert time.time() - t0 < limit, f"{mode}: took {time.time() - t0:.1f} s to end (limit {limit:.1f} s)"
    assert proc.returncode != 0
    assert "output error" in err and "No such file or directory" in err, err
    assert "Traceback" not in err and "Segmentation" not in err, err


def _read_only(directory: Path):
    """Make ``directory`` read-only for a running program; returns (undo, the error text it meets).

    A non-root user: by its mode. Root, whom modes do not stop: by a read-only bind mount over it,
    as a file system that turns read-only mid-run (files opened before keep working, new files fail
    with EROFS). None when neither is possible here."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return (lambda: directory.chmod(0o755)), "Permission denied"
    d = str(directory)
    if subprocess.run(["mount", "--bind", d, d], capture_output=True).returncode != 0:
        return None
    if subprocess.run(["mount", "-o", "remount,ro,bind", d], capture_output=True).returncode != 0:
        subprocess.run(["umount", d], capture_output=True)
        return None
    return (lambda: subprocess.run(["umount", d], capture_output=True, check=True)), "Read-only file system"


@pytest.mark.parametrize("mode", ["serial", "mpi4py", "plain-mpirun"])
def test_output_directory_made_read_only_mid_run_ends_every_rank_and_keeps_the_checkpoint(tmp_path, mode):
    """The output directory turns read-only during the run: the next checkpoint cannot be
    written; every rank ends within 10 s with one clear message, and the last checkpoint is
    intact and restarts."""
    d = tmp_path / mode
    write_input(d, steps=100000, every=20, checkpoint_every=20, out="out/", repeat=5,
                moments='mode = "fixed"')
    out_dir = d / "out"
    out_dir.mkdir()
    probe = _read_only(out_dir)
    if probe is None:
        pytest.skip("cannot make a directory read-only for root here (bind mounts not permitted)")
    probe[0]()
    start = time.time()
    proc = _launch(mode, d)
    deadline = time.time() + 120
    while not (out_dir / "ckpt.h5").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    first = time.time() - start
    undo, message = _read_only(out_dir)
    t0 = time.time()
    try:
        try:
            out, err = proc.communicate(timeout=60 + 3 * first)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{mode}: still running {60 + 3 * first:.0f} s after the directory turned "
                                 "read-only") from None
        ended = time.time() - t0
    finally:
        undo()
    limit = max(10.0, 2.0 * first)
    assert ended < limit, f"{mode}: took {ended:.1f} s to end (limit {limit:.1f} s)"
    assert proc.returncode != 0
    assert "output error" in err and message in err, err
    assert "Traceback" not in err and "Segmentation" not in err, err
    # no temporary file; the run's lock files cannot be removed from a read-only directory, and
    # they do not stop the restart (a lock is held by an open file, not by the file's existence)
    assert [f for f in leftovers(out_dir) if f.endswith(".tmp")] == []
    # the last checkpoint is whole: a restart continues from it to the next frame
    from mmtp_hpc.dynamics.runfiles import read_checkpoint_header
    step = read_checkpoint_header(out_dir / "ckpt.h5")["step"]
    assert step >= 20 and step % 20 == 0
    text = (d / "input.toml").read_text().replace("steps = 100000", f"steps = {step + 20}")
    (d / "input.toml").write_text(text)
    proc = mmtp("md", "input.toml", "--quiet", "--restart", "--allow-changes", cwd=d)
    assert proc.returncode == 0, proc.stderr
    assert int(read_trajectory(out_dir / "traj.h5")["step"][-1]) == step + 20
