"""The `mmtp efs` and `mmtp info` commands (and `python -m mmtp_hpc`)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from mpi_helpers import REPO

from mmtp_hpc.cli import main
from mmtp_hpc.io.cfg import read_cfg
from mmtp_hpc.io.formats import read_configurations, write_configurations
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential

POT = REPO / "inputs" / "potentials" / "al_fe_mag.mtpr"
BCC = REPO / "inputs" / "fe_bcc_2000" / "fe_bcc_2000.cfg"


def test_efs_2000_atom_bcc_fe_level16_magnetic(tmp_path, capsys):
    out = tmp_path / "out.cfg"
    assert main(["efs", str(POT), str(BCC), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"2000 atoms, .* ([0-9.]+) µs/atom", printed)
    assert match and float(match.group(1)) > 0
    (cfg,) = read_cfg(out)
    pot = load_potential(POT)
    assert pot.level == 16 and pot.magnetic
    ref = MTPEngine(pot).evaluate(read_cfg(BCC)[0])
    assert cfg.energy == ref["energy"]                       # %.16e is exact
    np.testing.assert_array_equal(cfg.forces, ref["forces"])
    # PlusStress stores 6 components: the round-off asymmetry of the computed virial is lost
    np.testing.assert_allclose(cfg.virial, ref["virial"], rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(cfg.magnetic_gradient, ref["magnetic_gradient"])
    np.testing.assert_array_equal(cfg.site_energies, ref["site_energies"])
    text = out.read_text()
    assert "en_der_mx" in text and "PlusStress" in text and "site_en" in text


def test_efs_reproduces_mlip3_file(tmp_path, shared_data):
    """mmtp efs on MLIP-3's input gives MLIP-3's calculate_efs output values."""
    out = tmp_path / "efs.cfg"
    ref_dir = shared_data / "mlip3"
    assert main(["efs", str(ref_dir / "reference" / "li06_pot.almtp"),
                 str(ref_dir / "reference" / "li06_input.cfg"), "-o", str(out)]) == 0
    ours, theirs = read_cfg(out), read_cfg(ref_dir / "reference" / "ref_li06_efs.cfg")
    for a, b in zip(ours, theirs, strict=True):
        assert a.energy == pytest.approx(b.energy, rel=1e-10)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-8)
        np.testing.assert_allclose(a.virial, b.virial, atol=1e-8)


def test_efs_xyz_input_and_symmetrize(tmp_path):
    cfg = read_cfg(BCC)[0]
    small = cfg.copy()
    keep = np.arange(16)
    small.positions, small.types, small.magmoms, small.ids = (cfg.positions[keep], cfg.types[keep],
                                                              cfg.magmoms[keep], cfg.ids[keep])
    small.cell = cfg.cell / 5  # 2x2x2 bcc cells
    small.positions = small.positions % (2 * 2.8665)
    xyz = tmp_path / "in.xyz"
    write_configurations(xyz, [small], species=["Fe"])
    out = tmp_path / "out.xyz"
    assert main(["efs", str(POT), str(xyz), "-o", str(out), "--species", "Fe", "--symmetrize"]) == 0
    (back,) = read_configurations(out, species=["Fe"])
    pot = load_potential(POT)
    ref = MTPEngine(pot).evaluate(small, symmetric=True)
    assert back.energy == pytest.approx(ref["energy"], rel=1e-12)


def test_efs_magnetic_potential_needs_moments(tmp_path, capsys):
    cfg = read_cfg(BCC)[0]
    cfg.magmoms = None
    path = tmp_path / "nomag.cfg"
    write_configurations(path, [cfg])
    assert main(["efs", str(POT), str(path), "-o", str(tmp_path / "o.cfg")]) == 1
    assert "--magmoms" in capsys.readouterr().err
    assert main(["efs", str(POT), str(path), "-o", str(tmp_path / "o.cfg"), "--magmoms", "2.2"]) == 0


def test_info_potential_and_data(capsys, shared_data):
    assert main(["info", str(POT), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "potential" and info["level"] == 16 and info["species_count"] == 2
    assert info["magnetic"] and info["mag_basis_size"] == 2 and info["radial_basis_size"] == 12
    assert info["n_params"] == 4 * 4 * 12 * 4 + 2 + 92 and info["trained"]
    assert main(["info", str(shared_data / "mlip3" / "templates" / "20.almtp")]) == 0
    text = capsys.readouterr().out
    assert re.search(r"trained\s+False", text) and re.search(r"level\s+20", text)
    assert main(["info", str(shared_data / "mlip3" / "reference" / "ref_alfe_efs.cfg"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["configurations"] == 1 and data["atoms"] == 12
    assert data["labels"]["magnetic_gradient"] == 1 and data["types"] == {"0": 8, "1": 4}


def test_info_missing_file(capsys):
    assert main(["info", "/nonexistent/pot.mtp"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "mmtp_hpc", "info", str(POT)], capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "species_count" in proc.stdout
