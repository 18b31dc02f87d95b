"""Bad input stops `mmtp md` before step 0 with a message that says what and where."""

import numpy as np
import pytest
from md_potential import md_settings

from mmtp_hpc.cli import main
from mmtp_hpc.dynamics import Simulation
from mmtp_hpc.errors import InputError
from mmtp_hpc.io.cfg import write_cfg
from mmtp_hpc.system.configuration import Configuration
from mmtp_hpc.system.lattice import bulk


def structure(tmp_path, cfg, name="start.cfg"):
    path = tmp_path / name
    write_cfg(path, [cfg])
    return path


def build(pot, tmp_path, **kw):
    return Simulation.from_settings(md_settings(pot, tmp_path, **kw), stream=None)


def test_missing_potential_file(fe_potential, tmp_path):
    with pytest.raises(InputError, match="potential file not found") as err:
        build(fe_potential, tmp_path, potential={"file": "nowhere.mtp"})
    assert "nowhere.mtp" in str(err.value)


def test_missing_structure_file(fe_potential, tmp_path):
    with pytest.raises(InputError, match="structure file not found"):
        build(fe_potential, tmp_path, system={"structure": "missing.cfg", "species": ["Fe"], "magmoms": 2.2})


def test_species_that_do_not_fit_the_potential(fe_potential, tmp_path):
    with pytest.raises(InputError, match="only 1"):
        build(fe_potential, tmp_path, system=fe_potential.system(2, species=["Fe", "Al"]))
    with pytest.raises(InputError, match="do not match the potential's species"):
        build(fe_potential, tmp_path, system=fe_potential.system(2, species=["Co"]))
    cfg = bulk("b2", 2.9, 2, sublattice_types=(0, 1), magmoms=2.0)
    path = structure(tmp_path, cfg)
    with pytest.raises(InputError, match="atom types up to 1"):
        build(fe_potential, tmp_path, system={"structure": str(path), "species": ["Fe"]})


def test_atoms_too_close(fe_potential, tmp_path):
    cfg = bulk("bcc", 2.87, 2, magmoms=2.2)
    cfg.positions[5] = cfg.positions[0] + [0.3, 0.0, 0.0]
    path = structure(tmp_path, cfg)
    with pytest.raises(InputError, match=r"atoms 1 and 6 are 0\.300 Å apart \(less than 0\.5 Å\)"):
        build(fe_potential, tmp_path, system={"structure": str(path), "species": ["Fe"]})


def test_atoms_too_close_through_periodicity(fe_potential, tmp_path):
    cfg = Configuration(cell=np.eye(3) * 6.0, positions=[[0.1, 0.0, 0.0], [5.8, 0.0, 0.0]], types=[0, 0],
                        magmoms=[2.0, 2.0])
    path = structure(tmp_path, cfg)
    with pytest.raises(InputError, match="0.300 Å apart"):
        build(fe_potential, tmp_path, system={"structure": str(path), "species": ["Fe"]})


def test_nan_in_structure(fe_potential, tmp_path):
    cfg = bulk("bcc", 2.87, 2, magmoms=2.2)
    path = tmp_path / "nan.cfg"
    write_cfg(path, [cfg])
    text = path.read_text().splitlines()
    # replace the x coordinate of atom 3 by nan
    for k, line in enumerate(text):
        parts = line.split()
        if len(parts) > 4 and parts[0] == "3" and parts[1] == "0":
            parts[2] = "nan"
            text[k] = " ".join(parts)
            break
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match="cartes_x: value 'nan' is not a finite number") as err:
        build(fe_potential, tmp_path, system={"structure": str(path), "species": ["Fe"]})
    assert str(err.value).startswith(f"{path}:")


def test_nan_moment_from_structure(fe_potential, tmp_path):
    cfg = bulk("bcc", 2.87, 2, magmoms=2.2)
    cfg.magmoms[2] = np.nan
    path = structure(tmp_path, cfg)
    with pytest.raises(InputError, match="magmom_x: value 'nan' is not a finite number"):
        build(fe_potential, tmp_path, system={"structure": str(path), "species": ["Fe"]})
    # NaN moments given directly (Python API) are caught by the driver's own check
    from mmtp_hpc.dynamics.setup import check_configuration
    with pytest.raises(InputError, match="non-finite moment"):
        check_configuration(cfg, "start")


def test_magnetic_potential_needs_moments(fe_potential, tmp_path):
    cfg = bulk("bcc", 2.87, 2)
    path = structure(tmp_path, cfg)
    with pytest.raises(InputError, match="magnetic but the structure has no moments"):
        build(fe_potential, tmp_path, system={"structure": str(path), "species": ["Fe"]})


def test_moment_dynamics_needs_magnetic_potential(tmp_path, shared_data):
    from md_potential import MDPotential

    pot = MDPotential(shared_data / "mlip3/examples/04_pot.almtp", ["Mo"], "bcc", 3.15, 0.0)
    with pytest.raises(InputError, match="needs a magnetic potential"):
        build(pot, tmp_path, moments={"mode": "mc"})
    # fixed moments with a non-magnetic potential are fine
    sim = build(pot, tmp_path, md={"steps": 5})
    sim.run()
    assert np.all(sim.state.magmoms == 0.0)


def test_initial_moments_outside_bounds(fe_potential, tmp_path):
    with pytest.raises(InputError, match="outside"):
        build(fe_potential, tmp_path, system=fe_potential.system(2, magmoms=4.5),
              moments={"mode": "langevin"})
    with pytest.raises(InputError, match="2 \\[min, max\\] pairs for 1 species"):
        build(fe_potential, tmp_path, moments={"mode": "langevin", "bounds": [[0, 3], [-1, 1]]})


def test_cli_reports_error_and_writes_nothing(fe_potential, tmp_path, capsys):
    path = tmp_path / "input.toml"
    path.write_text(f"""
[system]
lattice = "bcc"
a = 2.87
repeat = 2
species = ["Fe", "Al"]
magmoms = 2.2

[potential]
file = "{fe_potential.path}"
""", encoding="utf-8")
    assert main(["md", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmtp md: error:") and "system.species" in err
    assert not (tmp_path / "trajectory.h5").exists() and not (tmp_path / "checkpoint.h5").exists()


def test_help_input_lists_every_section(capsys):
    assert main(["md", "--help-input"]) == 0
    out = capsys.readouterr().out
    for section in ("[system]", "[potential]", "[md]", "[moments]", "[extrapolation]", "[output]"):
        assert section in out
    assert "mc_flip_fraction" in out and "barostat_damping_fs" in out


def test_composition_substitution(tmp_path):
    """Random substitution gives exact counts, reproducibly from the seed."""
    from md_potential import MDPotential, write_model_potential

    path = write_model_potential(tmp_path / "feal.mtp", ("Fe", "Al"))
    pot = MDPotential(path, ["Fe", "Al"], "bcc", 2.87, 2.0)
    system = pot.system(4, composition={"Fe": 0.75, "Al": 0.25}, magmoms=[2.2, 0.0])
    a = build(pot, tmp_path, system=system)
    b = build(pot, tmp_path, system=system)
    assert np.array_equal(a.state.types, b.state.types)
    assert np.bincount(a.state.types).tolist() == [96, 32]
    assert np.allclose(a.state.magmoms[a.state.types == 1], 0.0)
    assert np.allclose(a.state.masses[a.state.types == 1], 26.9815385)
    c = build(pot, tmp_path, system=system, md={"seed": 12})
    assert not np.array_equal(a.state.types, c.state.types)
