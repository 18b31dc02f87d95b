"""MLIP-3 .cfg reading and writing: lossless round trips, every column, clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA
from mmtp_hpc.errors import InputError
from mmtp_hpc.io.cfg import format_cfg, iter_cfg, read_cfg, write_cfg
from mmtp_hpc.system.configuration import Configuration

CFG_FILES = sorted(
    [p for sub in ("magnetic", "reference", "examples") for p in (DATA / "mlip3" / sub).glob("*.cfg")]
    + [DATA / "feal_cdft_sample" / "mtp.cfg"])
ALFE = DATA / "mlip3" / "magnetic" / "al_fe_mag.cfg"


def test_all_shared_files_found() -> None:
    assert len(CFG_FILES) >= 10


@pytest.mark.parametrize("path", CFG_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_round_trip_is_bit_exact(path: Path, tmp_path: Path) -> None:
    configs = read_cfg(path)
    assert len(configs) >= 1
    out = tmp_path / "out.cfg"
    assert write_cfg(out, configs) == len(configs)
    again = read_cfg(out)
    assert again == configs
    # and once more: writing what was re-read gives the same text
    assert format_cfg(again) == out.read_text()


@pytest.mark.parametrize("name", ["ref_alfe_efs.cfg", "ref_li06_efs.cfg"])
def test_writer_reproduces_mlip3_output_byte_for_byte(name: str) -> None:
    path = DATA / "mlip3" / "reference" / name
    assert format_cfg(read_cfg(path)) == path.read_text()


def test_columns_and_labels_of_reference_file() -> None:
    (cfg,) = read_cfg(DATA / "mlip3" / "reference" / "ref_alfe_efs.cfg")
    assert cfg.n_atoms == 12 and cfg.pbc.all()
    assert cfg.cell[0, 0] == 5.5186700000000002 and cfg.cell[0, 1] == 5.0000000000000004e-06
    assert cfg.types.tolist() == [0] * 8 + [1] * 4
    assert cfg.ids.tolist() == list(range(1, 13))
    assert cfg.positions[2].tolist() == [4.7918799999999999, 6.2504000000000004e-01, 3.4580099999999998]
    assert cfg.site_energies[0] == 6.9203207171040643e-02
    assert cfg.forces[0, 1] == -1.9610622373778941e-01
    assert cfg.magmoms[8] == 3.5159000000000001e-01
    assert cfg.magnetic_gradient[0] == -1.2409226017320332e-02
    assert cfg.energy == 6.0020780864618262e-01
    # PlusStress: xx yy zz yz xz xy into a symmetric virial
    assert cfg.virial[0, 0] == 3.2197447287503120 and cfg.virial[2, 2] == 3.2197448572694642
    assert cfg.virial[1, 2] == cfg.virial[2, 1] == -2.0326006675331393e-01
    assert cfg.virial[0, 2] == cfg.virial[2, 0] == -2.0325987493632969e-01
    assert cfg.virial[0, 1] == cfg.virial[1, 0] == -2.0326026936922220e-01
    assert cfg.features == {"COLLINEAR": "YES", "EFS_by": "MultiMTP93"}
    assert cfg.nbh_grades is None and cfg.ghost is None


def test_multiple_configurations_and_iter() -> None:
    path = DATA / "mlip3" / "examples" / "04_graded.cfg"
    configs = read_cfg(path)
    assert [c.n_atoms for c in configs] == [53, 54]
    assert [c.features["ID"] for c in configs] == ["0", "1"]
    assert configs[1].nbh_grades is not None and configs[1].forces is not None
    assert list(iter_cfg(path)) == configs


def test_feature_lines_kept_verbatim() -> None:
    configs = read_cfg(DATA / "mlip3" / "examples" / "train.cfg")
    # the tab after the key is the separator; the space after it belongs to the value
    assert configs[0].features["MV_grade"] == " 1.092504"
    assert configs[0].features["from"] == " database:Li_NVT300.cfg"
    assert configs[0].features["mindists"] == "{(0,0):2.392451}"
    text = format_cfg(configs)
    assert " Feature   MV_grade\t 1.092504\n" in text
    assert " Feature   from\t database:Li_NVT300.cfg\n" in text


def test_repeated_feature_keys_and_order() -> None:
    text = ALFE.read_text().replace(
        " Feature   COLLINEAR\tYES\n",
        " Feature   note\tfirst  value \n Feature   COLLINEAR\tYES\n Feature   note\tsecond\n")
    (cfg,) = read_cfg(io.StringIO(text))
    assert list(cfg.features) == ["note", "COLLINEAR", "EFS_by"]
    assert cfg.features["note"] == ["first  value ", "second"]
    out = format_cfg(cfg)
    assert " Feature   note\tfirst  value \n Feature   note\tsecond\n Feature   COLLINEAR\tYES\n" in out
    assert read_cfg(io.StringIO(out))[0].features == cfg.features


def test_ghost_column_and_molecule() -> None:
    configs = read_cfg(DATA / "mlip3" / "examples" / "preselected.cfg")
    cfg = configs[0]
    assert not cfg.pbc.any() and not cfg.cell.any()   # no Supercell: a molecule
    assert cfg.ghost.dtype == bool and cfg.ghost[0] == False and cfg.ghost[540]   # noqa: E712
    assert " Supercell" not in format_cfg(cfg)
    assert "ghost" in format_cfg(cfg).splitlines()[3]


def test_columns_in_any_order() -> None:
    lines = ALFE.read_text().splitlines(True)
    # reverse the AtomData columns (header and every atom line) and the PlusStress components
    lines[7] = " AtomData: " + " ".join(reversed(lines[7].split()[1:])) + "\n"
    for i in range(8, 20):
        lines[i] = " ".join(reversed(lines[i].split())) + "\n"
    lines[22] = " PlusStress: " + " ".join(reversed(lines[22].split()[1:])) + "\n"
    lines[23] = " ".join(reversed(lines[23].split())) + "\n"
    assert lines[7].split()[1] == "magmom_z" and lines[22].split()[1] == "xy"
    (cfg,) = read_cfg(io.StringIO("".join(lines)))
    assert cfg == read_cfg(ALFE)[0]


def test_columns_present_are_the_columns_written() -> None:
    cfg = Configuration(cell=np.eye(3) * 3, positions=[[0, 0, 0], [1.5, 1.5, 1.5]], types=[0, 1])
    text = format_cfg(cfg)
    assert "AtomData:  id type       cartes_x      cartes_y      cartes_z\n" in text
    for absent in ("fx", "magmom", "en_der", "site_en", "nbh_grades", "Energy", "PlusStress", "Feature"):
        assert absent not in text
    cfg.forces = np.ones((2, 3))
    cfg.magmoms = np.array([2.0, -0.1])
    cfg.nbh_grades = np.array([1.0, 2.0])
    cfg.magnetic_gradient = np.array([0.5, 0.25])
    cfg.site_energies = np.array([-1.0, -2.0])
    header = format_cfg(cfg).splitlines()[7].split()
    assert header[1:] == ["id", "type", "cartes_x", "cartes_y", "cartes_z", "site_en", "fx", "fy", "fz",
                          "magmom_x", "magmom_y", "magmom_z", "en_der_mx", "en_der_my", "en_der_mz",
                          "nbh_grades"]
    assert read_cfg(io.StringIO(format_cfg(cfg)))[0] == cfg


def test_en_der_sign_option() -> None:
    path = DATA / "feal_cdft_sample" / "mtp.cfg"
    plus = read_cfg(path)
    minus = read_cfg(path, en_der_sign=-1)
    assert plus[0].magnetic_gradient[0] == 0.01301 and plus[0].magnetic_gradient[1] == -0.07494
    for a, b in zip(plus, minus, strict=True):
        np.testing.assert_array_equal(b.magnetic_gradient, -a.magnetic_gradient)
        np.testing.assert_array_equal(b.magmoms, a.magmoms)
    # written back with MLIP-3's sign: what was read as +dE/dm
    (again,) = read_cfg(io.StringIO(format_cfg(minus[0])))
    np.testing.assert_array_equal(again.magnetic_gradient, minus[0].magnetic_gradient)
    for bad in (0, 2, "+1"):
        with pytest.raises(InputError, match="en_der_sign"):
            read_cfg(path, en_der_sign=bad)


def test_non_periodic_supercell_rows(tmp_path: Path) -> None:
    text = ALFE.read_text()
    lines = text.splitlines(True)
    two_rows = "".join(lines[:6] + lines[7:])       # drop the third lattice vector
    (cfg,) = read_cfg(io.StringIO(two_rows))
    assert cfg.pbc.tolist() == [True, True, False]
    assert cfg.cell[2].tolist() == [0.0, 0.0, 0.0]
    assert cfg.cell[1].tolist() == [0.000005, 5.518670, 0.000005]
    out = format_cfg(cfg)
    assert out.split(" Supercell\n")[1].split(" AtomData")[0].count("\n") == 2   # two rows
    (again,) = read_cfg(io.StringIO(out))
    assert again == cfg
    one_row = "".join(lines[:5] + lines[7:])
    (cfg1,) = read_cfg(io.StringIO(one_row))
    assert cfg1.pbc.tolist() == [True, False, False] and not cfg1.cell[1:].any()
    assert read_cfg(io.StringIO(format_cfg(cfg1)))[0] == cfg1


def test_direct_coordinates() -> None:
    cell = [[4.0, 0.0, 0.0], [0.5, 3.0, 0.0], [0.0, 0.25, 5.0]]
    frac = [[0.0, 0.0, 0.0], [0.5, 0.25, 0.75]]
    text = ("BEGIN_CFG\n Size\n 2\n Supercell\n"
            + "".join(" ".join(repr(v) for v in row) + "\n" for row in cell)
            + " AtomData: id type direct_x direct_y direct_z\n"
            + "".join(f"{i + 1} {i} " + " ".join(repr(v) for v in row) + "\n"
                      for i, row in enumerate(frac))
            + "END_CFG\n")
    (cfg,) = read_cfg(io.StringIO(text))
    np.testing.assert_array_equal(cfg.positions, np.array(frac) @ np.array(cell))
    assert cfg.types.tolist() == [0, 1]
    # written back as Cartesian, read again unchanged
    assert "cartes_x" in format_cfg(cfg)
    assert read_cfg(io.StringIO(format_cfg(cfg)))[0] == cfg
    no_cell = text.replace(" Supercell\n", "").replace(
        "".join(" ".join(repr(v) for v in row) + "\n" for row in cell), "")
    with pytest.raises(InputError, match="direct coordinates need a Supercell"):
        read_cfg(io.StringIO(no_cell))


def test_write_to_text_file_append_and_single_configuration(tmp_path: Path) -> None:
    configs = read_cfg(DATA / "mlip3" / "magnetic" / "fe_magmom.cfg")
    buf = io.StringIO()
    write_cfg(buf, configs[0])
    assert buf.getvalue().startswith("BEGIN_CFG\n") and buf.getvalue().endswith("END_CFG\n\n")
    out = tmp_path / "a.cfg"
    write_cfg(out, configs)
    write_cfg(out, configs, append=True)
    assert read_cfg(out) == configs + configs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.cfg"]   # no temporary left


def test_non_collinear_values_are_refused() -> None:
    lines = ALFE.read_text().splitlines(True)
    lines[10] = lines[10].replace("     0.000000     0.000000\n", "     0.000000     0.300000\n")
    with pytest.raises(InputError) as exc:
        read_cfg(io.StringIO("".join(lines)))
    assert ":11:" in str(exc.value) and "magmom_z" in str(exc.value)


# --------------------------------------------------------------------------- malformed files
def _alfe_lines() -> list[str]:
    return ALFE.read_text().splitlines(True)


def _expect(tmp_path: Path, lines: list[str], line: int, *words: str) -> str:
    path = tmp_path / "bad_input.cfg"
    path.write_text("".join(lines))
    with pytest.raises(InputError) as exc:
        read_cfg(path)
    msg = str(exc.value)
    assert "bad_input.cfg" in msg and f":{line}:" in msg, msg
    for word in words:
        assert word in msg, msg
    return msg


def test_missing_end_cfg(tmp_path: Path) -> None:
    lines = [ln for ln in _alfe_lines() if "END_CFG" not in ln]
    _expect(tmp_path, lines, len(lines), "END_CFG", "line 1")
    # a second configuration starting before the first one ended
    _expect(tmp_path, lines + _alfe_lines(), len(lines) + 1, "END_CFG", "BEGIN_CFG")


def test_wrong_column_count(tmp_path: Path) -> None:
    lines = _alfe_lines()
    lines[12] = lines[12].rsplit(None, 1)[0] + "\n"     # atom 5 loses magmom_z
    _expect(tmp_path, lines, 13, "expected 11 columns", "got 10")


def test_unknown_key_and_column(tmp_path: Path) -> None:
    lines = _alfe_lines()
    lines.insert(20, " Charge\n")
    _expect(tmp_path, lines, 21, "Charge", "unknown")
    lines = _alfe_lines()
    lines[7] = lines[7].replace(" fx ", " fq ")
    _expect(tmp_path, lines, 8, "fq", "unknown column")


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf"])
def test_nan_and_inf(tmp_path: Path, bad: str) -> None:
    lines = _alfe_lines()
    lines[14] = lines[14].replace("0.625040", bad, 1)            # atom 7, cartes_x
    _expect(tmp_path, lines, 15, "cartes_x", "finite")
    lines = _alfe_lines()
    lines[21] = f"    {bad}\n"                                    # Energy value
    _expect(tmp_path, lines, 22, "Energy", "finite")
    lines = _alfe_lines()
    lines[23] = lines[23].replace("6.99203", bad, 1)
    _expect(tmp_path, lines, 24, "PlusStress", "finite")


def test_non_numeric(tmp_path: Path) -> None:
    lines = _alfe_lines()
    lines[17] = lines[17].replace("0.110373", "0.11O373")     # atom 10, fx (letter O)
    _expect(tmp_path, lines, 18, "fx", "non-numeric", "0.11O373")
    lines = _alfe_lines()
    lines[9] = lines[9].replace("    0  ", "    Fe ", 1)       # atom 2, type
    _expect(tmp_path, lines, 10, "type", "non-numeric")
    lines = _alfe_lines()
    lines[5] = lines[5].replace("5.518670", "5,518670")
    _expect(tmp_path, lines, 6, "Supercell", "non-numeric")


def test_size_mismatch(tmp_path: Path) -> None:
    lines = _alfe_lines()
    lines[2] = "    13\n"              # one more than there are atom lines
    _expect(tmp_path, lines, 21, "Size", "13", "only 12 atom lines")
    lines = _alfe_lines()
    lines[2] = "    11\n"              # one fewer: line 20 is an extra atom line
    _expect(tmp_path, lines, 20, "Size", "more atom lines")
    lines = _alfe_lines()[:14]         # file ends inside AtomData
    _expect(tmp_path, lines, 14, "Size", "end of file")


def test_other_structural_errors(tmp_path: Path) -> None:
    lines = _alfe_lines()
    lines.insert(0, "garbage\n")
    _expect(tmp_path, lines, 1, "BEGIN_CFG")
    lines = _alfe_lines()
    lines.insert(22, " Energy\n    1.0\n")
    _expect(tmp_path, lines, 23, "Energy", "twice")
    lines = _alfe_lines()
    lines[4] = "    5.518670 0.000005\n"
    _expect(tmp_path, lines, 5, "Supercell", "3 values")
    lines = _alfe_lines()
    lines[22] = lines[22].replace(" xy", " xx")
    _expect(tmp_path, lines, 23, "PlusStress")
    lines = _alfe_lines()
    lines[10] = "\n"
    _expect(tmp_path, lines, 11, "blank line")
    lines = _alfe_lines()
    lines[9] = lines[9].replace("    0  ", "  0.5  ", 1)
    _expect(tmp_path, lines, 10, "type", "integer")


def test_duplicate_ids_are_allowed() -> None:
    lines = _alfe_lines()
    lines[9] = lines[9].replace("             2 ", "             1 ", 1)
    (cfg,) = read_cfg(io.StringIO("".join(lines)))
    assert cfg.ids[:3].tolist() == [1, 1, 3]


def test_large_file_is_fast(tmp_path: Path) -> None:
    import time

    rng = np.random.default_rng(1)
    n = 100_000
    cfg = Configuration(cell=np.eye(3) * 100, positions=rng.random((n, 3)) * 100,
                        types=rng.integers(0, 2, n), magmoms=rng.normal(size=n),
                        forces=rng.normal(size=(n, 3)), energy=-1.5)
    path = tmp_path / "big.cfg"
    write_cfg(path, cfg)
    t0 = time.process_time()     # CPU time: independent of other jobs on the machine
    (again,) = read_cfg(path)
    elapsed = time.process_time() - t0
    assert again == cfg
    assert elapsed < 5.0, f"reading {n} atoms took {elapsed:.2f} s"
