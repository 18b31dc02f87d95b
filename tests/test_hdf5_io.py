"""HDF5 training sets and potentials, format dispatch and ``mmtp convert``."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import DATA
from mmtp_hpc.errors import InputError
from mmtp_hpc.io import schema
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.io.cfg import read_cfg
from mmtp_hpc.io.formats import (detect_format, read_configurations,
                                 read_configurations_and_species, write_configurations)
from mmtp_hpc.potentials.mtp.hdf5_io import read_potential_h5, write_potential_h5
from mmtp_hpc.io.trainingset import (read_trainingset_h5, read_trainingset_info,
                                     read_trainingset_provenance, write_trainingset_h5)
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import Configuration

CFG_FILES = sorted(
    [p for sub in ("magnetic", "reference", "examples") for p in (DATA / "mlip3" / sub).glob("*.cfg")]
    + [DATA / "feal_cdft_sample" / "mtp.cfg"])


# --------------------------------------------------------------------------- training sets
def test_every_shared_cfg_round_trips_through_one_file(tmp_path: Path) -> None:
    configs, provenance = [], []
    for path in CFG_FILES:
        got = read_cfg(path)
        configs += got
        provenance += [f"{path.name}#{i}" for i in range(len(got))]
    out = tmp_path / "train.h5"
    assert write_trainingset_h5(out, configs, provenance=provenance, species=["Fe", "Al"],
                                settings={"source": "shared data", "n": 3}) == len(configs)
    again = read_trainingset_h5(out)
    assert again == configs                  # bit-exact, labels present exactly where they were
    assert read_trainingset_provenance(out) == provenance
    info = read_trainingset_info(out)
    assert info["n_configurations"] == len(configs)
    assert info["n_atoms"] == sum(len(c) for c in configs)
    assert info["species"] == ["Fe", "Al"] and info["settings"] == {"source": "shared data", "n": 3}
    assert info["schema_version"] == schema.SCHEMA_VERSION


def test_layout_units_and_masks(tmp_path: Path) -> None:
    configs = read_cfg(DATA / "mlip3" / "reference" / "ref_alfe_efs.cfg") + \
        read_cfg(DATA / "mlip3" / "examples" / "04_graded.cfg")
    out = tmp_path / "t.h5"
    write_trainingset_h5(out, configs)
    TS = schema.TrainingSet
    with h5py.File(out, "r") as f:
        assert f.attrs[schema.SCHEMA_TAG_ATTR] == schema.SCHEMA_TAG
        assert f.attrs[schema.KIND_ATTR] == schema.KIND_TRAININGSET
        c, a = f[TS.CONFIGS], f[TS.ATOMS]
        assert c[TS.N_ATOMS][...].tolist() == [12, 53, 54]
        assert c[TS.ATOM_OFFSET][...].tolist() == [0, 12, 65]
        assert a[TS.POSITIONS].shape == (119, 3) and a[TS.POSITIONS].maxshape == (None, 3)
        assert a[TS.POSITIONS].attrs[schema.UNITS_ATTR] == "Å"
        assert a[TS.FORCES].attrs[schema.UNITS_ATTR] == "eV/Å"
        assert c[TS.VIRIAL].attrs[schema.UNITS_ATTR] == "eV"
        assert a[TS.MAGMOMS].attrs[schema.UNITS_ATTR] == "μB"
        assert c[TS.mask("magmoms")][...].tolist() == [True, False, False]
        assert c[TS.mask("nbh_grades")][...].tolist() == [False, True, True]
        assert np.isnan(a[TS.MAGMOMS][12:]).all()
        assert TS.GHOST not in a                      # a label nobody has gets no dataset


def test_append_is_atomic_and_adds_new_labels(tmp_path: Path) -> None:
    first = read_cfg(DATA / "mlip3" / "reference" / "li06_input.cfg")
    second = read_cfg(DATA / "mlip3" / "examples" / "preselected.cfg")   # ghost + nbh_grades
    out = tmp_path / "t.h5"
    write_trainingset_h5(out, first, provenance="first batch", species=["Li"])
    write_trainingset_h5(out, second, provenance=["a", "b"], append=True, species=["Li"])
    assert read_trainingset_h5(out) == first + second
    assert read_trainingset_provenance(out) == ["first batch"] * 2 + ["a", "b"]
    assert sorted(os.listdir(tmp_path)) == ["t.h5"]     # no temporary left behind
    # a failing append leaves the file exactly as it was
    before = out.read_bytes()
    with pytest.raises(InputError, match="species"):
        write_trainingset_h5(out, first, append=True, species=["Fe"])
    assert out.read_bytes() == before
    with pytest.raises(InputError, match="provenance"):
        write_trainingset_h5(out, first, provenance=["only one"], append=True)
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["t.h5"]
    # append to a file that does not exist yet creates it
    write_trainingset_h5(tmp_path / "new.h5", first, append=True)
    assert read_trainingset_h5(tmp_path / "new.h5") == first


def test_empty_and_label_free_configurations(tmp_path: Path) -> None:
    bare = Configuration(cell=np.zeros((3, 3)), positions=[[0.0, 0.0, 0.0]], types=[0],
                         pbc=[False] * 3)
    out = tmp_path / "e.h5"
    write_trainingset_h5(out, [])
    assert read_trainingset_h5(out) == []
    write_trainingset_h5(out, [bare], append=True)
    assert read_trainingset_h5(out) == [bare]


def test_version_and_kind_checks(tmp_path: Path) -> None:
    out = tmp_path / "t.h5"
    write_trainingset_h5(out, read_cfg(DATA / "mlip3" / "magnetic" / "al_fe_mag.cfg"))
    with h5py.File(out, "r+") as f:
        f.attrs[schema.SCHEMA_VERSION_ATTR] = schema.SCHEMA_VERSION + 1
    with pytest.raises(InputError, match="schema version") as exc:
        read_trainingset_h5(out)
    assert "t.h5" in str(exc.value)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=[1, 2, 3])
    with pytest.raises(InputError, match="not an mmtp_hpc HDF5 file"):
        read_trainingset_h5(foreign)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_trainingset_h5(text)
    pot_file = tmp_path / "pot.h5"
    write_potential_h5(_level6_potential(), pot_file)
    with pytest.raises(InputError, match="trainingset"):
        read_trainingset_h5(pot_file)
    write_trainingset_h5(out, read_cfg(DATA / "mlip3" / "magnetic" / "al_fe_mag.cfg"))
    with pytest.raises(InputError, match="potential"):
        read_potential_h5(out)


def test_atomic_path_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["x.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["x.txt"]


# --------------------------------------------------------------------------- potentials
def _level6_potential(seed: int = 0) -> MTPPotential:
    """MLIP-3's level-6 tables (templates/06.almtp), two species, magnetic, random coefficients."""
    rng = np.random.default_rng(seed)
    pot = MTPPotential(
        species_count=2, min_dist=2.0, max_dist=5.0, radial_basis_size=8, radial_funcs_count=2,
        alpha_index_basic=[[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]],
        alpha_index_times=[[0, 0, 1, 5], [1, 1, 1, 6], [2, 2, 1, 6], [3, 3, 1, 6], [0, 5, 1, 7]],
        alpha_moment_mapping=[0, 4, 5, 6, 7], alpha_moments_count=8, scaling=0.73,
        magnetic=True, mag_basis_size=3, mag_min=[-3.1, -0.1], mag_max=[3.1, 0.1],
        symmetric=True, potential_name="MTP1m", potential_tag="", species_names=["Fe", "Al"],
        extra={"trained_on": "feal", "weights": [1.0, 0.01, 1e-3], "nested": {"k": None}})
    pot.set_params(rng.normal(size=pot.n_params))
    pot.active_set = bytes(rng.integers(0, 256, size=1000, dtype=np.uint8)) + b"\x00\n#"
    return pot


def _assert_same_potential(a: MTPPotential, b: MTPPotential) -> None:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None, name
            assert x.dtype == y.dtype and np.array_equal(x, y), name
        else:
            assert type(x) is type(y) and x == y, name


def test_potential_round_trip_every_field(tmp_path: Path) -> None:
    pot = _level6_potential()
    out = tmp_path / "pot.h5"
    write_potential_h5(pot, out)
    again = read_potential_h5(out)
    _assert_same_potential(pot, again)
    assert again.active_set == pot.active_set and isinstance(again.active_set, bytes)
    np.testing.assert_array_equal(again.get_params(), pot.get_params())
    with h5py.File(out, "r") as f:
        g = f[schema.Potential.GROUP]
        assert g["mag_min"].attrs[schema.UNITS_ATTR] == "μB"
        assert f.attrs[schema.KIND_ATTR] == schema.KIND_POTENTIAL


def test_untrained_non_magnetic_potential(tmp_path: Path) -> None:
    pot = _level6_potential()
    plain = MTPPotential(
        species_count=1, min_dist=pot.min_dist, max_dist=pot.max_dist, radial_basis_size=8,
        radial_funcs_count=2, alpha_index_basic=pot.alpha_index_basic,
        alpha_index_times=pot.alpha_index_times, alpha_moment_mapping=pot.alpha_moment_mapping,
        alpha_moments_count=8)
    write_potential_h5(plain, tmp_path / "p.h5")
    again = read_potential_h5(tmp_path / "p.h5")
    _assert_same_potential(plain, again)
    assert again.radial_coeffs is None and again.mag_min is None and again.active_set is None


def test_active_set_object_uses_to_bytes(tmp_path: Path) -> None:
    class Block:
        def __init__(self, raw: bytes):
            self.raw = raw

        def to_bytes(self) -> bytes:
            return self.raw

    pot = _level6_potential()
    pot.active_set = Block(b"#MVS_v1.1\nnot really\n")
    write_potential_h5(pot, tmp_path / "p.h5")
    with h5py.File(tmp_path / "p.h5", "r") as f:
        dset = f[schema.Potential.GROUP][schema.Potential.ACTIVE_SET]
        assert dset[...].tobytes() == b"#MVS_v1.1\nnot really\n"
        assert dset.attrs[schema.Potential.ACTIVE_SET_TYPE_ATTR].endswith("Block")
    raw = read_potential_h5(tmp_path / "p.h5", parse_active_set=False)
    assert raw.active_set == b"#MVS_v1.1\nnot really\n"
    pot.active_set = object()
    with pytest.raises(InputError, match="active_set"):
        write_potential_h5(pot, tmp_path / "q.h5")
    pot.active_set = None
    pot.extra = {"bad": (1, 2)}
    with pytest.raises(InputError, match="extra"):
        write_potential_h5(pot, tmp_path / "q.h5")
    assert not (tmp_path / "q.h5").exists()


# --------------------------------------------------------------------------- dispatch and CLI
def test_format_dispatch(tmp_path: Path) -> None:
    assert detect_format("a.cfg") == "cfg" and detect_format("a.XYZ") == "extxyz"
    assert detect_format("a.extxyz") == "extxyz" and detect_format("a.hdf5") == "h5"
    assert detect_format(tmp_path / "POSCAR", reading=False) == "ase:vasp"
    with pytest.raises(InputError) as exc:
        detect_format(tmp_path / "data.unknownext", reading=False)
    assert ".cfg" in str(exc.value) and ".h5" in str(exc.value) and "data.unknownext" in str(exc.value)
    configs = read_cfg(DATA / "mlip3" / "magnetic" / "al_fe_mag.cfg")
    for name in ("x.cfg", "x.xyz", "x.h5"):
        write_configurations(tmp_path / name, configs, species=["Fe", "Al"])
        assert read_configurations(tmp_path / name, species=["Fe", "Al"]) == configs
    got, species = read_configurations_and_species(tmp_path / "x.h5")
    assert species == ["Fe", "Al"] and got == configs
    with pytest.raises(InputError, match="en_der_sign"):
        read_configurations(tmp_path / "x.xyz", en_der_sign=-1)
    # through ASE: a VASP POSCAR keeps the structure
    write_configurations(tmp_path / "POSCAR", configs, species=["Fe", "Al"])
    (poscar,) = read_configurations(tmp_path / "POSCAR", species=["Fe", "Al"])
    np.testing.assert_allclose(poscar.positions, configs[0].positions, atol=1e-12)
    np.testing.assert_array_equal(poscar.types, configs[0].types)


def test_convert_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmtp_hpc.cli import main

    src = DATA / "feal_cdft_sample" / "mtp.cfg"
    h5 = tmp_path / "feal.h5"
    assert main(["convert", str(src), str(h5), "--en-der-sign", "-1", "--species", "Al", "Fe"]) == 0
    out = capsys.readouterr().out
    assert "2 configurations" in out and "32 atoms" in out
    expected = read_cfg(src, en_der_sign=-1)
    assert read_trainingset_h5(h5) == expected
    assert read_trainingset_provenance(h5) == [str(src)] * 2
    xyz = tmp_path / "feal.xyz"
    assert main(["convert", str(h5), str(xyz)]) == 0       # species come from the .h5
    back = tmp_path / "back.cfg"
    assert main(["convert", str(xyz), str(back), "--species", "Al", "Fe"]) == 0
    assert read_cfg(back) == expected
    # errors come back as exit status 1 with the file named
    assert main(["convert", str(back), str(tmp_path / "no_species.xyz")]) == 1
    assert "species" in capsys.readouterr().err
    assert main(["convert", str(back), str(tmp_path / "out.weird")]) == 1
    assert "out.weird" in capsys.readouterr().err
