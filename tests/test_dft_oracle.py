"""Real DFT is messy: stored real ABINIT 9.6 outputs and a stand-in command (CI has no ABINIT).

Parsing of real outputs (constrained Fe, displaced Fe, Fe–Al with free Al, a non-converged SCF,
an ABINIT input error), and the command oracle's failure paths: SCF retries, missed constraints,
DFT-code errors, concurrent workers that label each configuration exactly once, resuming after
a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmtp_hpc.active.dft_abinit import (
    BOHR_ANGSTROM,
    HARTREE_EV,
    MIRROR_MARK,
    AbinitSettings,
    abinit_errors,
    is_mirrored,
    read_abinit_output,
    unmirror,
    write_abinit_input,
)
from mmtp_hpc.active.dft_common import DFTCodeError, SCFNotConverged
from mmtp_hpc.active.oracles import (
    CommandOracle,
    OracleError,
    label_batch,
    oracle_from_settings,
)
from mmtp_hpc.errors import InputError
from mmtp_hpc.io.cfg import read_cfg
from mmtp_hpc.system.configuration import Configuration

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "oracles"
REAL = DATA / "abinit_real"
STANDIN = DATA / "standin_abinit.py"
PSP = "/usr/share/abinit/psp/Pseudodojo_paw_pbe_standard"


def fe2(a=2.86, m=(2.2, 2.2), dz=0.0) -> Configuration:
    pos = np.array([[0.0, 0.0, 0.0], [a / 2, a / 2, a / 2 + dz]])
    return Configuration(cell=np.eye(3) * a, positions=pos, types=[0, 0], magmoms=list(m))


def settings(**kw) -> AbinitSettings:
    base = dict(pseudos={"Fe": "Fe.xml", "Al": "Al.xml"}, pp_dirpath=PSP, ecut=26.0, pawecutdg=52.0,
                ratsph={"Fe": 2.12, "Al": 1.91}, nstep=100, toldfe=1e-7)
    base.update(kw)
    return AbinitSettings(**base)


def standin(tmp_path: Path, plan: dict | None = None, **kw) -> tuple[CommandOracle, Path]:
    calls = tmp_path / "calls.txt"
    env = {"STANDIN_CALLS": str(calls)}
    if plan is not None:
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        env["STANDIN_PLAN"] = str(tmp_path / "plan.json")
    oracle = CommandOracle([sys.executable, str(STANDIN), "run.abi"], writer="abinit",
                           species=["Fe", "Al"], abinit=settings(), env=env, timeout=120, **kw)
    return oracle, calls


def calls_of(calls: Path) -> list[list[str]]:
    return [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


# ------------------------------------------------------------------ real outputs
def test_real_constrained_fe_output_units_and_symmetry():
    res = read_abinit_output(REAL / "fe2_a2.86_m2.2_constrained.abo")
    abi = (REAL / "fe2_a2.86_m2.2_constrained.abi").read_text()
    assert "constraint_kind 1" in abi and "ecut 26.0" in abi and "pawecutdg 52.0" in abi
    assert res.energy == pytest.approx(-2.4889128251e02 * HARTREE_EV, rel=1e-10)
    np.testing.assert_allclose(res.magmoms, [2.200064, 2.200064], atol=1e-6)    # the targets met
    assert np.abs(res.forces).max() < 1e-8                                       # cubic: no force
    # equal moments on equivalent sites: equal dE/dm (grspin -7.84e-4 Ha/μB), eV/μB here
    np.testing.assert_allclose(res.magnetic_gradient, [-7.8406310578e-04 * HARTREE_EV] * 2, rtol=1e-8)
    # cubic stress, tensile at 2.86 Å (PBE's bcc Fe is smaller): sigma > 0, pressure about -5 GPa
    s = res.stress
    np.testing.assert_allclose(np.diag(s), s[0, 0], rtol=1e-10)
    assert abs(s[0, 1]) < 1e-12 and s[0, 0] > 0
    p_gpa = -np.trace(s) / 3 * 160.21766208
    assert -7.0 < p_gpa < -3.0
    assert s[0, 0] == pytest.approx(1.7663464696e-04 * HARTREE_EV / BOHR_ANGSTROM**3, rel=1e-9)


def test_real_displaced_output_has_opposite_forces():
    res = read_abinit_output(REAL / "fe2_a2.86_dz0.05_constrained.abo")
    f = res.forces
    assert abs(f[0, 2]) > 1e-3 and np.allclose(f[:, :2], 0.0, atol=1e-9)
    np.testing.assert_allclose(f[0], -f[1], atol=1e-9)      # Newton's third law in a 2-atom cell
    # atom 2 pushed towards its +z neighbour (0.05 Å): the force on it points back (−z)
    assert f[1, 2] < 0


def test_real_feal_output_with_free_al():
    res = read_abinit_output(REAL / "feal2_a2.90_fe0.8_al_free.abo")
    assert res.magmoms[0] == pytest.approx(0.800315, abs=1e-6)     # Fe held at 0.8 μB
    assert -0.1 < res.magmoms[1] < 0.0                              # Al: small, antiparallel, free
    assert res.magnetic_gradient[1] == 0.0 and res.magnetic_gradient[0] != 0.0
    abi = (REAL / "feal2_a2.90_fe0.8_al_free.abi").read_text()
    assert "constraint_kind 1 0" in abi and "ratsph 2.1200 1.9100" in abi


def test_real_failures_are_named():
    with pytest.raises(SCFNotConverged, match="nstep= *6 was not enough SCF cycles"):
        read_abinit_output(REAL / "fe2_nstep6_not_converged.abo")
    errors = abinit_errors((REAL / "fe2_chksymtnons_error.log").read_text())
    assert any("chkinp" in e and "Chksymtnons" in e for e in errors)
    assert any("m_chkinp.F90" in e for e in errors)


def test_unfinished_output_names_the_abinit_error(tmp_path):
    (tmp_path / "run.abo").write_text("ABINIT 9.6.2\n partial output\n")
    (tmp_path / "stdout.txt").write_text((REAL / "fe2_chksymtnons_error.log").read_text())
    with pytest.raises(DFTCodeError, match="Chksymtnons"):
        read_abinit_output(tmp_path / "run.abo", log=tmp_path / "stdout.txt")
    with pytest.raises(InputError, match="did not finish"):
        read_abinit_output(tmp_path / "run.abo")


def test_writer_free_species_and_unconstrained_mode(tmp_path):
    cfg = Configuration(cell=np.eye(3) * 2.9, positions=[[0, 0, 0], [1.45, 1.45, 1.45]], types=[0, 1],
                        magmoms=[0.8, 0.0])
    text = write_abinit_input(cfg, tmp_path, ["Fe", "Al"], settings(constraint_kind={"Fe": 1, "Al": 0})
                              ).read_text()
    assert "constraint_kind 1 0" in text
    text = write_abinit_input(cfg, tmp_path, ["Fe", "Al"], settings(), constrained=False).read_text()
    assert "constraint_kind 0 0" in text and "spinat" in text      # moments only a starting guess
    assert "prtgsr 0" in text and "prtddb" not in text             # no large files; no unknown token


def test_negative_moment_sums_are_written_mirrored(tmp_path):
    # ABINIT 9.6 stopped on this input ("not enough bands to get charge balance right"): its
    # default band count grows with a positive spinat sum only
    assert "not enough bands" in (REAL / "fe2_negative_moments_nband_error.log").read_text()
    failed = (REAL / "fe2_negative_moments_nband_error.abi").read_text()
    assert "-2.9428123095" in failed
    cfg = fe2(m=(-2.9428123095, -1.3268862849))
    for d in ("neg", "mixed", "pos"):
        (tmp_path / d).mkdir()
    text = write_abinit_input(cfg, tmp_path / "neg", ["Fe", "Al"], settings()).read_text()
    assert MIRROR_MARK in text.splitlines()
    spinat = text.split("spinat\n")[1].splitlines()[:2]
    assert [float(row.split()[2]) for row in spinat] == [2.9428123095, 1.3268862849]
    assert is_mirrored(tmp_path / "neg" / "run.abi")
    # a mixed configuration with a negative sum is mirrored too; one with a sum >= 0 is not
    text = write_abinit_input(fe2(m=(-2.5, 1.0)), tmp_path / "mixed", ["Fe", "Al"], settings()).read_text()
    assert MIRROR_MARK in text and " 2.5000000000" in text and "-1.0000000000" in text
    for m in [(2.2, 2.2), (-1.0, 1.0), (2.0, -1.5)]:
        write_abinit_input(fe2(m=m), tmp_path / "pos", ["Fe", "Al"], settings())
        assert not is_mirrored(tmp_path / "pos" / "run.abi")
    assert not is_mirrored(tmp_path / "absent.abi")


def test_mirrored_real_output_reads_back_with_negated_moments_and_gradient(tmp_path):
    res = read_abinit_output(REAL / "fe2_a2.86_m2.2_constrained.abo")
    back = unmirror(res)
    assert back.energy == res.energy
    np.testing.assert_array_equal(back.forces, res.forces)
    np.testing.assert_array_equal(back.stress, res.stress)
    np.testing.assert_array_equal(back.magmoms, -res.magmoms)
    np.testing.assert_array_equal(back.magnetic_gradient, -res.magnetic_gradient)


def test_all_negative_moments_are_labelled_through_the_mirror(tmp_path):
    # the stand-in fails like ABINIT on a spinat sum below -2 μB: labelling succeeds only because
    # the writer mirrors; the label carries the requested (negative) moments and ∂E/∂m flipped
    oracle, calls = standin(tmp_path)
    neg = oracle.label(fe2(m=(-2.9428123095, -1.3268862849)), tmp_path / "neg")
    pos = oracle.label(fe2(m=(2.9428123095, 1.3268862849)), tmp_path / "pos")
    assert len(calls_of(calls)) == 2
    np.testing.assert_allclose(neg.magmoms, [-2.9428123095, -1.3268862849], atol=1e-6)
    assert neg.energy == pos.energy
    np.testing.assert_array_equal(neg.forces, pos.forces)
    np.testing.assert_array_equal(neg.virial, pos.virial)
    np.testing.assert_array_equal(neg.magnetic_gradient, -pos.magnetic_gradient)
    assert float(neg.features["moment_deviation"]) < 1e-5      # reached = requested, after the mirror
    # a missed constraint is measured after the mirror too
    miss, _ = standin(tmp_path, {"0": "miss:0.2"}, missed_constraint="keep")
    got = miss.label(fe2(m=(-2.5, -2.5)), tmp_path / "miss")
    np.testing.assert_allclose(got.magmoms, [-2.7, -2.7], atol=1e-6)


# ------------------------------------------------------------------ failure paths (stand-in)
def test_scf_not_converged_is_retried_with_more_steps(tmp_path):
    oracle, calls = standin(tmp_path, {"0": "scf:200"})
    got = oracle.label(fe2(), tmp_path / "run")
    runs = calls_of(calls)
    assert [r[3] for r in runs] == ["100", "200"]          # the default retry doubles nstep
    assert (tmp_path / "run" / "step_00" / "scf_not_converged.txt").is_file()
    assert "nstep 200" in (tmp_path / "run" / "step_00_retry1" / "run.abi").read_text()
    assert got.energy is not None and float(got.features["oracle_wall_s"]) >= 0.0


def test_scf_never_converging_is_recorded_and_skipped(tmp_path):
    retry = [{"nstep": 150}, {"nstep": 150, "diemix": 0.3}]
    oracle, calls = standin(tmp_path, {"1": "scf:100000"}, retry=retry)
    cfgs = [fe2(m=(2.0, 2.0)), fe2(m=(1.0, 1.0)), fe2(m=(2.5, 2.5))]
    res = label_batch(oracle, cfgs, tmp_path / "batch", skip_failures=True)
    assert res.labelled[1] is None and res.labelled[0] is not None and res.labelled[2] is not None
    err = res.failures[1]
    assert err.kind == "scf" and "3 attempt(s)" in err.reason
    assert "diemix 0.3" in (tmp_path / "batch" / "cfg_00001" / "step_00_retry2" / "run.abi").read_text()
    rec = json.loads((tmp_path / "batch" / "cfg_00001" / "failed.json").read_text())
    assert rec["kind"] == "scf"
    n = len(calls_of(calls))
    assert n == 5                                       # 1 + 3 attempts + 1
    again = label_batch(oracle, cfgs, tmp_path / "batch", skip_failures=True)
    assert len(calls_of(calls)) == n                    # nothing rerun: results and failure read back
    assert again.failures[1].kind == "scf" and again.labelled[0] == res.labelled[0]
    with pytest.raises(OracleError, match="did not converge"):     # without skipping: an error
        label_batch(oracle, cfgs, tmp_path / "strict")


def test_abinit_error_is_named_and_not_retried(tmp_path):
    oracle, calls = standin(tmp_path, {"0": "error"})
    with pytest.raises(OracleError, match="Chksymtnons") as info:
        oracle.label(fe2(), tmp_path / "run")
    assert info.value.kind == "code" and "exit status 14" in str(info.value)
    assert len(calls_of(calls)) == 1


def test_missed_constraint_rejected_by_default_or_kept(tmp_path):
    oracle, _ = standin(tmp_path, {"0": "miss:0.2"})
    with pytest.raises(OracleError, match="missed the target") as info:
        oracle.label(fe2(), tmp_path / "a")
    assert info.value.kind == "constraint" and "rejected" in str(info.value)
    keep, _ = standin(tmp_path, {"0": "miss:0.2"}, missed_constraint="keep")
    got = keep.label(fe2(), tmp_path / "b")
    np.testing.assert_allclose(got.magmoms, [2.4, 2.4], atol=1e-6)     # at the moments reached
    assert "kept at the moments reached" in got.features["oracle_warning"]
    small, _ = standin(tmp_path, {"0": "miss:0.02"})                     # within 0.05 μB: fine
    assert "oracle_warning" not in small.label(fe2(), tmp_path / "c").features


def test_free_species_do_not_count_as_missed(tmp_path):
    oracle, _ = standin(tmp_path, {"0": "miss:0.2"})
    oracle.writer.settings.constraint_kind = {"Fe": 0, "Al": 1}        # both atoms free here
    got = oracle.label(fe2(), tmp_path / "a")
    assert float(got.features["moment_deviation"]) == 0.0


def test_concurrent_workers_label_each_configuration_once(tmp_path):
    oracle, calls = standin(tmp_path, {str(k): "sleep:1.0" for k in range(4)}, workers=2)
    cfgs = [fe2(m=(1.0 + 0.3 * k, 1.0 + 0.3 * k)) for k in range(4)]
    res = label_batch(oracle, cfgs, tmp_path / "batch")
    runs = calls_of(calls)
    assert sorted(int(r[0]) for r in runs) == [0, 1, 2, 3]             # each exactly once
    spans = [(float(r[1]), float(r[2])) for r in runs]
    overlap = max(min(e1, e2) - max(s1, s2) for i, (s1, e1) in enumerate(spans)
                  for (s2, e2) in spans[i + 1:])
    assert overlap > 0.3                                               # two ran at the same time
    for k, c in enumerate(res.labelled):                               # each result is its own
        np.testing.assert_allclose(c.magmoms, cfgs[k].magmoms, atol=1e-6)
    energies = [c.energy for c in res.labelled]
    assert len(set(energies)) == 4


def test_workers_resume_after_a_kill_without_relabelling(tmp_path):
    plan = {"0": "sleep:0.2", "1": "sleep:0.2", "2": "sleep:30", "3": "sleep:30"}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    calls = tmp_path / "calls.txt"
    script = tmp_path / "batch.py"
    script.write_text(f"""
import sys, json
import numpy as np
sys.path.insert(0, {str(REPO)!r})
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_dft_oracle import fe2, settings
from mmtp_hpc.active.oracles import CommandOracle, label_batch
oracle = CommandOracle([sys.executable, {str(STANDIN)!r}, "run.abi"], writer="abinit", species=["Fe", "Al"],
                       abinit=settings(), env={{"STANDIN_CALLS": {str(calls)!r},
                       "STANDIN_PLAN": {str(tmp_path / 'plan.json')!r}}}, workers=2, timeout=120)
cfgs = [fe2(m=(1.0 + 0.3 * k, 1.0 + 0.3 * k)) for k in range(4)]
label_batch(oracle, cfgs, {str(tmp_path / 'batch')!r}, log=print)
""")
    with open(tmp_path / "batch.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=tmp_path)
    batch = tmp_path / "batch"
    deadline = time.time() + 60
    while time.time() < deadline:                       # 0 and 1 done, 2 and 3 in flight
        done = sorted(batch.glob("cfg_*/labelled.cfg"))
        running = sorted(batch.glob("cfg_*/step_00/running.pid"))
        if len(done) == 2 and len(running) == 2:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the batch did not reach two done, two running")
    os.kill(proc.pid, signal.SIGKILL)                   # kill -9 the batch, not its children
    proc.wait()
    orphans = [int((batch / f"cfg_0000{k}" / "step_00" / "running.pid").read_text()) for k in (2, 3)]
    (tmp_path / "plan.json").write_text(json.dumps({"2": "sleep:0.2", "3": "sleep:0.2"}))
    oracle, _ = standin(tmp_path, None, workers=2)
    oracle.env["STANDIN_PLAN"] = str(tmp_path / "plan.json")
    oracle.env["STANDIN_CALLS"] = str(calls)
    cfgs = [fe2(m=(1.0 + 0.3 * k, 1.0 + 0.3 * k)) for k in range(4)]
    res = label_batch(oracle, cfgs, batch)
    assert sorted(res.read_back) == [0, 1] and all(c is not None for c in res.labelled)
    finished = [int(r[0]) for r in calls_of(calls)]
    assert sorted(finished) == [0, 1, 2, 3]     # nothing labelled twice
    time.sleep(0.2)
    for pid in orphans:                          # the killed batch's runs were stopped on resume
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
        assert state in ("gone", "Z", "X")        # dead (a zombie until its new parent reaps it)
    for k in range(4):
        assert len(read_cfg(batch / f"cfg_{k:05d}" / "labelled.cfg")) == 1


def test_oracle_table_keys(tmp_path):
    table = {"kind": "command", "writer": "abinit", "command": ["abinit", "run.abi"], "workers": 2,
             "retry": [{"nstep": 300}, {"nstep": 300, "diemix": 0.3}], "missed_constraint": "keep",
             "abinit": {"pseudos": {"Fe": "Fe.xml"}, "pp_dirpath": PSP}}
    o = oracle_from_settings(table, tmp_path, ["Fe"])
    assert o.workers == 2 and o.retry[1] == {"nstep": 300, "diemix": 0.3}
    assert o.missed_constraint == "keep" and o.cores == 1
    o = oracle_from_settings({**table, "command": ["mpirun", "-np", "4", "abinit", "run.abi"]}, tmp_path,
                             ["Fe"])
    assert o.cores == 4
    for bad, key in (({"workers": 0}, "workers"), ({"retry": {"nstep": 3}}, "retry"),
                     ({"retry": [{"nstep": -1}]}, "retry"), ({"missed_constraint": "maybe"},
                                                              "missed_constraint")):
        with pytest.raises(InputError, match=f"oracle.{key}"):
            oracle_from_settings({**table, **bad}, tmp_path, ["Fe"])


def test_oracle_names_species_whose_moments_it_leaves_free(tmp_path):
    """Free (unconstrained) species are reported, so that the learn loop can warn that their labels
    carry the DFT's own moments instead of the explored ones."""
    base = {"kind": "command", "writer": "abinit", "command": ["abinit", "run.abi"],
            "abinit": {"pseudos": {"Fe": "Fe.xml", "Al": "Al.xml"}, "pp_dirpath": PSP}}
    species = ["Fe", "Al"]
    assert oracle_from_settings(base, tmp_path, species).free_species() == []
    mixed = {**base, "abinit": {**base["abinit"], "constraint_kind": {"Fe": 1, "Al": 0}}}
    assert oracle_from_settings(mixed, tmp_path, species).free_species() == ["Al"]
    none = {**base, "abinit": {**base["abinit"], "constraint_kind": 0}}
    assert oracle_from_settings(none, tmp_path, species).free_species() == ["Fe", "Al"]


@pytest.mark.parametrize("name", ["abinit.toml", "vasp.toml", "slurm_vasp.toml", "slurm_abinit.toml"])
def test_shipped_oracle_tables_load(name):
    """The documented [oracle] examples are valid tables (inputs/oracles/)."""
    from mmtp_hpc.dynamics.settings import read_toml

    path = REPO / "inputs" / "oracles" / name
    data, _ = read_toml(path)
    oracle = oracle_from_settings(data["oracle"], path.parent, ["Fe", "Al"], source=str(path))
    assert oracle.writer.name in ("abinit", "vasp") and oracle.retry
    if name.startswith("slurm"):
        assert oracle.command[:2] == ["sbatch", "--wait"] and oracle.template_dir.is_dir()
        assert (oracle.template_dir / "job.sh").is_file() and oracle.workers > 1


def test_learn_loop_records_and_skips_failed_labels(tmp_path):
    """A pre-training label whose SCF never converges is skipped with its reason; the loop goes on."""
    import io

    from mmtp_hpc.active.learn import run_learning
    from mmtp_hpc.active.learn_settings import load_learn_settings
    from mmtp_hpc.io.cfg import write_cfg
    from mmtp_hpc.io.trainingset import read_trainingset_h5

    cfgs = [fe2(a=2.80 + 0.02 * k, m=(2.0 + 0.1 * k, 2.0 + 0.1 * k)) for k in range(5)]
    write_cfg(tmp_path / "initial.cfg", cfgs)
    (tmp_path / "plan.json").write_text(json.dumps({"2": "scf:100000"}))
    (tmp_path / "input.toml").write_text(f"""
[learn]
workdir = "work"
species = ["Fe"]
max_iterations = 1
[potential]
level = 6
radial_basis_size = 4
mag_basis_size = 2
[initial]
file = "initial.cfg"
[oracle]
kind = "command"
writer = "abinit"
command = [{json.dumps(sys.executable)}, {json.dumps(str(STANDIN))}, "run.abi"]
workers = 2
retry = [{{nstep = 120}}]
env = {{STANDIN_PLAN = {json.dumps(str(tmp_path / "plan.json"))}, STANDIN_CALLS = {json.dumps(str(tmp_path / "calls.txt"))}}}
[oracle.abinit]
pseudos = {{Fe = "Fe.xml"}}
pp_dirpath = "{PSP}"
ratsph = 2.12
[train]
max_iter = 20
[select]
threshold = 1e9
break = 1e10
[[learn.md]]
name = "bcc2"
a = [2.86]
temperature_K = [300.0]
[learn.md.system]
lattice = "bcc"
repeat = 1
magmoms = 2.2
[learn.md.md]
steps = 10
[learn.md.moments]
mode = "fixed"
""")
    log = io.StringIO()
    state = run_learning(load_learn_settings(tmp_path / "input.toml"), stream=log, md_stream=None)
    rec = state.history[0]
    assert [f["index"] for f in rec["label_failures"]] == [2]
    assert rec["label_failures"][0]["kind"] == "scf"
    assert rec["dft_runs"] == 5
    assert len(read_trainingset_h5(tmp_path / "work" / "trainingset.h5")) == 4
    text = log.getvalue()
    assert "1 of 5 label(s) failed and were skipped (1 scf)" in text
    assert "DFT: 5 labels (1 failed and skipped)" in (tmp_path / "work" / "summary.txt").read_text()


def test_a_result_of_another_configuration_is_never_read_back(tmp_path):
    oracle, calls = standin(tmp_path)
    label_batch(oracle, [fe2(dz=0.0)], tmp_path / "b")
    with pytest.raises(OracleError, match="does not hold this configuration"):
        label_batch(oracle, [fe2(dz=0.05)], tmp_path / "b")          # same atoms, moved
    with pytest.raises(OracleError, match="does not hold this configuration"):
        label_batch(oracle, [fe2(a=2.90)], tmp_path / "b")            # same atoms, other cell
    assert len(calls_of(calls)) == 1
