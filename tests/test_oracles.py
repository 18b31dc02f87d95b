"""Oracles of the active-learning loop: analytic, ASE and external-command labelling, the λ
ladder of soft-constrained DFT, resumable batches, VASP/ABINIT writers and parsers, and a real
ABINIT cDFT run when ``abinit`` is installed."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from mpi_helpers import REPO

from mmtp_hpc.active.dft_abinit import (
    BOHR_ANGSTROM,
    HARTREE_EV,
    AbinitSettings,
    label_from_abinit,
    paw_radius,
    read_abinit_output,
    write_abinit_input,
)
from mmtp_hpc.active.dft_vasp import (
    VaspSettings,
    label_from_vasp,
    poscar_order,
    read_incar,
    read_poscar,
    read_vasp_outputs,
    write_vasp_inputs,
)
from mmtp_hpc.active.oracles import (
    AnalyticOracle,
    ASEOracle,
    CommandOracle,
    Oracle,
    OracleError,
    label_all,
    oracle_from_settings,
)
from mmtp_hpc.ase import MMTPCalculator
from mmtp_hpc.errors import InputError, MMTPError
from mmtp_hpc.io.cfg import read_cfg
from mmtp_hpc.potentials.analytic import AnalyticMagneticModel
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential
from mmtp_hpc.system.configuration import Configuration

DATA = Path(__file__).resolve().parent / "data" / "oracles"
SCRIPT = DATA / "penalty_oracle.py"
FE_POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
ABINIT_FE = Path("/usr/share/abinit/psp/Fe.xml")


def fe_pair(shift=(0.03, 0.0, 0.0), moments=(2.576, 2.076), a=2.87) -> Configuration:
    """A 2-atom bcc Fe cell; the default targets are 0.3 μB above / 0.2 below the free moments."""
    pos = np.array([[0.0, 0.0, 0.0], [a / 2, a / 2, a / 2]])
    pos[0] += shift
    return Configuration(cell=np.eye(3) * a, positions=pos, types=[0, 0], magmoms=list(moments))


def penalty_command(calls: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "input.cfg", "output.cfg", "--calls", str(calls),
            "--index", "{index}", "--lambda", "{lambda}", *extra]


def read_calls(calls: Path) -> list[tuple[str, str]]:
    if not calls.exists():
        return []
    return [tuple(line.split()[:2]) for line in calls.read_text().splitlines()]


@pytest.fixture(scope="module")
def env_path() -> dict:
    """The helper script imports mmtp_hpc: make sure the child finds this checkout."""
    import os

    return {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ------------------------------------------------------------------ analytic and ASE
def test_analytic_oracle_is_the_model_label():
    model = AnalyticMagneticModel.default()
    cfg = fe_pair()
    got = AnalyticOracle(model).label(cfg)
    ref = model.label(cfg)
    assert got.energy == ref.energy
    for name in ("forces", "virial", "magmoms", "magnetic_gradient", "site_energies"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    assert got.features["oracle"] == "analytic" and got.features["EFS_by"] == ref.features["EFS_by"]
    assert cfg.energy is None                       # the input is not modified

    relaxed = AnalyticOracle(model, relax=True).label(cfg)
    np.testing.assert_allclose(relaxed.magmoms, model.relax_moments(cfg), atol=1e-8)
    assert np.abs(relaxed.magnetic_gradient).max() < 1e-5       # relaxed: no constraining field
    assert np.abs(relaxed.magmoms - cfg.magmoms).max() > 0.1    # … and not the targets


def test_ase_oracle_with_emt_is_the_calculator():
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=3)
    cfg = Configuration(cell=atoms.cell.array, positions=atoms.positions, types=[0] * len(atoms))
    got = ASEOracle(EMT(), magnetic=False, species=["Cu"]).label(cfg)
    atoms.calc = EMT()
    assert got.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(got.forces, atoms.get_forces(), atol=1e-12)
    assert np.abs(got.forces).max() > 0.05
    # PlusStress virial: −V·σ (ASE σ is negative under compression)
    np.testing.assert_allclose(got.virial, -atoms.get_stress(voigt=False) * atoms.get_volume(), atol=1e-10)
    assert got.magmoms is None and got.magnetic_gradient is None
    assert got.features == {"EFS_by": "ase:EMT", "oracle": "ase"}
    with pytest.raises(InputError, match="species"):
        ASEOracle(EMT(), magnetic=False).label(cfg)     # EMT records no symbols for the types


def test_ase_oracle_with_the_mmtp_calculator_gives_moments_and_gradient():
    cfg = fe_pair(shift=(0.04, -0.02, 0.01), moments=(2.1, 2.4), a=2.856)
    calc = MMTPCalculator(FE_POT)                       # magmoms="input": held at the targets
    got = ASEOracle(calc).label(cfg)
    ref = MTPEngine(load_potential(FE_POT)).evaluate(cfg, cfg.magmoms)
    assert got.energy == pytest.approx(ref["energy"], abs=1e-10)
    np.testing.assert_allclose(got.forces, ref["forces"], atol=1e-10)
    np.testing.assert_allclose(got.virial, ref["virial"], atol=1e-9)
    np.testing.assert_allclose(got.magnetic_gradient, ref["magnetic_gradient"], atol=1e-10)
    np.testing.assert_array_equal(got.magmoms, cfg.magmoms)
    assert np.abs(got.magnetic_gradient).max() > 1e-3

    relaxed = ASEOracle(MMTPCalculator(FE_POT, magmoms="relax", relax_tol=1e-6)).label(cfg)
    assert np.abs(relaxed.magmoms - cfg.magmoms).max() > 0.01      # the moments reached
    assert np.abs(relaxed.magnetic_gradient).max() < 1e-5
    assert relaxed.features["EFS_by"] == "ase:MMTPCalculator"


# ------------------------------------------------------------------ command oracle, cfg writer
def test_command_oracle_climbs_the_lambda_ladder(tmp_path, env_path):
    """A real subprocess minimises E + λΣ(m − m0)²: λ = 1 misses the tolerance, λ = 10 meets it."""
    calls = tmp_path / "calls.txt"
    oracle = CommandOracle(penalty_command(calls), writer="cfg", lambdas=[1.0, 10.0, 100.0],
                           moment_tolerance=0.03, timeout=120, env=env_path)
    cfg = fe_pair()
    got = oracle.label(cfg, tmp_path / "run")
    assert read_calls(calls) == [("0", "1"), ("0", "10")]        # stopped at the first rung that fits
    first = read_cfg(tmp_path / "run" / "step_00" / "step_result.cfg")[0]
    assert np.abs(first.magmoms - cfg.magmoms).max() > 0.03
    dev = np.abs(got.magmoms - cfg.magmoms).max()
    assert 0.001 < dev <= 0.03
    assert got.features["constraint_lambda"] == "10"
    assert float(got.features["moment_deviation"]) == pytest.approx(dev, rel=1e-5)
    assert got.features["oracle"] == "command:cfg" and "oracle_warning" not in got.features
    # the constraining field is the gradient: ∂E/∂m = −2λ(m − m_target) at the penalised minimum
    np.testing.assert_allclose(got.magnetic_gradient, -2 * 10.0 * (got.magmoms - cfg.magmoms), atol=1e-5)
    # and the label is the model's at the moments reached (passed through the files exactly)
    ref = AnalyticMagneticModel.default().label(cfg, magmoms=got.magmoms)
    assert got.energy == pytest.approx(ref.energy, abs=1e-12)
    np.testing.assert_allclose(got.forces, ref.forces, atol=1e-12)
    np.testing.assert_allclose(got.virial, ref.virial, atol=1e-12)


def test_command_oracle_warns_when_the_ladder_ends(tmp_path, env_path):
    calls = tmp_path / "calls.txt"
    oracle = CommandOracle(penalty_command(calls), lambdas=[1.0, 10.0], moment_tolerance=1e-4,
                           timeout=120, env=env_path)
    got = oracle.label(fe_pair(), tmp_path / "run")
    assert len(read_calls(calls)) == 2
    assert got.features["constraint_lambda"] == "10"
    assert "moments missed the target" in got.features["oracle_warning"]
    assert float(got.features["moment_deviation"]) > 1e-4


def test_label_all_resumes_after_a_failure_without_recomputing(tmp_path, env_path):
    calls, flag = tmp_path / "calls.txt", tmp_path / "fail.flag"
    flag.touch()
    command = penalty_command(calls, "--fail-flag", str(flag), "--fail-index", "1", "--fail-lambda", "10")
    oracle = CommandOracle(command, lambdas=[1.0, 10.0], moment_tolerance=0.03, timeout=120, env=env_path)
    configs = [fe_pair(shift=(0.01 * k, 0.0, 0.0)) for k in range(3)]
    work = tmp_path / "batch"
    with pytest.raises(OracleError) as info:
        label_all(oracle, configs, work)
    err = info.value
    assert err.index == 1 and "cfg_00001" in str(err.workdir)
    assert "status 3" in str(err) and "simulated failure" in str(err)
    assert (work / "cfg_00000" / "labelled.cfg").is_file()               # finished work kept
    assert (work / "cfg_00001" / "step_00" / "step_result.cfg").is_file()  # and the finished rung
    assert not (work / "cfg_00002").exists()
    assert read_calls(calls) == [("0", "1"), ("0", "10"), ("1", "1"), ("1", "10")]
    first = read_cfg(work / "cfg_00000" / "labelled.cfg")[0]

    flag.unlink()
    lines: list[str] = []
    done = label_all(oracle, configs, work, log=lines.append)
    # only the failed rung and the configuration never started ran again
    assert read_calls(calls)[4:] == [("1", "10"), ("2", "1"), ("2", "10")]
    assert any("cfg_00000 already labelled" in line for line in lines)
    assert len(done) == 3 and done[0] == first
    for k, c in enumerate(done):
        assert c.features["oracle"] == "command:cfg" and c.energy is not None
        np.testing.assert_array_equal(c.positions, configs[k].positions)
    again = label_all(oracle, configs, work)                      # all read back: no new calls
    assert len(read_calls(calls)) == 7 and again == done


def test_placeholders_never_reach_a_shell(tmp_path, env_path):
    calls = tmp_path / "calls.txt"
    evil = tmp_path / "w; touch INJECTED; $(touch INJECTED2) `touch INJECTED3` | rm -rf x"
    command = penalty_command(calls, "--argv-json", "{cfgdir}/argv.json", "--note", "{workdir}",
                              "--note", "{unknown} {index}-{step}")
    got = label_all(CommandOracle(command, timeout=120, env=env_path), [fe_pair()], evil)
    assert got[0].energy is not None
    cfgdir = evil / "cfg_00000"
    argv = json.loads((cfgdir / "argv.json").read_text())         # written where the literal path says
    assert str(cfgdir / "step_00") in argv                         # {workdir}: one argument, verbatim
    assert "{unknown} 0-0" in argv                                 # unknown braces pass literally
    assert argv[argv.index("--lambda") + 1] == ""                  # no λ rung: empty placeholder
    assert not list(tmp_path.rglob("INJECTED*")) and not list(Path.cwd().glob("INJECTED*"))


def test_command_failures_are_oracle_errors(tmp_path, env_path):
    cfg = fe_pair()
    slow = CommandOracle([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    t0 = time.perf_counter()
    with pytest.raises(OracleError, match="timeout of 0.5 s"):
        slow.label(cfg, tmp_path / "slow")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(OracleError, match="cannot start"):
        CommandOracle(["/nonexistent/dft-code"]).label(cfg, tmp_path / "missing")
    with pytest.raises(OracleError, match="did not write output.cfg"):
        CommandOracle([sys.executable, "-c", "pass"]).label(cfg, tmp_path / "silent")
    # errors of a batch name the configuration and its directory; non-oracle errors are wrapped
    with pytest.raises(OracleError, match=r"configuration 0, workdir .*cfg_00000"):
        label_all(CommandOracle([sys.executable, "-c", "pass"]), [cfg], tmp_path / "b")
    assert issubclass(OracleError, MMTPError)
    # keep_going: the others are labelled first, then one error names every failure
    flag = tmp_path / "flag"
    flag.touch()
    command = penalty_command(tmp_path / "calls.txt", "--fail-flag", str(flag), "--fail-index", "1",
                              "--fail-lambda", "")
    failing_1 = CommandOracle(command, timeout=120, env=env_path)
    with pytest.raises(OracleError, match="1 of 3 configurations failed") as info:
        label_all(failing_1, [cfg, cfg, cfg], tmp_path / "k", keep_going=True)
    assert info.value.index == 1 and "simulated failure" in str(info.value)
    done = [(tmp_path / "k" / f"cfg_{k:05d}" / "labelled.cfg").is_file() for k in range(3)]
    assert done == [True, False, True]

    class Broken(Oracle):
        name = "broken"

        def label(self, cfg, workdir=None):
            raise InputError("no moments")

    with pytest.raises(OracleError, match="configuration 0.*no moments"):
        label_all(Broken(), [cfg], tmp_path / "c")
    with pytest.raises(InputError, match="increasing"):
        CommandOracle(["x"], lambdas=[10.0, 1.0])
    with pytest.raises(InputError, match="exact"):
        CommandOracle(["abinit"], writer="abinit", species=["Fe"], lambdas=[1.0])


# ------------------------------------------------------------------ VASP
def feal4(moments=(0.0, 1.2, -0.05, 1.0)) -> Configuration:
    """4-atom B2 Fe–Al cell, types interleaved Al Fe Al Fe (POSCAR needs Fe Fe Al Al)."""
    pos = [[1.45, 1.45, 1.45], [0.0, 0.0, 0.0], [1.45, 1.45, 4.35], [0.0, 0.0, 2.9]]
    return Configuration(cell=np.diag([2.9, 2.9, 5.8]), positions=pos, types=[1, 0, 1, 0],
                         magmoms=list(moments))


def test_vasp_writer_inputs_parse_back(tmp_path):
    cfg = feal4()
    (tmp_path / "Fe.potcar").write_text("PAW_PBE Fe 06Sep2000\n")
    (tmp_path / "Al.potcar").write_text("PAW_PBE Al 04Jan2001\n")
    settings = VaspSettings(rwigs={"Fe": 1.3, "Al": 1.4}, encut=450.0, extra={"GGA": "PE"},
                            potcars={"Fe": str(tmp_path / "Fe.potcar"), "Al": str(tmp_path / "Al.potcar")})
    write_vasp_inputs(cfg, tmp_path, ["Fe", "Al"], settings, 20.0)
    incar = read_incar(tmp_path / "INCAR")
    assert incar["I_CONSTRAINED_M"] == "2" and incar["LNONCOLLINEAR"] == ".TRUE."
    assert float(incar["LAMBDA"]) == 20.0 and incar["ISYM"] == "0" and incar["GGA"] == "PE"
    assert float(incar["ENCUT"]) == 450.0
    assert [float(x) for x in incar["RWIGS"].split()] == [1.3, 1.4]          # Fe, Al as in POSCAR
    order = poscar_order(cfg)
    np.testing.assert_array_equal(order, [1, 3, 0, 2])
    constr = np.array([float(x) for x in incar["M_CONSTR"].split()]).reshape(4, 3)
    np.testing.assert_array_equal(constr[:, :2], 0.0)                         # vectors along z
    np.testing.assert_allclose(constr[:, 2], [1.2, 1.0, 1e-4, -0.05])         # exact 0 → 1e-4
    np.testing.assert_array_equal(np.array(incar["MAGMOM"].split(), float), constr.ravel())
    cell, symbols, positions = read_poscar(tmp_path / "POSCAR")
    assert symbols == ["Fe", "Fe", "Al", "Al"]
    np.testing.assert_allclose(cell, cfg.cell, atol=1e-12)
    np.testing.assert_allclose(positions, cfg.positions[order], atol=1e-12)
    kpts = (tmp_path / "KPOINTS").read_text().splitlines()
    assert kpts[2] == "Gamma" and [int(x) for x in kpts[3].split()] == [9, 9, 5]  # ⌈2π/(0.25 a)⌉
    assert (tmp_path / "POTCAR").read_text().splitlines() == ["PAW_PBE Fe 06Sep2000", "PAW_PBE Al 04Jan2001"]
    with pytest.raises(InputError, match="RWIGS"):
        write_vasp_inputs(cfg, tmp_path, ["Fe", "Al"], VaspSettings(), 20.0)


# numbers of the hand-written fixture (tests/data/oracles/vasp_feal4), in POSCAR order Fe Fe Al Al
FIX_TOTEN, FIX_EP, FIX_LAMBDA = -27.53482914, 0.52282e-2, 20.0
FIX_MW_Z = np.array([1.188, 1.010, 0.003, -0.047])
FIX_MAG_Z = np.array([1.221, 1.040, 0.003, -0.048])
FIX_FORCES = np.array([[0.012, -0.003, 0.154], [-0.012, 0.003, -0.161],
                       [0.001, 0.002, 0.071], [-0.001, -0.002, -0.064]])
FIX_KBAR = (12.345, 12.345, -8.765, 0.123, -0.456, 0.789)       # XX YY ZZ XY YZ ZX
FIX_TOTAL_EV = (0.37584, 0.37584, -0.26685, 0.00374, -0.01388, 0.02402)


def vasp_run_dir(tmp_path: Path, files=("OUTCAR", "OSZICAR")) -> tuple[Configuration, Path]:
    cfg = feal4()
    d = tmp_path / "vasp"
    d.mkdir(parents=True)
    write_vasp_inputs(cfg, d, ["Fe", "Al"], VaspSettings(rwigs=1.3), FIX_LAMBDA)
    for name in files:
        shutil.copy(DATA / "vasp_feal4" / name, d / name)
    return cfg, d


def test_vasp_parser_on_the_fixture(tmp_path):
    cfg, d = vasp_run_dir(tmp_path)
    got = label_from_vasp(cfg, d)
    order = poscar_order(cfg)
    assert got.energy == pytest.approx(FIX_TOTEN - FIX_EP, abs=1e-9)       # penalty removed
    np.testing.assert_allclose(got.forces[order], FIX_FORCES)               # back in input order
    np.testing.assert_allclose(got.forces[1], FIX_FORCES[0])               # atom 1 is the first Fe
    np.testing.assert_allclose(got.magmoms[order], FIX_MW_Z)                # MW_int z, last block
    targets = np.array([1.2, 1.0, 1e-4, -0.05])
    np.testing.assert_allclose(got.magnetic_gradient[order], -2 * FIX_LAMBDA * (FIX_MW_Z - targets))
    np.testing.assert_allclose(got.magnetic_gradient, [-0.116, 0.48, -0.12, -0.4], atol=1e-12)
    # PlusStress from kB (positive under compression) agrees with OUTCAR's "Total" line in eV
    xx, yy, zz, xy, yz, zx = FIX_TOTAL_EV
    np.testing.assert_allclose(got.virial, [[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]], atol=2e-5)
    assert got.virial[0, 0] > 0                                            # compressed along x
    np.testing.assert_allclose(got.stress_gpa[0, 0], -FIX_KBAR[0] * 0.1, rtol=1e-12)   # ASE sign
    assert got.features["EFS_by"] == "vasp"


def test_vasp_parser_fallbacks_and_errors(tmp_path):
    cfg, d = vasp_run_dir(tmp_path, files=("OUTCAR",))                       # no OSZICAR
    got = label_from_vasp(cfg, d)
    assert got.energy == pytest.approx(FIX_TOTEN, abs=1e-9)                 # no penalty block
    np.testing.assert_allclose(got.magmoms[poscar_order(cfg)], FIX_MAG_Z)   # magnetization (z)
    assert got.magnetic_gradient is None

    cfg, d = vasp_run_dir(tmp_path / "x", files=("vasprun.xml", "OSZICAR"))   # no OUTCAR
    via_xml = label_from_vasp(cfg, d)
    cfg2, d2 = vasp_run_dir(tmp_path / "y")
    via_outcar = label_from_vasp(cfg2, d2)
    assert via_xml.energy == pytest.approx(via_outcar.energy, abs=1e-9)
    np.testing.assert_allclose(via_xml.forces, via_outcar.forces)
    np.testing.assert_allclose(via_xml.virial, via_outcar.virial, atol=1e-12)
    np.testing.assert_allclose(via_xml.magnetic_gradient, via_outcar.magnetic_gradient)

    text = (DATA / "vasp_feal4" / "OUTCAR").read_text()
    (d2 / "OUTCAR").write_text(text.replace("aborting loop because EDIFF is reached", "ran out"))
    with pytest.raises(InputError, match="did not converge"):
        read_vasp_outputs(d2, 4)
    (d2 / "OUTCAR").write_text(text.split("POSITION")[0])
    with pytest.raises(InputError, match="did not finish"):
        read_vasp_outputs(d2, 4)


def test_command_oracle_with_the_vasp_writer(tmp_path):
    """Template files are copied, the writer's inputs are there when the command runs, the
    outputs are parsed; the stand-in for VASP copies the fixture outputs after checking INCAR."""
    template = tmp_path / "template"
    template.mkdir()
    (template / "POTCAR").write_text("template POTCAR\n")
    stand_in = ("import shutil, sys, os\n"
                "assert 'I_CONSTRAINED_M = 2' in open('INCAR').read() and os.path.exists('POTCAR')\n"
                "for f in sys.argv[1:]: shutil.copy(f, '.')\n")
    oracle = CommandOracle([sys.executable, "-c", stand_in, str(DATA / "vasp_feal4" / "OUTCAR"),
                            str(DATA / "vasp_feal4" / "OSZICAR")], writer="vasp", template_dir=template,
                           lambdas=[20.0, 50.0], species=["Fe", "Al"], vasp={"rwigs": {"Fe": 1.3, "Al": 1.4}},
                           timeout=60)
    got = oracle.label(feal4(), tmp_path / "run")
    assert (tmp_path / "run" / "step_00" / "POTCAR").read_text() == "template POTCAR\n"
    assert not (tmp_path / "run" / "step_01").exists()       # max|Δm| = 0.012 ≤ 0.05 at λ = 20
    assert got.features["constraint_lambda"] == "20" and got.features["oracle"] == "command:vasp"
    assert got.features["EFS_by"] == "vasp"
    np.testing.assert_allclose(got.magnetic_gradient, [-0.116, 0.48, -0.12, -0.4], atol=1e-12)


# ------------------------------------------------------------------ ABINIT
def _yaml_block(text: str, key: str, rows: int) -> np.ndarray:
    """Rows of a ``key:`` list in ABINIT's YAML summary (8 significant digits, an independent read)."""
    lines = text.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith(key))
    return np.array([[float(x) for x in re.findall(r"[-+]?\d\.\d+E[-+]\d+", lines[k + 1 + r])]
                     for r in range(rows)])


def test_abinit_writer_input(tmp_path):
    cfg = Configuration(cell=np.eye(3) * 2.83, positions=[[0, 0, 0], [1.415, 1.415, 1.415]],
                        types=[1, 0], magmoms=[2.0, -0.1])
    (tmp_path / "Fe.xml").write_text('<paw_dataset>\n<paw_radius rc=" 2.1153157434"/>\n</paw_dataset>\n')
    (tmp_path / "Al.paw").write_text(" 1.9000000000                          : r_cut(PAW)\n")
    assert paw_radius(tmp_path / "Fe.xml") == pytest.approx(2.1153157434)
    settings = AbinitSettings(pseudos={"Fe": "Fe.xml", "Al": "Al.paw"}, pp_dirpath=str(tmp_path),
                              ngkpt=[4, 4, 4], extra={"ixc": 11})
    text = write_abinit_input(cfg, tmp_path, ["Fe", "Al"], settings).read_text()
    words = {line.split()[0]: line.split()[1:] for line in text.splitlines()
             if line and not line.startswith("#") and line[0].isalpha()}
    assert words["constraint_kind"] == ["1", "1"] and words["iscf"] == ["7"]
    assert words["typat"] == ["2", "1"] and words["znucl"] == ["26", "13"]   # Fe is type 0
    assert [float(x) for x in words["ratsph"]] == [2.12, 1.9]                # PAW radius, rounded up
    assert words["nsppol"] == ["2"] and words["ixc"] == ["11"] and words["chkprim"] == ["0"]
    lines = text.splitlines()
    k = lines.index("spinat")
    np.testing.assert_allclose([[float(x) for x in lines[k + 1 + i].split()] for i in range(2)],
                               [[0, 0, 2.0], [0, 0, -0.1]])
    k = lines.index("xcart")
    np.testing.assert_allclose([float(x) for x in lines[k + 2].split()], np.full(3, 1.415 / BOHR_ANGSTROM))
    assert 'pseudos "Fe.xml, Al.paw"' in text
    with pytest.raises(InputError, match="PAW dataset for species 'Al'"):
        write_abinit_input(cfg, tmp_path, ["Fe", "Al"], AbinitSettings(pseudos={"Fe": "Fe.xml"}))


def test_abinit_parser_on_a_real_output():
    """tests/data/oracles/abinit_fe2_constrained.abo: ABINIT 9.6.2, 2-atom Fe cell, atom 2 displaced,
    moments constrained to (2.0, 2.3) μB (input beside it)."""
    path = DATA / "abinit_fe2_constrained.abo"
    text = path.read_text()
    res = read_abinit_output(path)
    etotal = float(re.search(r"^etotal\s*:\s*(\S+)", text, re.MULTILINE).group(1))
    assert res.energy == pytest.approx(etotal * HARTREE_EV, abs=3e-5)       # 9-digit YAML value
    fyaml = _yaml_block(text, "cartesian_forces", 2) * HARTREE_EV / BOHR_ANGSTROM
    np.testing.assert_allclose(res.forces, fyaml, atol=1e-7)
    assert res.forces[1, 0] < -0.2                       # atom 2 moved +x: pulled back
    np.testing.assert_allclose(res.forces.sum(axis=0), 0.0, atol=1e-8)
    syaml = _yaml_block(text, "cartesian_stress_tensor", 3) * HARTREE_EV / BOHR_ANGSTROM**3
    np.testing.assert_allclose(res.stress, syaml, atol=1e-9)
    np.testing.assert_allclose(res.magmoms, [2.0, 2.3], atol=1e-4)            # reached the targets
    torque = re.search(r"Gradient with respect to target.*?T\(z\).*?\n(.*?)\n(.*?)\n", text, re.S)
    tz = [float(torque.group(i).split()[3]) for i in (1, 2)]
    np.testing.assert_allclose(res.magnetic_gradient, np.array(tz) * HARTREE_EV, atol=3e-5)

    cfg = Configuration(cell=np.eye(3) * 2.83, positions=[[0, 0, 0], [1.455, 1.435, 1.415]],
                        types=[0, 0], magmoms=[2.0, 2.3])
    lab = label_from_abinit(cfg, res)
    np.testing.assert_allclose(lab.virial, -res.stress * cfg.volume)
    assert lab.virial[0, 0] < 0                         # this cell is under tension (σ > 0)
    assert lab.features["EFS_by"] == "abinit"


def test_abinit_parser_rejects_unfinished_and_unconverged_runs(tmp_path):
    text = (DATA / "abinit_fe2_constrained.abo").read_text()
    bad = tmp_path / "bad.abo"
    bad.write_text(text.replace("Calculation completed.", ""))
    with pytest.raises(InputError, match="did not finish"):
        read_abinit_output(bad)
    bad.write_text(text.replace(" At SCF step", "  nstep=    3 was not enough SCF cycles to converge;\n At"))
    with pytest.raises(InputError, match="did not converge"):
        read_abinit_output(bad)
    bad.write_text(re.sub(r"(\n\s+grspin .*\n)\s+\S+\s+\S+\s+\S+\n", r"\1", text))
    with pytest.raises(InputError, match="grspin"):
        read_abinit_output(bad)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("abinit") is None or not ABINIT_FE.is_file(),
                    reason="abinit (Debian packages abinit + abinit-data) is not installed: the real "
                           "constrained-DFT oracle path is not exercised here")
def test_abinit_cdft_two_atom_fe(tmp_path):
    """Real ABINIT through the command oracle (TOML settings, default command): 2-atom bcc Fe with
    moments constrained to (m1, 2.3) μB for m1 = 1.95 and 2.05."""
    oracle = oracle_from_settings({"kind": "command", "writer": "abinit", "moment_tolerance": 0.01,
                                   "abinit": {"pseudos": {"Fe": str(ABINIT_FE)}, "ngkpt": [4, 4, 4]}},
                                  tmp_path, ["Fe"], source="oracle.toml")
    a, m2, delta = 2.83, 2.3, 0.05
    configs = [Configuration(cell=np.eye(3) * a, positions=[[0, 0, 0], [a / 2, a / 2, a / 2]],
                             types=[0, 0], magmoms=[2.0 + s * delta, m2]) for s in (-1, 1)]
    t0 = time.perf_counter()
    lo, hi = label_all(oracle, configs, tmp_path / "batch", log=print)
    elapsed = time.perf_counter() - t0
    print(f"abinit cDFT: 2 runs in {elapsed:.1f} s")
    for c, got in zip(configs, (lo, hi), strict=True):
        np.testing.assert_allclose(got.magmoms, c.magmoms, atol=1e-3)       # constraint reached
        assert "oracle_warning" not in got.features
        assert np.abs(got.forces).max() < 1e-4                               # B2-symmetric sites
        np.testing.assert_allclose(np.diag(got.virial), got.virial[0, 0], atol=1e-5)   # cubic
        assert np.abs(got.virial - np.diag(np.diag(got.virial))).max() < 1e-5
        assert got.magnetic_gradient[1] > 0          # m2 = 2.3 is held above its free value
    # +∂E/∂m_1 from ABINIT agrees with the energy difference (trapezoid rule over the two runs)
    fd = (hi.energy - lo.energy) / (2 * delta)
    mean = 0.5 * (lo.magnetic_gradient[0] + hi.magnetic_gradient[0])
    assert np.sign(fd) == np.sign(mean) and abs(fd) > 5e-3
    print(f"abinit cDFT: dE/dm1 = {fd:.4f} eV/μB (finite difference), {mean:.4f} (ABINIT, mean of the two)")
    assert abs(fd - mean) < 0.1 * abs(fd) + 2e-3, (fd, mean)
    before = {f: f.stat().st_mtime_ns for f in (tmp_path / "batch").rglob("*") if f.is_file()}
    again = label_all(oracle, configs, tmp_path / "batch")                     # resumed: no new runs
    after = {f: f.stat().st_mtime_ns for f in (tmp_path / "batch").rglob("*") if f.is_file()}
    assert after == before and again == [lo, hi]


# ------------------------------------------------------------------ settings
def test_oracle_from_settings_builds_every_kind(tmp_path):
    analytic = oracle_from_settings({"kind": "analytic", "relax": True}, tmp_path, ["Fe", "Al"])
    assert isinstance(analytic, AnalyticOracle) and analytic.relax
    shutil.copy(REPO / "inputs" / "models" / "fe_al_model.json", tmp_path / "model.json")
    from_file = oracle_from_settings({"kind": "analytic", "model": "model.json"}, tmp_path, ["Fe", "Al"])
    assert from_file.model.species == ["Fe", "Al"]
    emt = oracle_from_settings({"kind": "ase", "calculator": "ase.calculators.emt:EMT", "magnetic": False},
                               tmp_path, ["Cu"])
    assert isinstance(emt, ASEOracle) and isinstance(emt.calculator, EMT) and emt.species == ["Cu"]
    shutil.copy(FE_POT, tmp_path / "fe.almtp")
    mmtp = oracle_from_settings({"kind": "ase", "calculator": "mmtp_hpc.ase:MMTPCalculator",
                                 "parameters": {"potential": "fe.almtp", "magmoms": "input"},
                                 "path_parameters": ["potential"]}, tmp_path, ["Fe"])
    assert mmtp.calculator.potential_path == str(tmp_path / "fe.almtp")
    (tmp_path / "tpl").mkdir()
    cmd = oracle_from_settings({"kind": "command", "command": ["run.sh", "{workdir}"], "writer": "vasp",
                                "template_dir": "tpl", "lambdas": [5, 50], "timeout": 60,
                                "vasp": {"rwigs": {"Fe": 1.3}, "kpoints": [4, 4, 4]}},
                               tmp_path, ["Fe"], source="al.toml")
    assert isinstance(cmd, CommandOracle) and cmd.lambdas == [5.0, 50.0]
    assert cmd.template_dir == tmp_path / "tpl" and cmd.writer.settings.kpoints == [4, 4, 4]
    (tmp_path / "psp").mkdir()
    (tmp_path / "psp" / "Fe.xml").write_text("dataset")
    abi = oracle_from_settings({"kind": "command", "writer": "abinit", "abinit": {
        "pp_dirpath": "psp", "pseudos": {"Fe": "Fe.xml"}}}, tmp_path, ["Fe"]).writer.settings
    assert abi.pp_dirpath == str(tmp_path / "psp") and abi.pseudos == {"Fe": "Fe.xml"}
    abi = oracle_from_settings({"kind": "command", "writer": "abinit", "abinit": {
        "pseudos": {"Fe": "psp/Fe.xml", "Al": "Al.xml"}}}, tmp_path, ["Fe", "Al"]).writer.settings
    assert abi.pseudos == {"Fe": str(tmp_path / "psp" / "Fe.xml"), "Al": "Al.xml"}   # Al: from template
    default = oracle_from_settings({"kind": "command", "writer": "vasp", "command": ["v"],
                                    "vasp": {"rwigs": 1.2}}, tmp_path, ["Fe"])
    assert default.lambdas == [10.0, 20.0, 50.0, 100.0]


@pytest.mark.parametrize("table, field, message", [
    ({}, "oracle.kind", "expected kind = one of"),
    ({"kind": "dft"}, "oracle.kind", "got a string 'dft'"),
    ({"kind": "analytic", "relax": "yes"}, "oracle.relax", "expected true or false, got a string"),
    ({"kind": "analytic", "temperature": 3}, "oracle.temperature", "unknown key 'temperature'"),
    ({"kind": "analytic", "model": "missing.json"}, "oracle.model", "no such model file"),
    ({"kind": "ase", "calculator": "EMT"}, "oracle.calculator", "package.module:ClassOrFactory"),
    ({"kind": "ase", "calculator": "ase.nonexistent:X"}, "oracle.calculator", "cannot import"),
    ({"kind": "ase", "calculator": "mmtp_hpc.ase:MMTPCalculator", "parameters": {"potential": "no.almtp"},
      "path_parameters": ["potential"]}, "oracle.parameters", "potential file not found"),
    ({"kind": "ase", "calculator": "ase.calculators.emt:EMT", "path_parameters": ["potential"]},
     "oracle.path_parameters", "not in parameters"),
    ({"kind": "command", "command": "vasp_ncl > log"}, "oracle.command", "list of strings"),
    ({"kind": "command", "command": ["x"], "timeout": "fast"}, "oracle.timeout", "got a string 'fast'"),
    ({"kind": "command", "command": ["x"], "timeout": -1}, "oracle.timeout", "positive"),
    ({"kind": "command", "command": ["x"], "lambdas": [10, 1]}, "oracle.lambdas", "increasing"),
    ({"kind": "command", "command": ["x"], "writer": "qe"}, "oracle.writer", "'qe'"),
    ({"kind": "command", "command": ["x"], "template_dir": "nope"}, "oracle.template_dir", "no such"),
    ({"kind": "command", "command": ["x"], "writer": "vasp", "vasp": {"encut": "high"}},
     "oracle.vasp.encut", "expected a finite number, got a string"),
    ({"kind": "command", "command": ["x"], "writer": "vasp", "vasp": {"rwig": 1.0}},
     "oracle.vasp.rwig", "did you mean 'rwigs'"),
    ({"kind": "command", "command": ["x"], "writer": "vasp", "abinit": {}}, "oracle.abinit",
     "only used with writer = 'abinit'"),
    ({"kind": "command", "writer": "abinit", "abinit": {"ngkpt": [4, 4]}}, "oracle.abinit.ngkpt",
     "3 positive integers"),
    ({"kind": "command", "writer": "abinit", "lambdas": [1.0]}, "oracle.lambdas", "exact"),
])
def test_oracle_from_settings_errors_name_file_key_expected_and_got(tmp_path, table, field, message):
    with pytest.raises(InputError) as info:
        oracle_from_settings(table, tmp_path, ["Fe"], source="active.toml")
    err = info.value
    assert err.path == "active.toml" and err.field == field, str(err)
    assert message in str(err) and str(err).startswith("active.toml: ")
