"""The one settings module (mmtp_hpc.settings) behind mmtp md, mmtp learn and the oracle tables."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from mmtp_hpc.active.dft_abinit import AbinitSettings
from mmtp_hpc.active.dft_vasp import VaspSettings
from mmtp_hpc.active.oracles import oracle_from_settings
from mmtp_hpc.errors import InputError
from mmtp_hpc.settings import (
    Bad,
    build_section,
    failer,
    find_line,
    float_list,
    int_list,
    integer,
    key,
    per_species,
    positive,
    read_toml,
)


@dataclass
class _Demo:
    n: int = key(3, "a count", integer(1))
    x: list = key([1.0], "numbers", float_list("a number", 0.0))
    path: str | None = key(None, "a file", lambda v: v, resolve=True)


def test_checkers_say_what_they_expected_and_got():
    with pytest.raises(Bad, match="expected a positive number, got -2"):
        positive(-2)
    with pytest.raises(Bad, match="expected a finite number, got a string 'x'"):
        positive("x")
    with pytest.raises(Bad, match="3 positive integers"):
        int_list(3, 1)([1, 0, 2])
    assert per_species(positive, "radius")({"Fe": 2, "Al": 1.5}) == {"Fe": 2.0, "Al": 1.5}
    with pytest.raises(Bad, match="Al: expected a positive number"):
        per_species(positive, "radius")({"Fe": 2, "Al": 0})
    with pytest.raises(Bad, match="table"):
        per_species(positive, "path", single=False)(1.0)


def test_build_section_names_file_line_field_and_resolves_paths(tmp_path):
    text = "# demo\n[demo]\nn = 0\n"
    fail = failer("demo.toml", text)
    with pytest.raises(InputError) as info:
        build_section(_Demo, "demo", {"n": 0}, fail)
    err = info.value
    assert (err.path, err.line, err.field) == ("demo.toml", 3, "demo.n")
    assert "expected an integer >= 1, got 0" in str(err)
    with pytest.raises(InputError, match="did you mean 'n'"):
        build_section(_Demo, "demo", {"nn": 1}, fail)
    d = build_section(_Demo, "demo", {"x": 2.5, "path": "a/b.txt"}, fail, base_dir=tmp_path)
    assert d.x == [2.5] and d.path == str(tmp_path / "a" / "b.txt") and d.n == 3


def test_find_line_in_arrays_of_tables():
    text = ("[learn]\nseed = 1\n[[learn.md]]\nname = \"a\"\n[learn.md.md]\nsteps = 1\n"
            "[[learn.md]]\nname = \"b\"\n[learn.md.md]\nsteps = 2\n")
    assert find_line(text, "learn.md.md", "steps", 0, array="learn.md") == 6
    assert find_line(text, "learn.md.md", "steps", 1, array="learn.md") == 10
    assert find_line(text, "learn", "seed") == 2


def test_oracle_tables_are_declared_with_checkers_and_errors_name_the_line(tmp_path):
    """[oracle.abinit]/[oracle.vasp] go through the same declarations as mmtp md and mmtp learn
    inputs: every key has a doc and a checker, and an error in a file names its line."""
    for cls in (AbinitSettings, VaspSettings):
        for f in dataclasses.fields(cls):
            assert f.metadata["doc"] and callable(f.metadata["check"])
    path = tmp_path / "learn.toml"
    path.write_text("[learn]\nspecies = [\"Fe\"]\n\n[oracle]\nkind = \"command\"\nwriter = \"abinit\"\n"
                    "workers = 2\n\n[oracle.abinit]\npseudos = {Fe = \"Fe.xml\"}\necut = -26\n",
                    encoding="utf-8")
    data, text = read_toml(path)
    with pytest.raises(InputError) as info:
        oracle_from_settings(data["oracle"], tmp_path, ["Fe"], source=str(path), text=text)
    err = info.value
    assert (err.line, err.field) == (11, "oracle.abinit.ecut") and "positive" in str(err)
    data["oracle"]["workers"] = 0
    data["oracle"]["abinit"]["ecut"] = 26
    with pytest.raises(InputError) as info:
        oracle_from_settings(data["oracle"], tmp_path, ["Fe"], source=str(path), text=text)
    assert (info.value.line, info.value.field) == (7, "oracle.workers")


def test_vasp_potcars_resolve_against_the_input_file(tmp_path):
    o = oracle_from_settings({"kind": "command", "writer": "vasp", "command": ["vasp"],
                              "vasp": {"rwigs": 1.3, "potcars": {"Fe": "pp/POTCAR_Fe"}}},
                             tmp_path, ["Fe"])
    assert o.writer.settings.potcars == {"Fe": str(tmp_path / "pp" / "POTCAR_Fe")}
