"""Extended XYZ (through ASE) ⇄ Configuration: lossless round trips, species, signs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import DATA
from mmtp_hpc.errors import InputError
from mmtp_hpc.io.cfg import read_cfg
from mmtp_hpc.io.extxyz import (atoms_to_configuration, configuration_to_atoms, read_extxyz,
                                read_extxyz_with_species, species_order, write_extxyz)
from mmtp_hpc.system.configuration import Configuration

CFG_FILES = sorted(
    [p for sub in ("magnetic", "reference", "examples") for p in (DATA / "mlip3" / sub).glob("*.cfg")]
    + [DATA / "feal_cdft_sample" / "mtp.cfg"])
FE_GAP = DATA / "fe_gap22"


@pytest.mark.parametrize("path", CFG_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_round_trip_through_extxyz_is_bit_exact(path: Path, tmp_path: Path) -> None:
    configs = read_cfg(path)
    out = tmp_path / "out.extxyz"
    assert write_extxyz(out, configs, ["Fe", "Al"]) == len(configs)
    again, species = read_extxyz_with_species(out, ["Fe", "Al"])
    assert species == ["Fe", "Al"]
    assert again == configs


@pytest.mark.parametrize("path", CFG_FILES[:4], ids=lambda p: p.name)
def test_round_trip_through_ase_atoms(path: Path) -> None:
    for cfg in read_cfg(path):
        atoms = configuration_to_atoms(cfg, ["Li", "Fe"])
        assert atoms_to_configuration(atoms, ["Li", "Fe"]) == cfg


def test_ase_sees_the_labels(tmp_path: Path) -> None:
    import ase.io

    (cfg,) = read_cfg(DATA / "mlip3" / "reference" / "ref_alfe_efs.cfg")
    out = tmp_path / "alfe.xyz"
    write_extxyz(out, cfg, ["Fe", "Al"])
    atoms = ase.io.read(out)
    assert atoms.get_chemical_symbols() == ["Fe"] * 8 + ["Al"] * 4
    assert atoms.get_potential_energy() == cfg.energy
    np.testing.assert_array_equal(atoms.get_forces(), cfg.forces)
    np.testing.assert_array_equal(atoms.get_initial_magnetic_moments(), cfg.magmoms)
    np.testing.assert_array_equal(atoms.arrays["magnetic_gradient"], cfg.magnetic_gradient)
    # ASE stress (eV/Å³, negative under compression) = -virial / V
    np.testing.assert_allclose(atoms.get_stress(voigt=False), -cfg.virial / cfg.volume, rtol=1e-15)
    np.testing.assert_array_equal(atoms.info["virial"], cfg.virial)


def test_species_default_is_first_appearance(tmp_path: Path) -> None:
    (cfg,) = read_cfg(DATA / "mlip3" / "reference" / "ref_alfe_efs.cfg")
    out = tmp_path / "a.xyz"
    write_extxyz(out, cfg, ["Al", "Fe"])             # type 0 written as Al
    again, species = read_extxyz_with_species(out)
    assert species == ["Al", "Fe"]
    assert again[0] == cfg
    swapped = read_extxyz(out, species=["Fe", "Al"])
    np.testing.assert_array_equal(swapped[0].types, 1 - cfg.types)
    with pytest.raises(InputError, match="not in the species list"):
        read_extxyz(out, species=["Fe"])
    with pytest.raises(InputError, match="species"):
        write_extxyz(tmp_path / "b.xyz", cfg, ["Fe"])       # type 1 has no symbol
    with pytest.raises(InputError, match="species"):
        write_extxyz(tmp_path / "b.xyz", cfg, None)  # type: ignore[arg-type]


def test_fe_gap22_files_read() -> None:
    import ase.io

    configs, species = read_extxyz_with_species(FE_GAP / "DB10.xyz")
    assert species == ["Fe"] and len(configs) == 198
    first = configs[0]
    # this data set spells the forces "force" (libAtoms); they must not be lost
    assert first.forces is not None and first.forces[0, 0] == 0.0278172917
    assert first.energy == -6920.8594242112
    assert first.features == {"config_type": "hcp"}
    assert first.virial is None and first.magmoms is None
    db9 = read_extxyz(FE_GAP / "DB9.xyz")
    raw = ase.io.read(FE_GAP / "DB9.xyz", index="0")
    np.testing.assert_array_equal(db9[0].virial, raw.info["virial"])


def test_virial_sign_option_is_explicit() -> None:
    plus = read_extxyz(FE_GAP / "DB9.xyz", virial_sign=+1)
    minus = read_extxyz(FE_GAP / "DB9.xyz", virial_sign=-1)
    for a, b in zip(plus[:20], minus[:20], strict=True):
        np.testing.assert_array_equal(b.virial, -a.virial)
    with pytest.raises(InputError, match="virial_sign"):
        read_extxyz(FE_GAP / "DB9.xyz", virial_sign=0)


def test_stress_is_converted_to_virial(tmp_path: Path) -> None:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms("Fe2", positions=[[0, 0, 0], [1.4, 1.4, 1.4]], cell=np.eye(3) * 2.8, pbc=True)
    stress = np.array([-0.01, -0.02, -0.03, 0.001, 0.002, 0.003])   # Voigt, eV/Å³
    atoms.calc = SinglePointCalculator(atoms, energy=-16.0, stress=stress)
    cfg = atoms_to_configuration(atoms, ["Fe"])
    volume = 2.8 ** 3
    assert cfg.virial[0, 0] == pytest.approx(0.01 * volume)
    assert cfg.virial[1, 2] == cfg.virial[2, 1] == pytest.approx(-0.001 * volume)
    assert cfg.virial[0, 1] == pytest.approx(-0.003 * volume)
    assert np.all(np.diag(cfg.virial) > 0)          # compressed: PlusStress positive


def test_magmom_sources() -> None:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms("Fe2", positions=[[0, 0, 0], [1.4, 1.4, 1.4]], cell=np.eye(3) * 2.8, pbc=True)
    atoms.set_initial_magnetic_moments([3.0, -3.0])
    assert atoms_to_configuration(atoms, ["Fe"]).magmoms.tolist() == [3.0, -3.0]
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, magmoms=np.array([2.2, -2.1]))
    assert atoms_to_configuration(atoms, ["Fe"]).magmoms.tolist() == [2.2, -2.1]
    assert atoms_to_configuration(atoms, ["Fe"], magmom_source="initial_magmoms").magmoms.tolist() \
        == [3.0, -3.0]
    atoms.calc = None
    atoms.set_initial_magnetic_moments(None)
    atoms.set_initial_magnetic_moments(np.ones((2, 3)))
    with pytest.raises(InputError, match="non-collinear"):
        atoms_to_configuration(atoms, ["Fe"])


def test_molecule_partial_pbc_ghost_ids_and_features(tmp_path: Path) -> None:
    cfg = Configuration(cell=np.zeros((3, 3)), positions=[[0.1, 0.2, 0.3], [1.0, 1.1, 1.2]],
                        types=[1, 0], pbc=[False, False, False], ids=[7, 3],
                        nbh_grades=[1.5, 20.0], ghost=[False, True],
                        features={"a": 'quote " and \\ backslash\ttab', "b": ["1", " 2"]})
    slab = Configuration(cell=[[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0]],
                         positions=[[0.1, 0.2, 0.3]], types=[0], pbc=[True, True, False],
                         energy=-3.25, virial=np.diag([1.0, 2.0, 3.0]))
    out = tmp_path / "m.xyz"
    write_extxyz(out, [cfg, slab], ["H", "O"])
    assert read_extxyz(out, ["H", "O"]) == [cfg, slab]


def test_species_order_helper() -> None:
    from ase import Atoms

    frames = [Atoms("AlFe"), Atoms("CoFeAl")]
    assert species_order(frames) == ["Al", "Fe", "Co"]


def test_malformed_extxyz(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\nProperties=species:S:1:pos:R:3\nFe 0 0 0\n")
    with pytest.raises(InputError) as exc:
        read_extxyz(bad)
    assert "bad.xyz" in str(exc.value)
    nan = tmp_path / "nan.xyz"
    nan.write_text("1\nProperties=species:S:1:pos:R:3\nFe nan 0 0\n")
    with pytest.raises(InputError, match="NaN"):
        read_extxyz(nan)
