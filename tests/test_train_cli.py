"""``mmtp train`` and ``mmtp errors`` end to end: outputs, reports, ensembles, errors, MPI."""

import json
import re

import numpy as np
import pytest
from mpi_helpers import REPO, run_mpi
from training_data import known_problem

from mmtp_hpc.cli import main
from mmtp_hpc.cli.train import split_validation
from mmtp_hpc.io.formats import read_configurations, write_configurations
from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential
from mmtp_hpc.training.report import error_report

FEW = ["--max-iter", "6", "--linear-every", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The known problem on disk: an untrained template and 24 labelled configurations."""
    root = tmp_path_factory.mktemp("train_cli")
    template, configs, true = known_problem()
    write_configurations(root / "train.cfg", configs)
    save_potential(template, root / "template.mtp")
    save_potential(true, root / "true.mtp")
    return root


def table_rows(text: str, title: str) -> dict[str, list[float]]:
    """{quantity: [count, RMSE, MAE, max]} of the table that follows the line starting with title."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("  ") or line.startswith("    "):
            if line.startswith("    "):
                continue
            break
        m = re.match(r"\s+(.+?)\s{2,}(\S+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$", line)
        rows[m.group(1)] = [float(m.group(i)) for i in range(3, 7)]
    return rows


def test_train_end_to_end(data, tmp_path, capsys):
    out, png, rep = tmp_path / "pot.almtp", tmp_path / "parity.png", tmp_path / "report.txt"
    rc = main(["train", str(data / "template.mtp"), str(data / "train.cfg"), "-o", str(out), *FEW,
               "--validation-fraction", "0.25", "--parity-plot", str(png), "--report", str(rep),
               "--magnetic-weight", "0.01"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "iter     0" in text and "training finished" in text        # progress from train()
    assert "validation: 6 configurations" in text                     # 25 % of 24
    # while it runs: validation errors beside the training errors, and the time left
    progress = [line for line in text.splitlines() if line.startswith("iter ")]
    assert all("| val E" in line and "val dE/dm" in line for line in progress)
    assert any("ETA ≤" in line for line in progress)
    assert "warning" not in text
    pot = load_potential(out)
    assert pot.trained and pot.magnetic
    try:
        import mmtp_hpc.active.maxvol  # noqa: F401
        assert pot.active_set is not None  # grades can be computed right away
    except ImportError:
        assert "no active set" in text
    # printed training errors = error_report of the written potential on the training part
    configs = read_configurations(data / "train.cfg")
    it, iv = split_validation(len(configs), 0.25, 0)
    for title, idx in (("training set", it), ("validation set", iv)):
        rows = table_rows(text, title)
        expected = error_report(pot, [configs[i] for i in idx])
        for label, key in (("energy per atom", "energy"), ("forces", "forces"), ("stress", "stress"),
                           ("dE/dm", "magnetic_gradient")):
            count, rmse, mae, _ = rows[label]
            assert count == expected[key]["count"]
            assert rmse == pytest.approx(expected[key]["rmse"], rel=1e-5)
            assert mae == pytest.approx(expected[key]["mae"], rel=1e-5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = rep.read_text(encoding="utf-8")
    assert "training set" in report and "validation set" in report and "settings" in report


def test_train_writes_h5_and_keeps_min_dist_auto(data, tmp_path, capsys):
    out = tmp_path / "pot.h5"
    rc = main(["train", str(data / "template.mtp"), str(data / "train.cfg"), "-o", str(out),
               "--max-iter", "2", "--min-dist", "auto", "--init", "default"])
    text = capsys.readouterr().out
    assert rc == 0 and "min_dist:" in text    # an automatic choice is logged
    pot = load_potential(out)
    assert pot.trained and "validation set" not in text


def test_validation_split_is_deterministic():
    a = split_validation(20, 0.25, 7)
    b = split_validation(20, 0.25, 7)
    c = split_validation(20, 0.25, 8)
    np.testing.assert_array_equal(a[1], b[1])
    assert len(a[1]) == 5 and len(a[0]) == 15
    assert not np.array_equal(a[1], c[1])
    assert sorted(np.concatenate(a).tolist()) == list(range(20))


def test_ensemble(data, tmp_path, capsys):
    out = tmp_path / "ens.almtp"
    rc = main(["train", str(data / "template.mtp"), str(data / "train.cfg"), "-o", str(out), *FEW,
               "--validation-fraction", "0.25", "--ensemble", "2", "--seed", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and "ensemble of 2 potentials" in text
    p0, p1 = load_potential(tmp_path / "ens.0.almtp"), load_potential(tmp_path / "ens.1.almtp")
    assert not np.array_equal(p0.get_params(), p1.get_params())
    summary = json.loads((tmp_path / "ens.ensemble.json").read_text(encoding="utf-8"))
    assert [m["seed"] for m in summary["members"]] == [3, 4]
    assert summary["spread"]["set"] == "validation" and summary["spread"]["n_configurations"] == 6
    assert summary["spread"]["energy_std_mean"] > 0 and summary["spread"]["force_std_rms"] > 0
    assert summary["members"][1]["validation"]["energy"]["count"] == 6
    assert "ensemble_mean" in summary and "validation" in summary["ensemble_mean"]


def test_errors_command(data, tmp_path, capsys):
    pot_path = data / "true.mtp"
    configs = read_configurations(data / "train.cfg")
    noisy = [c.copy() for c in configs[:5]]
    for k, c in enumerate(noisy):
        c.energy += 0.002 * (k + 1) * len(c)
    write_configurations(tmp_path / "noisy.cfg", noisy)
    expected = error_report(load_potential(pot_path), read_configurations(tmp_path / "noisy.cfg"))
    assert main(["errors", str(pot_path), str(tmp_path / "noisy.cfg"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    e_mev = 2.0 * np.arange(1, 6)
    assert got["energy"]["rmse"] == pytest.approx(np.sqrt(np.mean(e_mev ** 2)), rel=1e-9)
    for key in ("energy", "forces", "stress", "magnetic_gradient"):
        assert got[key]["rmse"] == pytest.approx(expected[key]["rmse"], rel=1e-12, abs=1e-15)
        assert got[key]["count"] == expected[key]["count"]
    png = tmp_path / "e.png"
    assert main(["errors", str(pot_path), str(tmp_path / "noisy.cfg"), "--no-symmetrize",
                 "--parity-plot", str(png)]) == 0
    rows = table_rows(capsys.readouterr().out, str(pot_path))
    assert rows["energy per atom"][1] == pytest.approx(expected["energy"]["rmse"], rel=1e-5)
    assert rows["forces"][1] == pytest.approx(0.0, abs=1e-12)
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra, message", [
    (["--validation-fraction", "1.5"], "validation-fraction"),
    (["--ensemble", "1"], "at least 2"),
    (["--ensemble", "2", "--init", "keep"], "needs --init random"),
    (["-o", "out.txt"], "extension"),
    (["--energy-weight", "-1"], "weight must be >= 0"),
])
def test_bad_values_give_clear_errors(data, tmp_path, capsys, extra, message):
    args = ["train", str(data / "template.mtp"), str(data / "train.cfg"), "-o", str(tmp_path / "x.almtp"),
            *extra]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmtp train: error:") and message in err


def test_bad_choices_and_missing_files(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(data / "template.mtp"), str(data / "train.cfg"), "--weight-scaling", "3"])
    assert exc.value.code == 2 and "invalid choice: 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(data / "template.mtp"), str(data / "train.cfg"), "--validation", "v.cfg",
              "--validation-fraction", "0.2"])
    assert "not allowed with" in capsys.readouterr().err
    assert main(["train", str(data / "template.mtp"), str(tmp_path / "missing.cfg")]) == 1
    err = capsys.readouterr().err
    assert "missing.cfg" in err and "error" in err
    assert main(["train", str(tmp_path / "nope.mtp"), str(data / "train.cfg")]) == 1
    assert "nope.mtp" in capsys.readouterr().err
    assert main(["errors", str(data / "template.mtp"), str(data / "train.cfg")]) == 1
    assert "untrained" in capsys.readouterr().err


@pytest.mark.mpi
def test_mpi_train_equals_serial(data, tmp_path, capsys):
    args = ["train", str(data / "template.mtp"), str(data / "train.cfg"), *FEW,
            "--validation-fraction", "0.25"]
    serial, parallel = tmp_path / "serial.almtp", tmp_path / "mpi.almtp"
    assert main([*args, "-o", str(serial)]) == 0
    serial_out = capsys.readouterr().out
    proc = run_mpi(2, REPO / "tests" / "mpi_scripts" / "cli_main.py", *args, "-o", str(parallel))
    assert proc.returncode == 0, proc.stderr
    # the training reductions are summed in configuration order: bit-identical parameters
    np.testing.assert_array_equal(load_potential(parallel).get_params(),
                                  load_potential(serial).get_params())
    assert parallel.read_bytes() == serial.read_bytes()
    # only rank 0 prints: one report, the same numbers as the serial run
    assert proc.stdout.count("training set:") == 1 and "2 rank(s)" in proc.stdout
    assert table_rows(proc.stdout, "validation set") == table_rows(serial_out, "validation set")


def test_train_warns_on_tiny_data_and_tiny_validation(data, tmp_path, capsys):
    configs = read_configurations(data / "train.cfg")[:2]      # 1 to fit (55 numbers), 1 to validate
    write_configurations(tmp_path / "tiny.cfg", configs)
    rc = main(["train", str(data / "template.mtp"), str(tmp_path / "tiny.cfg"), "-o", str(tmp_path / "p.mtp"),
               "--max-iter", "2", "--validation-fraction", "0.5"])
    text = capsys.readouterr().out
    assert rc == 0
    pot = load_potential(tmp_path / "p.mtp")
    m = re.search(r"warning: (\d+) parameters are fitted to (\d+) numbers", text)
    assert m and int(m.group(1)) == pot.n_params and int(m.group(2)) < 2 * pot.n_params
    assert "warning: a validation set of 1 configuration(s)" in text
