"""scripts/bench_neighbors.py runs end to end on tiny cells (no assertions on timing values)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

from mpi_helpers import REPO

SCRIPT = REPO / "scripts" / "bench_neighbors.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_neighbors", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bcc_repeat_rounds_to_nearest_near_cubic_cell():
    bench = _load_script()
    assert bench.bcc_repeat(16) == (2, 2, 2)
    assert bench.bcc_repeat(250) == (5, 5, 5)
    assert bench.bcc_repeat(500) == (6, 6, 7)
    assert bench.bcc_repeat(16000) == (20, 20, 20)
    assert bench.bcc_repeat(1) == (1, 1, 1)


def test_bench_neighbors_json_on_tiny_cells(tmp_path):
    # 16, 54, 128 atoms: cells of 5.7 to 11.3 Å, smaller than twice the 5 Å cutoff (several
    # layers of periodic images)
    plot = tmp_path / "nb.png"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "16", "54", "128", "--repeat", "2",
                           "--json", "--plot", str(plot)],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)   # a hang guard, not a speed test
    assert proc.returncode == 0, proc.stderr
    assert "[3/3] 128 atoms" in proc.stderr          # progress goes to stderr
    lines = proc.stdout.strip().splitlines()
    assert any("slope of log t_neighbour vs log N" in line for line in lines)
    result = json.loads(lines[-1])
    rows = result["rows"]
    assert [r["n_atoms"] for r in rows] == [16, 54, 128]
    for r in rows:
        assert r["n_neighbor"] == 2 and r["n_evaluation"] == 2
        for key in ("neighbor_us_per_atom_median", "neighbor_us_per_atom_min",
                    "evaluation_us_per_atom_median", "evaluation_us_per_atom_min", "neighbor_over_evaluation"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["neighbor_us_per_atom_min"] <= r["neighbor_us_per_atom_median"]
        # same lattice, cutoff 5 Å: third to fifth shells of bcc, ≈ 58 neighbours whatever the cell size
        assert 50 < r["neighbors_mean"] < 66
        assert math.isfinite(r["energy_per_atom"])
    assert math.isfinite(result["slope_neighbor"]) and math.isfinite(result["slope_evaluation"])
    assert result["threads"] == 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
