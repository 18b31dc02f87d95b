"""The mmtp md input format: defaults, validation messages that name file, line, key."""

import dataclasses
import math

import pytest

from mmtp_hpc.dynamics.settings import SECTIONS, describe, load_settings, settings_from_dict
from mmtp_hpc.errors import InputError

MINIMAL = """
[system]
lattice = "bcc"
a = 2.87
repeat = [4, 4, 5]
species = ["Fe"]
magmoms = 2.2

[potential]
file = "pot.mtp"
"""


def write(tmp_path, text):
    path = tmp_path / "input.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_input_and_defaults(tmp_path):
    s = load_settings(write(tmp_path, MINIMAL))
    assert s.system.repeat == [4, 4, 5] and s.system.lattice == "bcc"
    assert s.md.ensemble == "nvt" and s.md.thermostat == "langevin" and s.md.timestep_fs == 1.0
    assert s.moments.mode == "fixed" and s.extrapolation.every == 0
    assert s.output.trajectory == "trajectory.h5" and s.output.checkpoint == "checkpoint.h5"
    assert s.path(s.potential.file) == tmp_path / "pot.mtp"          # relative to the input file
    assert s.initial_temperature == s.md.temperature_K
    d = s.to_dict()
    assert d["extrapolation"]["break"] == 10.0 and set(d) == set(SECTIONS)


def test_every_key_is_documented():
    text = describe()
    for name, cls in SECTIONS.items():
        assert f"[{name}]" in text
        for f in dataclasses.fields(cls):
            assert f.metadata["doc"]
            assert f.metadata.get("toml_name", f.name) in text


@pytest.mark.parametrize("extra,field,words", [
    ("[md]\ntimestp_fs = 1.0\n", "md.timestp_fs",
     ["unknown key 'timestp_fs'", "timestep_fs", "did you mean"]),
    ("[mdd]\nsteps = 1\n", "mdd", ["unknown section [mdd]", "[md]"]),
    ("[md]\nensemble = \"nvp\"\n", "md.ensemble", ["'nve', 'nvt', 'npt'", "'nvp'"]),
    ("[md]\nsteps = 1.5\n", "md.steps", ["expected an integer", "1.5"]),
    ("[md]\ntimestep_fs = -1\n", "md.timestep_fs", ["> 0", "-1"]),
    ("[md]\ntemperature_K = nan\n", "md.temperature_K", ["finite"]),
    ("[md]\nthermostat = \"nose_hoover\"\n", "md.thermostat", ["did you mean 'nose-hoover'"]),
    ("[moments]\nmode = \"flip\"\n", "moments.mode", ["fixed", "relax", "langevin", "mc"]),
    ("[moments]\nbounds = [3, -3]\n", "moments.bounds", ["min < max"]),
    ("[extrapolation]\nevery = 10\nselect = 12.0\n", "extrapolation.select", ["smaller than break"]),
    ("[output]\ntrajectory = \"traj.xyz\"\n", "output.trajectory", [".h5"]),
    ("[output]\nstore = [\"positons\"]\n", "output.store", ["positions"]),
])
def test_bad_values_name_file_line_key(tmp_path, extra, field, words):
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(InputError) as err:
        load_settings(path)
    message = str(err.value)
    assert err.value.field == field
    assert message.startswith(str(path) + ":")
    assert err.value.line is not None and err.value.line > 10       # the offending line, not the header
    for word in words:
        assert word in message, message


def test_cross_checks(tmp_path):
    with pytest.raises(InputError, match="exactly one"):
        settings_from_dict({"system": {"structure": "a.cfg", "lattice": "bcc", "a": 3.0},
                            "potential": {"file": "p.mtp"}})
    with pytest.raises(InputError, match="lattice parameter a"):
        settings_from_dict({"system": {"lattice": "bcc"}, "potential": {"file": "p.mtp"}})
    with pytest.raises(InputError, match="potential file is required"):
        settings_from_dict({"system": {"lattice": "bcc", "a": 2.8}})
    with pytest.raises(InputError, match="add up to 1"):
        settings_from_dict({"system": {"lattice": "b2", "a": 2.9, "species": ["Fe", "Al"],
                                       "composition": {"Fe": 0.7, "Al": 0.2}}, "potential": {"file": "p"}})
    with pytest.raises(InputError, match="not in species"):
        settings_from_dict({"system": {"lattice": "b2", "a": 2.9, "species": ["Fe", "Al"],
                                       "composition": {"Fe": 0.5, "Co": 0.5}}, "potential": {"file": "p"}})
    with pytest.raises(InputError, match="anisotropic"):
        settings_from_dict({"system": {"lattice": "bcc", "a": 2.8}, "potential": {"file": "p"},
                            "md": {"ensemble": "npt", "pressure_GPa": [1.0, 1.0, 2.0]}})
    with pytest.raises(InputError, match="not a chemical symbol"):
        settings_from_dict({"system": {"lattice": "bcc", "a": 2.8, "species": ["Fx"]},
                            "potential": {"file": "p"}})


def test_toml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, MINIMAL + "[md]\nsteps = = 3\n")
    with pytest.raises(InputError) as err:
        load_settings(path)
    assert "TOML syntax error" in str(err.value) and err.value.line == 12


def test_missing_input_file(tmp_path):
    with pytest.raises(InputError, match="input file not found"):
        load_settings(tmp_path / "nope.toml")


def test_values_are_normalised():
    s = settings_from_dict({"system": {"lattice": "BCC", "a": 3, "repeat": 2}, "potential": {"file": "p"},
                            "md": {"thermostat": "CSVR", "pressure_GPa": 1}})
    assert s.system.lattice == "bcc" and s.system.repeat == [2, 2, 2] and s.md.thermostat == "csvr"
    assert isinstance(s.system.a, float) and math.isclose(s.md.pressure_GPa, 1.0)
