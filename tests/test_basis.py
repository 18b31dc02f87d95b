"""The basis generator reproduces MLIP-3's untrained templates (levels 06..28).

The generated tables may number moments and basis functions differently from MLIP-3,
so "the same basis" is checked as functions: both tables are evaluated on random but
genuine basic moments (M_{μ,a,b,c} = Σ_j w_μj x̂_j^a ŷ_j^b ẑ_j^c for random unit
vectors), and the sorted lists of basis values must agree. Counts (basis functions,
product rows, basic rows, alpha_moments_count) must equal MLIP-3's exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp.basis import MAX_LEVEL, Contraction, generate_basis, new_potential, tensor_level

TEMPLATES = DATA / "mlip3" / "templates"
TEMPLATE_LEVELS = list(range(6, 30, 2))
# spec §2: basis functions / product rows
SPEC_COUNTS = {8: (9, 14), 10: (16, 42), 12: (29, 117), 16: (92, 969), 20: (288, 6349),
               24: (864, 36170), 28: (2445, 180069)}


# --------------------------------------------------------------------------- helpers
def _parse_template(path: Path) -> dict:
    """The basis tables of an MLIP-3 file (mlip_io's reader, or a small regex parser)."""
    try:
        from mmtp_hpc.potentials.mtp.mlip_io import read_mtp
    except ImportError:
        read_mtp = None
    if read_mtp is not None:
        pot = read_mtp(path)
        return {"basic": np.asarray(pot.alpha_index_basic), "times": np.asarray(pot.alpha_index_times),
                "mapping": np.asarray(pot.alpha_moment_mapping), "moments": pot.alpha_moments_count,
                "radial": pot.radial_funcs_count}
    text = re.sub(r"<<<[^\n]*", "", path.read_text())

    def ints(key: str) -> np.ndarray:
        m = re.search(rf"\b{key}\s*=\s*(\{{(?:[^{{}}]|\{{[^{{}}]*\}})*\}})", text)
        return np.array([int(x) for x in re.findall(r"-?\d+", m.group(1))], dtype=np.int64)

    def scalar(key: str) -> int:
        return int(re.search(rf"\b{key}\s*=\s*(\d+)", text).group(1))

    return {"basic": ints("alpha_index_basic").reshape(-1, 4),
            "times": ints("alpha_index_times").reshape(-1, 4),
            "mapping": ints("alpha_moment_mapping"), "moments": scalar("alpha_moments_count"),
            "radial": scalar("radial_funcs_count")}


_TEMPLATE_CACHE: dict[int, dict] = {}


def template(level: int) -> dict:
    if level not in _TEMPLATE_CACHE:
        path = TEMPLATES / f"{level:02d}.almtp"
        if not path.is_file():
            pytest.fail(f"MLIP-3 template not found: {path}")
        _TEMPLATE_CACHE[level] = _parse_template(path)
    return _TEMPLATE_CACHE[level]


def random_neighbourhoods(draws: int, seed: int, n_neigh: int = 7,
                          n_radial: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (draws, N, 3) and radial weights (draws, K, N)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(draws, n_neigh, 3))
    u /= np.linalg.norm(u, axis=2, keepdims=True)
    return u, rng.normal(size=(draws, n_radial, n_neigh))


def basic_values(basic: np.ndarray, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Basic moments (n_basic, draws): M_{μ,a,b,c} = Σ_j w_μj x_j^a y_j^b z_j^c."""
    powers = u[None, :, :, :] ** np.arange(basic[:, 1:].max() + 1)[:, None, None, None]  # (p, D, N, 3)
    mono = powers[basic[:, 1], :, :, 0] * powers[basic[:, 2], :, :, 1] * powers[basic[:, 3], :, :, 2]
    return np.einsum("sdn,sdn->sd", w[:, basic[:, 0], :].transpose(1, 0, 2), mono)


def basis_values(tables: dict, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Basis functions (n_basis, draws) by running the product rows, one dependency depth at a time."""
    basic, times = tables["basic"], tables["times"]
    moments = np.zeros((tables["moments"], u.shape[0]))
    moments[: len(basic)] = basic_values(basic, u, w)
    depth = np.zeros(tables["moments"], dtype=np.int64)
    for i, j, _w, k in times.tolist():
        depth[k] = max(depth[k], depth[i] + 1, depth[j] + 1)
    row_depth = depth[times[:, 3]]
    for d in range(1, int(depth.max(initial=0)) + 1):
        i, j, wt, k = times[row_depth == d].T
        np.add.at(moments, k, wt[:, None] * moments[i] * moments[j])
    return moments[tables["mapping"]]


def generated(level: int) -> dict:
    b = generate_basis(level)
    return {"basic": b.alpha_index_basic, "times": b.alpha_index_times, "mapping": b.alpha_moment_mapping,
            "moments": b.alpha_moments_count, "radial": b.radial_funcs_count}


def graph_values(c: Contraction, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A contraction graph's value per draw from Gram matrices.

    Σ_{j1..jn} Π_p w_{μp,jp} Π_edges (u_jp·u_jq)^e, an independent formula for the same number.
    """
    gram = np.einsum("dai,dbi->dab", u, u)
    letters = "abcd"
    ops, subs = [], []
    for p, (mu, _nu) in enumerate(c.nodes):
        ops.append(w[:, mu, :])
        subs.append("z" + letters[p])
    for p, q, e in c.edges:
        ops.append(gram ** e)
        subs.append("z" + letters[p] + letters[q])
    return np.einsum(",".join(subs) + "->z", *ops)


def full_tensor(mu: int, nu: int, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The full Cartesian tensor Σ_j w_μj u_j⊗…⊗u_j (ν factors) of one draw."""
    t = w[mu].copy()                      # (N,)
    for _ in range(nu):
        t = t[..., None] * u.reshape(u.shape[0], *([1] * (t.ndim - 1)), 3)
    return t.sum(axis=0) if nu else t.sum()


def einsum_value(c: Contraction, u: np.ndarray, w: np.ndarray) -> float:
    """Brute force: contract the full tensors index by index."""
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    subs = [""] * len(c.nodes)
    for p, q, e in c.edges:
        for _ in range(e):
            s = next(letters)
            subs[p] += s
            subs[q] += s
    ops = [full_tensor(mu, nu, u, w) for mu, nu in c.nodes]
    return float(np.einsum(",".join(subs) + "->", *ops, optimize="greedy"))


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# --------------------------------------------------------------------------- counts
@pytest.mark.parametrize("level", sorted(SPEC_COUNTS))
def test_counts_from_spec(level: int) -> None:
    b = generate_basis(level)
    assert (b.n_basis, len(b.alpha_index_times)) == SPEC_COUNTS[level]


@pytest.mark.parametrize("level", TEMPLATE_LEVELS)
def test_counts_equal_mlip3_template(level: int) -> None:
    tpl, b = template(level), generate_basis(level)
    assert len(b.alpha_moment_mapping) == len(tpl["mapping"])
    assert len(b.alpha_index_times) == len(tpl["times"])
    assert len(b.alpha_index_basic) == len(tpl["basic"])
    assert b.alpha_moments_count == tpl["moments"]
    assert b.radial_funcs_count == tpl["radial"]
    # MLIP-3's basic rows, in its order
    np.testing.assert_array_equal(b.alpha_index_basic, tpl["basic"])


@pytest.mark.parametrize("level", TEMPLATE_LEVELS)
def test_levels_of_basis_functions_equal_mlip3(level: int) -> None:
    def levels(t: dict) -> list[int]:
        lev = np.zeros(t["moments"], dtype=np.int64)
        lev[: len(t["basic"])] = 2 + 4 * t["basic"][:, 0] + t["basic"][:, 1:].sum(axis=1)
        for i, j, _w, k in t["times"].tolist():
            lev[k] = lev[i] + lev[j]
        return sorted(lev[t["mapping"]].tolist())

    b = generate_basis(level)
    assert levels(generated(level)) == levels(template(level)) == sorted(b.basis_levels.tolist())
    assert max(b.basis_levels) <= level


# --------------------------------------------------------------------------- same functions
@pytest.mark.parametrize("level", TEMPLATE_LEVELS)
def test_same_basis_functions_as_mlip3(level: int) -> None:
    u, w = random_neighbourhoods(draws=3, seed=level)
    mine = np.sort(basis_values(generated(level), u, w), axis=0)
    theirs = np.sort(basis_values(template(level), u, w), axis=0)
    scale = np.abs(theirs).max(axis=0)
    np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-13 * scale.max())


@pytest.mark.parametrize("level", [2, 4, 12, 20, 28])
def test_basis_values_equal_their_contraction_graphs(level: int) -> None:
    """Every product weight is right: table values equal the graph values elementwise."""
    b = generate_basis(level)
    u, w = random_neighbourhoods(draws=2, seed=100 + level)
    values = basis_values(generated(level), u, w)
    expected = np.array([graph_values(c, u, w) for c in b.contractions])
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-13 * np.abs(expected).max())


def test_contractions_are_distinct_and_complete() -> None:
    b = generate_basis(16)
    assert len(set(b.contractions)) == b.n_basis
    for c in b.contractions:
        assert len(c.nodes) <= 4 and c.level <= 16
        degree = [0] * len(c.nodes)
        for p, q, e in c.edges:
            assert p < q and e > 0
            degree[p] += e
            degree[q] += e
        assert degree == [nu for _mu, nu in c.nodes]


@pytest.mark.parametrize("level", [16, 20])
def test_weights_against_full_tensor_einsum(level: int) -> None:
    """Brute force with full 3^ν tensors for the 3- and 4-tensor basis functions of low rank."""
    b = generate_basis(level)
    u, w = random_neighbourhoods(draws=1, seed=7)
    values = basis_values(generated(level), u, w)[:, 0]
    checked = 0
    for alpha, c in enumerate(b.contractions):
        if len(c.nodes) >= 3 and max(nu for _mu, nu in c.nodes) <= 4:
            ref = einsum_value(c, u[0], w[0])
            assert values[alpha] == pytest.approx(ref, rel=1e-10, abs=1e-12), (alpha, c)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("level", [16, 24])
def test_basis_is_rotation_invariant(level: int) -> None:
    u, w = random_neighbourhoods(draws=2, seed=3)
    rot = random_rotation(11)
    before = basis_values(generated(level), u, w)
    after = basis_values(generated(level), u @ rot.T, w)
    np.testing.assert_allclose(after, before, rtol=1e-9, atol=1e-12 * np.abs(before).max())


def test_intermediates_are_computed_before_use() -> None:
    b = generate_basis(20)
    written = set(range(len(b.alpha_index_basic)))
    last_write: dict[int, int] = {}
    for r, (_i, _j, _w, k) in enumerate(b.alpha_index_times.tolist()):
        last_write[k] = r
    first_read: dict[int, int] = {}
    for r, (i, j, _w, _k) in enumerate(b.alpha_index_times.tolist()):
        for m in (i, j):
            first_read.setdefault(m, r)
    for m, r in first_read.items():
        assert m in written or last_write[m] < r
    assert np.all(b.alpha_index_times[:, 3] >= len(b.alpha_index_basic))
    assert np.all(b.alpha_index_times[:, 2] > 0)


# --------------------------------------------------------------------------- API
@pytest.mark.parametrize("bad", [0, 3, 7, 30, 100, -2, 16.0, "16", True])
def test_bad_levels_raise(bad: object) -> None:
    with pytest.raises(InputError):
        generate_basis(bad)  # type: ignore[arg-type]


def test_small_levels() -> None:
    b2, b4 = generate_basis(2), generate_basis(4)
    assert b2.n_basis == 1 and len(b2.alpha_index_times) == 0 and b2.radial_funcs_count == 1
    assert b4.n_basis == 2 and b4.alpha_index_times.tolist() == [[0, 0, 1, 1]]
    assert tensor_level(0, 0) == 2 and tensor_level(5, 10) == 32
    assert MAX_LEVEL == 28


def test_cached_tables_are_read_only() -> None:
    b = generate_basis(10)
    assert generate_basis(10) is b
    with pytest.raises(ValueError):
        b.alpha_index_times[0, 0] = 5


def test_new_potential_defaults() -> None:
    pot = new_potential(16)
    tpl = template(16)
    assert not pot.magnetic and pot.species_count == 1 and pot.trained
    assert pot.n_basis == len(tpl["mapping"]) and pot.radial_funcs_count == tpl["radial"]
    assert pot.level == 16
    assert (pot.min_dist, pot.max_dist, pot.radial_basis_size) == (2.0, 5.0, 8)
    assert np.all(pot.moment_coeffs == 1e-3)
    pot.alpha_index_times[0, 0] = pot.alpha_index_times[0, 0]  # own, writable copy


def test_new_potential_magnetic_and_species() -> None:
    pot = new_potential(12, species_count=2, mag_basis_size=3, mag_interval=(-3.0, 3.0),
                        species_names=["Fe", "Al"], min_dist=1.5, max_dist=4.5, radial_basis_size=6)
    assert pot.magnetic and pot.global_interval and pot.mag_basis_size == 3
    assert pot.radial_coeffs.shape == (2, 2, 3, 6, 3, 3)
    assert pot.species_names == ["Fe", "Al"]
    per = new_potential(12, species_count=2, mag_basis_size=2, mag_interval=[(-3, 3), (-0.1, 0.1)])
    assert not per.global_interval
    np.testing.assert_array_equal(per.mag_min, [-3, -0.1])
    np.testing.assert_array_equal(per.mag_max, [3, 0.1])
    only_interval = new_potential(8, mag_interval=(-2, 2))
    assert only_interval.magnetic and only_interval.mag_basis_size == 1


def test_new_potential_init_modes() -> None:
    bare = new_potential(10, init="none")
    assert bare.radial_coeffs is None and not bare.trained
    r1 = new_potential(10, species_count=2, init="random", seed=5)
    r2 = new_potential(10, species_count=2, init="random", seed=5)
    r3 = new_potential(10, species_count=2, init="random", seed=6)
    np.testing.assert_array_equal(r1.get_params(), r2.get_params())
    assert not np.array_equal(r1.get_params(), r3.get_params())
    assert np.abs(r1.radial_coeffs).max() <= 0.3


@pytest.mark.parametrize("kwargs", [
    {"mag_basis_size": 2},                                          # magnetic without interval
    {"mag_interval": (3, -3)},                                       # min > max
    {"mag_interval": [(-3, 3)], "species_count": 2},                 # wrong number of intervals
    {"species_names": ["Fe"], "species_count": 2},
    {"species_count": 0},
    {"radial_basis_size": 0},
    {"init": "zeros"},
])
def test_new_potential_errors(kwargs: dict) -> None:
    with pytest.raises(InputError):
        new_potential(8, **kwargs)


# --------------------------------------------------------------------------- CLI
def test_cli_new_potential(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmtp_hpc.cli import main
    from mmtp_hpc.potentials.mtp.mlip_io import read_mtp

    out = tmp_path / "pot.mtp"
    rc = main(["new-potential", "--level", "12", "--species", "2", "--radial-size", "6",
               "--magnetic-size", "2", "--magnetic-interval", "-3", "3", "--rmin", "1.8", "--rcut", "4.8",
               "--species-names", "Fe", "Al", "-o", str(out)])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}: level 12, 2 species, 29 basis functions, 117 products")
    pot = read_mtp(out)
    b = generate_basis(12)
    np.testing.assert_array_equal(pot.alpha_index_times, b.alpha_index_times)
    np.testing.assert_array_equal(pot.alpha_moment_mapping, b.alpha_moment_mapping)
    assert pot.magnetic and pot.mag_basis_size == 2 and pot.species_count == 2
    assert (pot.min_dist, pot.max_dist, pot.radial_basis_size) == (1.8, 4.8, 6)
    np.testing.assert_array_equal(pot.mag_min, [-3, -3])

    out2 = tmp_path / "per.mtp"
    rc = main(["new-potential", "--level", "8", "--species", "2", "--magnetic-size", "2",
               "--species-names", "Fe", "Al", "--species-intervals", "Fe:-3:3", "Al:-0.1:0.1",
               "--init", "random", "--seed", "3", "-o", str(out2)])
    assert rc == 0
    per = read_mtp(out2)
    np.testing.assert_allclose(per.mag_min, [-3, -0.1])
    np.testing.assert_allclose(per.mag_max, [3, 0.1])
    assert per.trained


def test_cli_new_potential_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmtp_hpc.cli import main

    out = tmp_path / "x.mtp"
    assert main(["new-potential", "--level", "13", "-o", str(out)]) == 1
    assert "level" in capsys.readouterr().err
    assert main(["new-potential", "--level", "8", "--species", "2", "--magnetic-size", "2",
                 "--species-intervals", "0:-3:3", "-o", str(out)]) == 1
    assert "species [1]" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- end to end
def test_generated_potential_equals_mlip3_template_potential() -> None:
    """Same energies, forces and ∂E/∂m as the template's tables once ξ is permuted to match."""
    from util import random_configuration

    from mmtp_hpc.potentials.mtp import reference

    level = 12
    u, w = random_neighbourhoods(draws=1, seed=21)
    mine_vals = basis_values(generated(level), u, w)[:, 0]
    tpl_vals = basis_values(template(level), u, w)[:, 0]
    to_tpl = np.empty(len(mine_vals), dtype=np.int64)       # my α -> the template's α
    to_tpl[np.argsort(mine_vals)] = np.argsort(tpl_vals)
    np.testing.assert_allclose(tpl_vals[to_tpl], mine_vals, rtol=1e-10)

    mine = new_potential(level, species_count=2, mag_basis_size=2, mag_interval=(-2.5, 3.0),
                         min_dist=1.6, max_dist=4.2, radial_basis_size=6, init="random", seed=4)
    tpl = template(level)
    ref = mine.copy()
    ref.alpha_index_basic, ref.alpha_index_times = tpl["basic"], tpl["times"]
    ref.alpha_moment_mapping, ref.alpha_moments_count = tpl["mapping"], tpl["moments"]
    ref.moment_coeffs = np.empty_like(mine.moment_coeffs)
    ref.moment_coeffs[to_tpl] = mine.moment_coeffs
    ref.validate()

    cfg = random_configuration(n=6, species=2, seed=3)
    a, b = reference.evaluate(mine, cfg), reference.evaluate(ref, cfg)
    assert a["energy"] == pytest.approx(b["energy"], rel=1e-12)
    np.testing.assert_allclose(a["forces"], b["forces"], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(a["magnetic_gradient"], b["magnetic_gradient"], rtol=1e-9, atol=1e-10)
