"""The two builds of the MTP kernels (portable and AVX2 + FMA, `kernels.py`) give the same
results to rounding, and the variant choice (MMTP_KERNELS) is checked.

The AVX2 build exists on x86-64 only and runs only on CPUs with AVX2 and FMA; elsewhere the
comparison is skipped with a message (the portable build is what every other test then uses).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from util import bcc, random_configuration, random_potential

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp import _kernels as portable
from mmtp_hpc.potentials.mtp import engine as engine_module
from mmtp_hpc.potentials.mtp import kernels
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("energy", "site_energies", "forces", "virial", "magnetic_gradient", "basis")


def avx2_or_skip():
    try:
        module, _ = kernels.select("avx2")
    except InputError as exc:
        pytest.skip(f"no AVX2 kernels here: {exc}")
    return module


def evaluate_with(module, monkeypatch, engine, cfg, **kw):
    monkeypatch.setattr(engine_module, "_kernels", module)
    return engine.evaluate(cfg, **kw)


def relclose(a, b, rtol):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(np.abs(b).max(initial=0.0), 1e-300)
    assert np.abs(a - b).max(initial=0.0) <= rtol * scale, (np.abs(a - b).max(), scale)


@pytest.mark.parametrize("level,species,mag,symmetric", [
    (8, 1, 1, False), (16, 1, 2, False), (16, 2, 2, True), (12, 3, 3, False), (20, 2, 2, True),
])
def test_avx2_equals_portable(monkeypatch, level, species, mag, symmetric):
    avx2 = avx2_or_skip()
    pot = random_potential(level=level, species=species, mag_size=mag, seed=level + species,
                           symmetric=symmetric, per_species_interval=symmetric)
    engine = MTPEngine(pot, num_threads=1)
    for cfg in (random_configuration(n=9, species=species, seed=3, cell_size=5.8),
                bcc(repeat=2, species=species, seed=4, vacancies=1, moment=1.1)):
        for kw in ({"symmetric": False, "basis": True}, {"symmetric": symmetric}, {"derivatives": False}):
            a = evaluate_with(portable, monkeypatch, engine, cfg, **kw)
            b = evaluate_with(avx2, monkeypatch, engine, cfg, **kw)
            for key in KEYS:
                if key in a and a[key] is not None:
                    relclose(b[key], a[key], 1e-12)


def test_avx2_equals_portable_shipped_and_gradients(monkeypatch):
    avx2 = avx2_or_skip()
    pot = load_potential(ROOT / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp")
    engine = MTPEngine(pot, num_threads=1)
    cfg = bcc(repeat=3, species=1, seed=7, vacancies=2, moment=2.1)
    for sym in (False, True):
        a = evaluate_with(portable, monkeypatch, engine, cfg, symmetric=sym)
        b = evaluate_with(avx2, monkeypatch, engine, cfg, symmetric=sym)
        for key in ("energy", "forces", "virial", "magnetic_gradient"):
            relclose(b[key], a[key], 1e-12)
    monkeypatch.setattr(engine_module, "_kernels", portable)
    pa = engine.param_gradients(cfg)
    monkeypatch.setattr(engine_module, "_kernels", avx2)
    pb = engine.param_gradients(cfg)
    for key in pa:
        if isinstance(pa[key], np.ndarray):
            relclose(pb[key], pa[key], 1e-11)


def test_select_variants():
    module, name = kernels.select("portable")
    assert module is portable and name == "portable"
    module, name = kernels.select("auto")
    assert name in ("portable", "avx2")
    if name == "avx2":
        assert portable.cpu_has_avx2_fma()
        assert module.block_width() == 8
    assert portable.block_width() == 4
    with pytest.raises(InputError, match="MMTP_KERNELS.*'sse9'.*auto, portable, avx2"):
        kernels.select("sse9")


def test_cli_reports_bad_variant(tmp_path):
    env = dict(os.environ, MMTP_KERNELS="fastest", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mmtp_hpc", "efs",
                           str(ROOT / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"),
                           str(ROOT / "inputs" / "fe_bcc_2000" / "fe_bcc_2000.cfg"),
                           "-o", str(tmp_path / "out.cfg")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "MMTP_KERNELS" in proc.stderr and "fastest" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.cfg").exists()
