"""Neighbour lists against the brute-force reference and ASE: pairs, shifts, distances, updates, scaling."""

from __future__ import annotations

import itertools
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from mmtp_hpc.errors import InputError
from mmtp_hpc.system.neighbors import (
    NeighborList,
    brute_force_neighbors,
    build_neighbor_list,
    find_pairs,
    min_distance,
)

REPO = Path(__file__).resolve().parents[1]

ALL_PBC = list(itertools.product([True, False], repeat=3))


def pair_table(nl: NeighborList) -> list[list[tuple[int, tuple[int, int, int]]]]:
    """Per local atom, sorted (local j, input-relative shift) — the brute force's format."""
    i, j, shift = nl.ijS()
    rows: list[list[tuple[int, tuple[int, int, int]]]] = [[] for _ in range(nl.n_local)]
    for a, b, s in zip(i.tolist(), j.tolist(), shift.tolist(), strict=True):
        rows[a].append((b, tuple(s)))
    return [sorted(r) for r in rows]


def check_invariants(nl: NeighborList) -> None:
    """Layout promises of NeighborList, independent of any reference."""
    n = nl.n_local
    assert nl.positions.dtype == np.float64 and nl.positions.shape == (nl.n_total, 3)
    assert nl.image_of.dtype == np.int64 and nl.shifts.dtype == np.int64
    assert nl.offsets.dtype == np.int64 and nl.neighbors.dtype == np.int64
    assert nl.offsets.shape == (n + 1,) and nl.offsets[0] == 0 and nl.offsets[-1] == nl.n_pairs
    np.testing.assert_array_equal(nl.image_of[:n], np.arange(n))
    assert not nl.shifts[:n].any()
    assert not nl.shifts[:, ~nl.pbc].any()
    np.testing.assert_allclose(nl.positions, nl.positions[nl.image_of] + nl.shifts @ nl.cell,
                               rtol=0, atol=1e-9)
    for i in range(n):
        row = nl.neighbors[nl.offsets[i]:nl.offsets[i + 1]]
        assert np.all(np.diff(row) > 0), f"row {i} not strictly ascending"
        assert i not in row
    if nl.n_pairs:
        assert nl.neighbors.min() >= 0 and nl.neighbors.max() < nl.n_total
        r = nl.pair_distances()
        assert np.all(r > 0) and np.all(r < nl.cutoff + nl.skin)
        np.testing.assert_allclose(r, np.linalg.norm(nl.pair_vectors(), axis=1), rtol=1e-14)


def assert_matches_brute_force(cell, pbc, positions, cutoff: float, skin: float = 0.0) -> NeighborList:
    cell = np.asarray(cell, dtype=float)
    positions = np.asarray(positions, dtype=float)
    nl = build_neighbor_list(cell, pbc, positions, cutoff, skin)
    check_invariants(nl)
    reference = brute_force_neighbors(cell, pbc, positions, cutoff + skin)
    got = pair_table(nl)
    assert got == reference
    # Distances of the same pairs, recomputed from the unwrapped input.
    i, j, shift = nl.ijS()
    expected = np.linalg.norm(positions[j] - positions[i] + shift @ cell, axis=1)
    np.testing.assert_allclose(nl.pair_distances(), expected, rtol=1e-12, atol=1e-12)
    return nl


def random_cell(rng: np.random.Generator, size: float) -> np.ndarray:
    """A skewed but well-conditioned triclinic cell."""
    while True:
        cell = size * (np.eye(3) + 0.45 * rng.uniform(-1, 1, (3, 3)))
        if np.linalg.det(cell) > 0.3 * size ** 3:
            return cell


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pbc", ALL_PBC)
def test_random_triclinic_matches_brute_force(seed: int, pbc: tuple[bool, bool, bool]) -> None:
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, rng.uniform(3.0, 7.0))
    n = int(rng.integers(1, 14))
    # Some atoms outside the cell, to exercise wrapping.
    frac = rng.uniform(-0.6, 1.6, (n, 3))
    cutoff = float(rng.uniform(1.5, 9.0))
    skin = float(rng.choice([0.0, 0.4]))
    assert_matches_brute_force(cell, pbc, frac @ cell, cutoff, skin)


def test_bcc_primitive_cell_counts_shells() -> None:
    a = 2.87
    atoms = bulk("Fe", "bcc", a=a)
    assert len(atoms) == 1
    nl = assert_matches_brute_force(atoms.cell[:], atoms.pbc, atoms.positions, 5.0)
    # All neighbours are images of the one atom.
    assert np.all(nl.image_of[nl.neighbors] == 0)
    shells = a * np.sqrt(np.array([3 / 4, 1, 2, 11 / 4, 3]))
    counts = [int(np.sum(np.isclose(nl.pair_distances(), d))) for d in shells]
    assert counts == [8, 6, 12, 24, 8]
    assert nl.n_pairs == 58 and nl.neighbors_mean == 58.0


def test_cell_with_one_short_vector() -> None:
    rng = np.random.default_rng(7)
    cell = np.array([[2.5, 0.0, 0.0], [0.8, 6.0, 0.0], [0.3, 0.5, 7.0]])
    positions = rng.uniform(0, 1, (4, 3)) @ cell
    nl = assert_matches_brute_force(cell, True, positions, 7.0)
    assert nl.shifts[:, 0].max() >= 3  # several layers along the 2.5 Å vector


def test_cell_much_smaller_than_cutoff_triclinic() -> None:
    cell = np.array([[1.9, 0.0, 0.0], [0.9, 1.7, 0.0], [0.4, 0.6, 2.1]])
    assert_matches_brute_force(cell, True, [[0.1, 0.2, 0.3], [1.0, 0.9, 1.1]], 6.0)


def test_cluster_without_periodicity() -> None:
    rng = np.random.default_rng(3)
    positions = rng.uniform(-4, 9, (25, 3))
    nl = assert_matches_brute_force(np.zeros((3, 3)), False, positions, 4.0)
    assert nl.n_total == nl.n_local
    np.testing.assert_array_equal(nl.positions, positions)


@pytest.mark.parametrize("pbc", [(True, True, False), (True, False, False), (False, True, True)])
def test_mixed_pbc_with_zero_and_tilted_open_rows(pbc: tuple[bool, bool, bool]) -> None:
    rng = np.random.default_rng(11)
    cell = np.array([[3.1, 0.0, 0.0], [0.7, 2.9, 0.0], [1.5, -0.8, 4.0]])
    positions = rng.uniform(-0.3, 1.3, (8, 3)) @ cell
    positions[:, 2] += rng.uniform(-10, 10, 8)  # open directions: atoms anywhere
    nl_tilted = assert_matches_brute_force(cell, pbc, positions, 6.5)
    # The rows of non-periodic directions must not matter, zero included.
    zeroed = cell.copy()
    zeroed[~np.array(pbc)] = 0.0
    nl_zero = assert_matches_brute_force(zeroed, pbc, positions, 6.5)
    assert pair_table(nl_tilted) == pair_table(nl_zero)


def test_vacancies() -> None:
    rng = np.random.default_rng(5)
    atoms = bulk("Fe", "bcc", a=2.8665, cubic=True).repeat((3, 3, 2))
    del atoms[sorted(rng.choice(len(atoms), 5, replace=False).tolist())]
    atoms.rattle(0.05, seed=1)
    nl = assert_matches_brute_force(atoms.cell[:], atoms.pbc, atoms.positions, 5.0)
    assert nl.n_local == len(atoms)


def test_atoms_on_faces_and_outside_cell_are_wrapped() -> None:
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 3.5, 0.0], [0.5, 0.7, 3.8]])
    frac = np.array([
        [0.0, 0.0, 0.0],
        [1.0, 0.5, 0.5],
        [0.5, 1.0, 1.0],
        [0.25, -0.75, 2.5],
        [-1e-17, 0.3, 0.6],
        [3.2, -4.1, 0.9],
    ])
    positions = frac @ cell
    nl = assert_matches_brute_force(cell, True, positions, 5.0)
    wrapped = nl.positions[: nl.n_local] @ np.linalg.inv(cell)
    assert np.all(wrapped > -1e-12) and np.all(wrapped < 1 + 1e-12)
    np.testing.assert_allclose(nl.positions[: nl.n_local], positions + nl.wrap_shifts @ cell, atol=1e-12)


def test_ghosts_lie_in_the_fractional_window() -> None:
    atoms = bulk("Fe", "bcc", a=2.8665, cubic=True).repeat((2, 3, 4))
    atoms.rattle(0.1, seed=2)
    cutoff, skin = 4.5, 0.5
    nl = build_neighbor_list(atoms.cell[:], atoms.pbc, atoms.positions, cutoff, skin)
    cell = atoms.cell[:]
    # d_k = V / |a_l x a_m|
    areas = np.linalg.norm(np.cross(np.roll(cell, -1, 0), np.roll(cell, -2, 0)), axis=1)
    d = abs(np.linalg.det(cell)) / areas
    delta = (cutoff + skin) / d
    frac = nl.positions @ np.linalg.inv(cell)
    assert np.all(frac >= -delta - 1e-8) and np.all(frac < 1 + delta + 1e-8)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (False, False, False)])
def test_matches_ase_neighbor_list(pbc: tuple[bool, bool, bool]) -> None:
    rng = np.random.default_rng(13)
    cell = random_cell(rng, 5.0)
    atoms = Atoms("Fe12", scaled_positions=rng.uniform(0, 1, (12, 3)), cell=cell, pbc=pbc)
    cutoff = 6.0
    i_ase, j_ase, s_ase = neighbor_list("ijS", atoms, cutoff)
    nl = build_neighbor_list(atoms.cell[:], atoms.pbc, atoms.positions, cutoff)
    i, j, s = nl.ijS()
    ours = sorted(zip(i.tolist(), j.tolist(), map(tuple, s.tolist()), strict=True))
    theirs = sorted(zip(i_ase.tolist(), j_ase.tolist(), map(tuple, s_ase.tolist()), strict=True))
    assert ours == theirs


def test_update_positions_matches_rebuild() -> None:
    rng = np.random.default_rng(17)
    atoms = bulk("Fe", "bcc", a=2.8665, cubic=True).repeat((3, 3, 3))
    cell = atoms.cell[:]
    positions = atoms.positions.copy()
    positions[0] = [1e-9, 1.0, 1.0]  # on a face, will drift across it
    cutoff, skin = 5.0, 0.6
    nl = build_neighbor_list(cell, True, positions, cutoff, skin)

    before = nl.positions.copy()
    nl.update_positions(positions)
    np.testing.assert_array_equal(nl.positions, before)  # bit for bit

    moved = positions + rng.uniform(-0.17, 0.17, positions.shape)
    moved[0, 0] = -0.15
    assert nl.max_displacement(moved) < skin / 2
    assert not nl.needs_rebuild(moved)
    nl.update_positions(moved)
    check_invariants_without_radius(nl)

    fresh = build_neighbor_list(cell, True, moved, cutoff)

    def within_cutoff(lst: NeighborList) -> dict:
        i, j, s = lst.ijS()
        r = lst.pair_distances()
        keep = r < cutoff
        return {(a, b, tuple(c)): d for a, b, c, d in
                zip(i[keep].tolist(), j[keep].tolist(), s[keep].tolist(), r[keep].tolist(), strict=True)}

    updated, rebuilt = within_cutoff(nl), within_cutoff(fresh)
    assert updated.keys() == rebuilt.keys()
    keys = sorted(updated)
    np.testing.assert_allclose([updated[k] for k in keys], [rebuilt[k] for k in keys], rtol=1e-12)

    far = moved.copy()
    far[3] = positions[3] + [0.31, 0.0, 0.0]
    assert nl.needs_rebuild(far)
    assert math.isclose(nl.max_displacement(far), np.linalg.norm(far[3] - positions[3]))


def check_invariants_without_radius(nl: NeighborList) -> None:
    """After an update pairs may sit slightly beyond cutoff + skin; the layout must still hold."""
    np.testing.assert_allclose(nl.positions, nl.positions[nl.image_of] + nl.shifts @ nl.cell,
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("second", [[1.0, 1.0, 1.0], [4.0, 1.0, 1.0], [1.0, -3.0, 7.0]])
def test_coincident_atoms_raise(second: list[float]) -> None:
    cell = np.diag([3.0, 4.0, 3.0])
    positions = np.array([[1.0, 1.0, 1.0], second, [2.0, 2.5, 2.0]])
    with pytest.raises(InputError, match="atoms 0 and 1"):
        build_neighbor_list(cell, True, positions, 2.0)


def test_coincident_atoms_raise_without_pbc() -> None:
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="atoms 1 and 2"):
        build_neighbor_list(np.zeros((3, 3)), False, positions, 3.0)


def test_min_distance() -> None:
    positions = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [5.3, 0.0, 0.0]])
    nl = build_neighbor_list(np.zeros((3, 3)), False, positions, 2.0)
    d, i, j = min_distance(nl)
    assert math.isclose(d, 0.3, rel_tol=1e-12) and (i, nl.image_of[j]) == (1, 2)
    atoms = bulk("Fe", "bcc", a=2.87)
    d, i, j = min_distance(build_neighbor_list(atoms.cell[:], True, atoms.positions, 3.0))
    assert math.isclose(d, 2.87 * math.sqrt(3) / 2, rel_tol=1e-12) and i == 0 and j >= 1
    empty = build_neighbor_list(np.zeros((3, 3)), False, positions[:1], 2.0)
    assert min_distance(empty) == (math.inf, -1, -1)


def test_sparse_cluster_and_capacity_retry() -> None:
    # A dense blob plus one far atom: the density guess is far too low, so the
    # search must retry; the huge extent must not blow up the bin grid.
    rng = np.random.default_rng(23)
    blob = rng.uniform(0, 4, (120, 3))
    positions = np.vstack([blob, [[1e6, -1e6, 3e5]]])
    nl = assert_matches_brute_force(np.zeros((3, 3)), False, positions, 3.0)
    assert nl.offsets[-1] - nl.offsets[-2] == 0


def test_coincident_atoms_raise_when_capacity_is_underestimated() -> None:
    rng = np.random.default_rng(29)
    blob = rng.uniform(0, 5, (300, 3))
    positions = np.vstack([blob, [[1e5, 0.0, 0.0]], blob[250:251]])
    with pytest.raises(InputError, match="atoms 250 and 301"):
        build_neighbor_list(np.zeros((3, 3)), False, positions, 3.0)


def test_find_pairs_on_explicit_ghosts() -> None:
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, 0.5]])
    offsets, neighbors = find_pairs(positions, 2, 1.2)
    np.testing.assert_array_equal(offsets, [0, 2, 4])
    np.testing.assert_array_equal(neighbors, [1, 3, 0, 3])


@pytest.mark.parametrize("seed", range(5))
def test_find_pairs_matches_brute_force_on_arbitrary_entries(seed: int) -> None:
    """Locals in a box, further entries (a halo) around and among them: every row ascending and
    exactly the entries with 0 < r < radius (r^2 computed as the kernel does)."""
    rng = np.random.default_rng(seed)
    n_local = int(rng.integers(1, 250))
    n_other = int(rng.integers(0, 400))
    positions = np.vstack([rng.uniform(0.0, 11.0, (n_local, 3)), rng.uniform(-5.0, 16.0, (n_other, 3))])
    positions *= rng.uniform(0.5, 1.5, 3)  # anisotropic boxes
    radius = float(rng.uniform(1.0, 7.0))
    offsets, neighbors = find_pairs(positions, n_local, radius)
    d = positions[None, :, :] - positions[:n_local, None, :]
    r2 = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
    assert offsets.shape == (n_local + 1,) and offsets[0] == 0 and offsets[-1] == len(neighbors)
    for i in range(n_local):
        expected = np.flatnonzero((r2[i] > 0.0) & (r2[i] < radius * radius))
        np.testing.assert_array_equal(neighbors[offsets[i]:offsets[i + 1]], expected)


def test_repeated_builds_of_changing_sizes_are_identical() -> None:
    """Scratch space is reused from one search to the next: results must not depend on what ran before."""
    rng = np.random.default_rng(31)
    systems = []
    for repeat in ((4, 4, 4), (1, 1, 2), (7, 6, 5), (2, 3, 2)):
        atoms = bulk("Fe", "bcc", a=2.8665, cubic=True).repeat(repeat)
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
        systems.append((atoms.cell[:], atoms.positions))
    first = [build_neighbor_list(cell, True, pos, 5.0, 0.3) for cell, pos in systems]
    for k in rng.permutation(len(systems) * 3) % len(systems):
        nl = build_neighbor_list(systems[k][0], True, systems[k][1], 5.0, 0.3)
        np.testing.assert_array_equal(nl.offsets, first[k].offsets)
        np.testing.assert_array_equal(nl.neighbors, first[k].neighbors)
        np.testing.assert_array_equal(nl.positions, first[k].positions)


def test_empty_configuration() -> None:
    nl = build_neighbor_list(np.eye(3) * 3.0, True, np.zeros((0, 3)), 5.0)
    assert nl.n_local == 0 and nl.n_total == 0 and nl.n_pairs == 0 and nl.neighbors_mean == 0.0
    np.testing.assert_array_equal(nl.offsets, [0])


@pytest.mark.parametrize("kwargs, field", [
    ({"cutoff": 0.0}, "cutoff"),
    ({"cutoff": math.nan}, "cutoff"),
    ({"skin": -0.1}, "skin"),
    ({"cell": np.eye(2)}, "cell"),
    ({"cell": [[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]}, "cell"),
    ({"cell": [[1.0, 0, 0], [0, 1.0, 0], [0, 0, math.nan]], "pbc": (True, True, False)}, "cell"),
    ({"cutoff": 50.0, "cell": np.diag([1e-4, 1.0, 1.0])}, "cell"),
    ({"positions": np.zeros((2, 2))}, "positions"),
    ({"positions": [[0.0, 0.0, math.inf]]}, "positions"),
    ({"pbc": (True, False)}, "pbc"),
])
def test_invalid_input(kwargs: dict, field: str) -> None:
    args = {"cell": np.eye(3) * 3.0, "pbc": True, "positions": [[0.0, 0.0, 0.0]], "cutoff": 2.0}
    args.update(kwargs)
    with pytest.raises(InputError) as info:
        build_neighbor_list(**args)
    assert info.value.field == field


def test_pair_count_scales_linearly() -> None:
    """Perfect bcc Fe, cutoff 5 Å: 58 neighbours per atom at every size; timings are printed only."""
    per_atom_us = {}
    for repeat in (5, 10, 20):
        atoms = bulk("Fe", "bcc", a=2.8665, cubic=True).repeat(repeat)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            nl = build_neighbor_list(atoms.cell[:], atoms.pbc, atoms.positions, 5.0)
            times.append(time.perf_counter() - start)
        assert nl.n_pairs == 58 * len(atoms)
        # Ghosts are a surface term: their share shrinks with size.
        assert nl.n_ghosts < 4 * len(atoms)
        per_atom_us[len(atoms)] = 1e6 * float(np.median(times)) / len(atoms)
    print("neighbour-list build, µs/atom (median of 5):",
          ", ".join(f"{n}: {t:.2f}" for n, t in per_atom_us.items()))


@pytest.mark.parametrize("cutoff", [1e6, 1e308])
def test_a_cutoff_far_beyond_the_cell_is_an_error_not_an_overflow(cutoff: float) -> None:
    """Image ranges of a cutoff millions of cells wide would overflow the integer counts (and
    then the ghost buffers): it is refused before any is computed."""
    cell = 2.855 * np.eye(3)
    positions = np.array([[0.0, 0.0, 0.0], [1.4275, 1.4275, 1.4275]])
    with pytest.raises(InputError, match="periodic images"):
        build_neighbor_list(cell, True, positions, cutoff)


def test_a_potential_with_an_absurd_cutoff_is_refused_at_load(tmp_path) -> None:
    """A damaged max_dist (a fuzzed file had 1e308) names the file, line and field."""
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    src = REPO / "inputs" / "potentials" / "al_fe_mag.mtpr"
    text = src.read_text(encoding="latin-1")
    bad = tmp_path / "bad.mtpr"
    bad.write_text(re.sub(r"max_dist = \S+", "max_dist = 1e308", text, count=1), encoding="latin-1")
    with pytest.raises(InputError) as err:
        load_potential(bad)
    assert err.value.field == "max_dist" and err.value.line is not None and "bad.mtpr" in str(err.value)
