"""MLIP-3 potential files: every shipped file reads, counts agree, round trips are bit-exact.

Also: the three magnetic spellings, the per-species interval extension, the active-set
block layout, MLIP-3's untrained defaults and malformed inputs (file, line, key named).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp.mlip_io import (
    ActiveSetBlock,
    dumps_mtp,
    load_potential,
    loads_mtp,
    parse_active_set,
    read_mtp,
    save_potential,
    write_mtp,
)
from mmtp_hpc.potentials.mtp.parameters import MTPPotential

MLIP3 = DATA / "mlip3"
TEMPLATES = sorted((MLIP3 / "templates").glob("*.almtp"))
OTHERS = [MLIP3 / "magnetic" / "al_fe_mag.mtpr", MLIP3 / "magnetic" / "fe_mag.mtp",
          MLIP3 / "reference" / "li06_pot.almtp", MLIP3 / "examples" / "04_pot.almtp"]
ALL_FILES = TEMPLATES + OTHERS
ALFE = MLIP3 / "magnetic" / "al_fe_mag.mtpr"

# spec §2: level -> (basis functions, products)
SPEC_COUNTS = {8: (9, 14), 10: (16, 42), 12: (29, 117), 16: (92, 969), 20: (288, 6349),
               24: (864, 36170), 28: (2445, 180069)}


def _bits(x: object) -> bytes | None:
    if x is None:
        return None
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64)).tobytes()


def assert_same_potential(a: MTPPotential, b: MTPPotential) -> None:
    """Equal to the last bit, active-set bytes included."""
    for name in ("species_count", "radial_basis_size", "radial_funcs_count", "alpha_moments_count",
                 "magnetic", "mag_basis_size", "symmetric", "potential_name", "potential_tag",
                 "version", "species_names", "radial_basis_type", "magnetic_basis_type"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("min_dist", "max_dist", "scaling", "mag_min", "mag_max", "radial_coeffs",
                 "species_coeffs", "moment_coeffs"):
        assert _bits(getattr(a, name)) == _bits(getattr(b, name)), name
    for name in ("alpha_index_basic", "alpha_index_times", "alpha_moment_mapping"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    if a.radial_coeffs is not None:
        assert a.radial_coeffs.shape == b.radial_coeffs.shape
    raw_a = None if a.active_set is None else a.active_set.to_bytes()
    raw_b = None if b.active_set is None else b.active_set.to_bytes()
    assert raw_a == raw_b


def _file_count(text: str, key: str) -> int:
    return int(re.search(rf"\b{key}\s*=\s*(\d+)", text).group(1))


# --------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_templates_counts(path: Path) -> None:
    pot = read_mtp(path)
    text = path.read_text()
    level = int(path.stem)
    assert not pot.trained and pot.radial_coeffs is None and pot.species_coeffs is None
    assert pot.species_count == 1 and not pot.magnetic
    assert pot.alpha_moments_count == _file_count(text, "alpha_moments_count")
    assert len(pot.alpha_index_basic) == _file_count(text, "alpha_index_basic_count")
    assert len(pot.alpha_index_times) == _file_count(text, "alpha_index_times_count")
    assert pot.n_basis == _file_count(text, "alpha_scalar_moments")
    assert pot.level == level
    if level in SPEC_COUNTS:
        assert (pot.n_basis, len(pot.alpha_index_times)) == SPEC_COUNTS[level]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_round_trip_bit_identical(path: Path, tmp_path: Path) -> None:
    pot = read_mtp(path)
    out = tmp_path / path.name
    write_mtp(pot, out)
    again = read_mtp(out)
    assert_same_potential(pot, again)
    # the written text is a fixed point
    assert dumps_mtp(again) == out.read_bytes()
    data = path.read_bytes()
    marker = data.find(b"#MVS_v1.1")
    if marker >= 0:
        assert again.active_set.to_bytes() == data[marker:]
        assert out.read_bytes().endswith(data[marker:])
    else:
        assert again.active_set is None


def test_trained_magnetic_potential() -> None:
    pot = read_mtp(ALFE)
    assert pot.trained and pot.magnetic
    sizes = (pot.species_count, pot.radial_funcs_count, pot.radial_basis_size, pot.mag_basis_size)
    assert sizes == (2, 4, 12, 2)
    assert pot.radial_coeffs.shape == (2, 2, 4, 12, 2, 2)
    assert pot.scaling == 4.796174826360341e-02
    assert np.all(pot.mag_min == -1.3) and np.all(pot.mag_max == 3.1)
    # first numbers of block 0-1, row 0: k = 0, (b, c) = (0, 0), (0, 1), (1, 0), (1, 1); k = 1 ...
    assert pot.radial_coeffs[0, 1, 0, 0, 0, 0] == 2.213997271969806e-02
    assert pot.radial_coeffs[0, 1, 0, 0, 0, 1] == 9.888166021755170e-02
    assert pot.radial_coeffs[0, 1, 0, 0, 1, 0] == -9.224353644245065e-03
    assert pot.radial_coeffs[0, 1, 0, 1, 0, 0] == -7.281619761157043e-02
    assert pot.species_coeffs.tolist() == [6.492036889122281e-02, -3.900268276285650e-02]
    assert pot.n_params == 2 * 2 * 4 * 12 * 4 + 2 + 92


def test_written_text_is_mlip3_spelling(tmp_path: Path) -> None:
    pot = read_mtp(ALFE)
    text = dumps_mtp(pot).decode()
    keys = re.findall(r"^\s*([A-Za-z_]+)\s*=", text, flags=re.M)
    assert keys == ["version", "potential_name", "scaling", "species_count", "potential_tag",
                    "radial_basis_type", "min_dist", "max_dist", "radial_basis_size",
                    "magnetic_basis_type", "min_val", "max_val", "basis_size", "radial_funcs_count",
                    "alpha_moments_count", "alpha_index_basic_count", "alpha_index_basic",
                    "alpha_index_times_count", "alpha_index_times", "alpha_scalar_moments",
                    "alpha_moment_mapping", "species_coeffs", "moment_coeffs"]
    assert "\tradial_coeffs\n\t\t0-0\n\t\t\t{" in text
    assert "\tmin_val = -1.3000000000000000e+00\n" in text
    assert "potential_tag = \n" in text
    # no scaling line when scaling is 1, as MLIP-3 writes it
    assert "scaling" not in dumps_mtp(read_mtp(MLIP3 / "templates" / "08.almtp")).decode()


# --------------------------------------------------------------------------- active set
@pytest.mark.parametrize("path", [MLIP3 / "reference" / "li06_pot.almtp",
                                  MLIP3 / "examples" / "04_pot.almtp"], ids=lambda p: p.name)
def test_active_set_layout(path: Path) -> None:
    pot = read_mtp(path)
    block = pot.active_set
    assert isinstance(block, ActiveSetBlock)
    n = pot.n_params
    assert n == 22 == block.n
    assert (block.energy_weight, block.force_weight, block.stress_weight, block.site_en_weight,
            block.weight_scaling) == (0.0, 0.0, 0.0, 1.0, 2)
    # stored invA is A^-T
    assert block.inverse_residual() < 1e-8
    assert np.allclose(block.matrix @ block.inv_matrix, np.eye(n), atol=1e-8)
    # initial rows are 1e-6 e_j and have no link
    initial = block.cfg_indices == -1
    assert np.array_equal(initial, block.eqn_indices == -1) and initial.sum() == 3
    assert np.allclose(np.abs(block.matrix[initial]).max(axis=1), 1e-6)
    assert block.n_configurations == 2
    # each configuration lists its selected equations in a feature
    for c, cfg in enumerate(block.cfg_text.split("BEGIN_CFG")[1:]):
        inds = re.search(r"selected_eqn_inds\s+(\S+)", cfg).group(1)
        assert sorted(map(int, inds.split(","))) == sorted(block.eqn_indices[block.cfg_indices == c].tolist())
    # the layout is understood completely: rebuilding gives the same bytes
    rebuilt = ActiveSetBlock.from_parts(
        block.matrix, block.inverse, block.cfg_indices, block.eqn_indices, block.cfg_text,
        energy_weight=block.energy_weight, force_weight=block.force_weight,
        stress_weight=block.stress_weight, site_en_weight=block.site_en_weight,
        weight_scaling=block.weight_scaling)
    assert rebuilt.to_bytes() == block.to_bytes()
    # n is found from the layout alone
    assert parse_active_set(block.to_bytes()).n == n


def test_active_set_wrong_size_is_an_error(tmp_path: Path) -> None:
    data = (MLIP3 / "reference" / "li06_pot.almtp").read_bytes()
    # one more moment coefficient -> n = 23, does not fit the 22x22 matrices
    text = data.replace(b"alpha_scalar_moments = 5", b"alpha_scalar_moments = 6")
    text = text.replace(b"alpha_moment_mapping = {0, 4, 5, 6, 7}",
                        b"alpha_moment_mapping = {0, 4, 5, 6, 7, 7}")
    text = text.replace(b"moment_coeffs = {", b"moment_coeffs = {1.0, ")
    bad = tmp_path / "bad.almtp"
    bad.write_bytes(text)
    line = text[:text.find(b"#MVS")].count(b"\n") + 1
    with pytest.raises(InputError) as exc:
        read_mtp(bad)
    msg = str(exc.value)
    assert "bad.almtp" in msg and f":{line}:" in msg and "#MVS_v1.1" in msg and "n = 23" in msg


# --------------------------------------------------------------------------- magnetic spellings
def _alfe_text() -> str:
    return ALFE.read_text()


MLIP3_BLOCK = ("magnetic_basis_type = BChebyshev\n\tmin_val = -1.300000000000000e+00\n"
               "\tmax_val = 3.100000000000000e+00\n\tbasis_size = 2\n")


def test_three_magnetic_spellings(tmp_path: Path) -> None:
    text = _alfe_text()
    assert MLIP3_BLOCK in text
    motep1 = text.replace(MLIP3_BLOCK, "magnetic_basis_type = BChebyshev\n\tmin = -1.3\n\tmax = 3.1\n"
                                       "\tsize = 2\n")
    motep1 = motep1.replace("\tmin_dist = 2.000000000000000e+00\n\tmax_dist = 5.000000000000000e+00\n"
                            "\tradial_basis_size = 12\n", "\tmin = 2\n\tmax = 5\n\tsize = 12\n")
    motep2 = text.replace(MLIP3_BLOCK, "").replace(
        "\tradial_basis_size = 12\n",
        "\tradial_basis_size = 12\n\tmin_mag = -1.3\n\tmax_mag = 3.1\n\tmag_basis_size = 2\n")
    assert motep1 != text and motep2 != text and "magnetic_basis_type" not in motep2
    ref = loads_mtp(text, path="mlip3.mtp")
    for name, variant in (("motep1.mtp", motep1), ("motep2.mtp", motep2)):
        (tmp_path / name).write_text(variant)
        assert_same_potential(ref, read_mtp(tmp_path / name))


def test_comments_and_free_indentation() -> None:
    text = (MLIP3 / "templates" / "06.almtp").read_text()
    ref = loads_mtp(text)
    commented = text.replace("species_count = 1", "species_count = 1   <<< number of species")
    commented = commented.replace("\tmax_dist = 5", "    max_dist = 5 <<<cutoff")
    commented = "<<< a leading comment line\n" + commented.replace("\talpha", "alpha").replace(
        "alpha_moments_count", "        alpha_moments_count")
    commented = commented.replace("potential_tag = ", "potential_tag = <<< tag here")
    assert_same_potential(ref, loads_mtp(commented, path="06_commented.almtp"))


def test_radial_block_order_before_magnetic_and_inner_scaling() -> None:
    text = _alfe_text()
    ref = loads_mtp(text)
    # MLIP-3 multiplies a scaling inside the radial block into the global one
    inner = text.replace("radial_basis_type = RBChebyshev\n",
                         "radial_basis_type = RBChebyshev\n\tscaling = 2\n")
    assert loads_mtp(inner).scaling == 2 * ref.scaling


# --------------------------------------------------------------------------- extensions
def test_per_species_interval_round_trip(tmp_path: Path) -> None:
    pot = read_mtp(ALFE)
    pot.mag_min = np.array([-0.1, -3.0])
    pot.mag_max = np.array([0.1, 3.0])
    pot.species_names = ["Al", "Fe"]
    pot.symmetric = True
    pot.potential_tag = "Fe-Al mMTP, per-species intervals"
    path = tmp_path / "per_species.mtp"
    write_mtp(pot, path)
    text = path.read_text()
    assert "\tspecies_min_val = {-1.0000000000000001e-01, -3.0000000000000000e+00}\n" in text
    assert "species_max_val" in text and "min_val =" not in text.replace("species_min_val =", "")
    assert "symmetric = true\n" in text and "species_names = {Al, Fe}\n" in text
    again = read_mtp(path)
    assert_same_potential(pot, again)
    assert not again.global_interval


def test_mlip3_files_carry_no_extension_keys() -> None:
    text = dumps_mtp(read_mtp(ALFE)).decode()
    for key in ("species_min_val", "species_max_val", "symmetric", "species_names"):
        assert key not in text


def test_both_interval_spellings_is_an_error() -> None:
    text = _alfe_text().replace("\tbasis_size = 2\n", "\tbasis_size = 2\n\tspecies_min_val = {-1, -2}\n")
    with pytest.raises(InputError) as exc:
        loads_mtp(text, path="two.mtp")
    assert f"two.mtp:{_line_of(text, 'species_min_val')}: species_min_val" in str(exc.value)
    assert "not both" in str(exc.value)


# --------------------------------------------------------------------------- untrained
def test_untrained_defaults_match_mlip3() -> None:
    pot = read_mtp(MLIP3 / "magnetic" / "fe_mag.mtp")
    assert pot.magnetic and not pot.trained and pot.radial_coeffs is None
    pot.init_default_params()
    C, K, R, M = 1, 4, 4, 2
    assert pot.radial_coeffs.shape == (C, C, K, R, M, M)
    for mu in range(K):
        for k in range(R):
            want = 1e-3 * 1 + mu * 1e-4 if k == mu else 1e-6 + mu * 1e-7 + k * 1e-7
            assert np.all(pot.radial_coeffs[0, 0, mu, k] == want)
    assert np.all(pot.species_coeffs == 1e-3) and np.all(pot.moment_coeffs == 1e-3)
    two = read_mtp(MLIP3 / "templates" / "08.almtp")
    two.species_count = 2
    two.init_default_params()
    assert two.radial_coeffs[1, 0, 1, 1, 0, 0] == 1e-3 * 3 + 1e-4   # pair (1, 0) = 2


def test_mlip3_untrained_save_with_empty_radial_coeffs() -> None:
    text = (MLIP3 / "templates" / "08.almtp").read_text()
    text = text.replace("\tradial_funcs_count = 2", "\tradial_funcs_count = 2\n\tradial_coeffs")
    pot = loads_mtp(text)
    assert pot.radial_coeffs is None and not pot.trained


# --------------------------------------------------------------------------- dispatch
def test_load_save_dispatch(tmp_path: Path) -> None:
    pot = read_mtp(MLIP3 / "reference" / "li06_pot.almtp")
    for name in ("a.mtp", "b.almtp", "c.MTPR"):
        save_potential(pot, tmp_path / name)
        assert_same_potential(pot, load_potential(tmp_path / name))
    save_potential(pot, tmp_path / "a.mtp")   # replace an existing file
    assert sorted(os.listdir(tmp_path)) == ["a.mtp", "b.almtp", "c.MTPR"]   # no temporary left
    for bad in ("pot.txt", "pot"):
        with pytest.raises(InputError, match="extension"):
            save_potential(pot, tmp_path / bad)
        with pytest.raises(InputError, match="extension"):
            load_potential(tmp_path / bad)
    assert not (tmp_path / "pot.txt").exists()


def test_load_save_hdf5(tmp_path: Path) -> None:
    pytest.importorskip("mmtp_hpc.potentials.mtp.hdf5_io")
    pot = read_mtp(MLIP3 / "reference" / "li06_pot.almtp")
    save_potential(pot, tmp_path / "p.h5")
    assert_same_potential(pot, load_potential(tmp_path / "p.h5"))


# --------------------------------------------------------------------------- malformed files
def _line_of(text: str, needle: str) -> int:
    return text[:text.index(needle)].count("\n") + 1


def _expect_error(tmp_path: Path, text: str, name: str, line: int, key: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        read_mtp(path)
    msg = str(exc.value)
    assert name in msg and f":{line}:" in msg and key in msg, msg
    return msg


def test_unknown_key(tmp_path: Path) -> None:
    text = _alfe_text().replace("species_count = 2\n", "species_count = 2\nspecies_colour = 2\n")
    msg = _expect_error(tmp_path, text, "unknown.mtp", _line_of(text, "species_colour"), "species_colour")
    assert "known keys" in msg and "alpha_index_basic" in msg


def test_missing_required_key(tmp_path: Path) -> None:
    text = re.sub(r"alpha_index_times_count = \d+\n", "", _alfe_text())
    _expect_error(tmp_path, text, "missing.mtp", _line_of(text, "alpha_index_times ="),
                  "alpha_index_times_count")
    text = _alfe_text().replace("\tbasis_size = 2\n", "")
    _expect_error(tmp_path, text, "nomag.mtp", _line_of(text, "\tradial_funcs_count"), "basis_size")


def test_wrong_species_coeffs_length(tmp_path: Path) -> None:
    text = _alfe_text().replace("species_coeffs = {6.492036889122281e-02, -3.900268276285650e-02}",
                                "species_coeffs = {6.492036889122281e-02}")
    msg = _expect_error(tmp_path, text, "species.mtp", _line_of(text, "species_coeffs"), "species_coeffs")
    assert "species_count = 2" in msg


def test_wrong_radial_block_count(tmp_path: Path) -> None:
    text = _alfe_text()
    start, end = text.index("\t\t1-1\n"), text.index("alpha_moments_count")
    text = text[:start] + text[end:]
    msg = _expect_error(tmp_path, text, "blocks.mtp", _line_of(text, "radial_coeffs"), "radial_coeffs")
    assert "3 blocks" in msg and "4" in msg
    text = _alfe_text().replace("species_count = 2", "species_count = 3")
    _expect_error(tmp_path, text, "count.mtp", _line_of(text, "radial_coeffs"), "radial_coeffs")


def test_nan_coefficient(tmp_path: Path) -> None:
    text = _alfe_text().replace("{4.342026065176000e-02,", "{nan,")
    _expect_error(tmp_path, text, "nan.mtp", _line_of(text, "{nan,"), "radial_coeffs")
    text = _alfe_text().replace("moment_coeffs = {9.098947549419976e-02", "moment_coeffs = {inf")
    _expect_error(tmp_path, text, "inf.mtp", _line_of(text, "moment_coeffs"), "moment_coeffs")


def test_wrong_row_length(tmp_path: Path) -> None:
    text = _alfe_text().replace("{4.342026065176000e-02, ", "{")
    msg = _expect_error(tmp_path, text, "row.mtp", _line_of(text, "\t\t\t{-6.050350044699675e-02"),
                        "radial_coeffs")
    assert "47" in msg and "48" in msg


def test_fewer_basic_rows_than_count(tmp_path: Path) -> None:
    text = (MLIP3 / "templates" / "06.almtp").read_text().replace(", {1, 0, 0, 0}}", "}")
    msg = _expect_error(tmp_path, text, "basic.almtp", _line_of(text, "alpha_index_basic ="),
                        "alpha_index_basic")
    assert "4 rows" in msg and "alpha_index_basic_count = 5" in msg


def test_not_an_mtp_file(tmp_path: Path) -> None:
    _expect_error(tmp_path, "BEGIN_CFG\n Size\n 1\nEND_CFG\n", "cfg.mtp", 1, "MTP")
