"""Malformed .cfg, .almtp, .mtpr and md TOML files give clear errors through the CLI, never a traceback
or a silent non-finite result (scripts/fuzz_inputs.py, a fixed seed and a small number of
cases here; run the script with more cases to search further)."""

import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_fuzzed_text_inputs_fail_cleanly():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz_inputs.py"), "--cases", "25",
                           "--seed", "11", "--show", "3"], capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines()[1:5]]
    assert [r[0] for r in rows] == ["cfg", "almtp", "mtpr", "toml"]
    assert [int(r[1]) for r in rows] == [50, 50, 50, 25] and all(r[2] == "0" for r in rows)


def test_nan_in_an_active_set_is_an_error(tmp_path):
    from mmtp_hpc.errors import InputError
    from mmtp_hpc.potentials.mtp.mlip_io import MVS_MARKER, parse_active_set

    raw = (REPO.parent / "shared" / "data" / "mlip3" / "examples" / "04_pot.almtp").read_bytes()
    block = bytearray(raw[raw.index(MVS_MARKER):])
    start = block.index(b"weight_scaling")
    start = block.index(b"\n#", start) + 2            # first byte of A
    block[start:start + 8] = struct.pack("<d", float("nan"))
    with pytest.raises(InputError, match="non-finite"):
        parse_active_set(bytes(block))
    good = bytearray(raw[raw.index(MVS_MARKER):])
    good[start:start + 8] = struct.pack("<d", 1000.0)      # A changed, invA not: inconsistent
    with pytest.raises(InputError, match="does not invert"):
        parse_active_set(bytes(good))


def test_damaged_hdf5_files_fail_cleanly():
    """Trajectories, checkpoints, training sets and HDF5 potentials, damaged structurally (h5py)
    and as bytes: `mmtp info`/`post`/`convert`/`md --restart`/`errors`/`efs` give one clear error,
    never a traceback or a non-finite output (scripts/fuzz_hdf5.py; more cases there)."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz_hdf5.py"), "--cases", "10",
                           "--seed", "11", "--show", "3"], capture_output=True, text=True, timeout=1200,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines()[1:5]]
    assert [r[0] for r in rows] == ["trajectory", "checkpoint", "trainingset", "potential"]
    assert all(int(r[1]) >= 20 and r[2] == "0" for r in rows)
