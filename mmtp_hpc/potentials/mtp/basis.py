"""MTP basis generator: the tables of MLIP-3's untrained level-L potentials.

This module's single job is to build, for a level L, the tables
``alpha_index_basic``, ``alpha_index_times`` and ``alpha_moment_mapping`` (spec §2)
that define the basis functions B_α of a Moment Tensor Potential, so that
:func:`new_potential` can start a potential without one of MLIP-3's template files.

What is generated
-----------------
A basic moment tensor ``M_{μ,ν} = Σ_j f_μ(r_ij) r̂⊗…⊗r̂`` (ν factors) is symmetric and is
stored by its distinct components, one row ``{μ, a, b, c}`` per monomial
``x̂^a ŷ^b ẑ^c`` (a + b + c = ν). Its level is ``2 + 4μ + ν``; a product's level is the
sum of its factors' levels.

Template L holds one basis function per distinct *complete contraction* of at most
four basic tensors (μ ≤ 5, ν ≤ 10) whose levels add up to at most L. A contraction is
a multigraph: one node per tensor, labelled (μ, ν); an edge of multiplicity e between
two nodes sums e index pairs between them; a node's degree is its ν. There are no
self-loops (a trace of r̂⊗r̂ is 1, so it only repeats a lower tensor), disconnected
graphs (products of scalars) are included, and label-preserving isomorphic graphs are
the same function. This reproduces MLIP-3's templates 06…28 exactly as sets of
functions (tests/test_basis.py compares values numerically).

How each basis function is computed (MLIP-3's scheme, read off its templates)
---------------------------------------------------------------------------------
Every contraction is a short sequence of pairwise contractions, each a group of rows
``{i, j, w, k}`` meaning ``M_k += w·M_i·M_j``:

* 1 tensor: a basic scalar (ν = 0) is used directly.
* 2 tensors: the pair ``[A ×c B]`` (A before B in (μ, ν) order).
* 3 or 4 tensors, "chain": the *outer* tensor O is the one whose removal leaves the
  rest connected (or leaves only scalars), with the fewest indices contracted into the
  rest, then the smallest μ, then ν; the rest is decomposed the same way and O is
  contracted into it: ``[O ×c rest]``.
* 4 tensors, "pair of pairs": when the chain's second outer tensor O₃ would keep more
  free indices (towards O₄) than it contracts with the remaining pair, MLIP-3
  contracts the pairs {O₄, O₃} and {rest} with each other instead; a product of two
  pair scalars without ν = 0 factors is also done this way.

Intermediate tensors keep their free indices in *groups*, one per contributing basic
tensor; each group is symmetric and stored by monomials, and the tensor is stored by
one component per tuple of group monomials, up to the symmetries the contraction
inherits: a pair of two equal tensors is symmetric under swapping its two groups, and
an outer tensor that contracts equally with two swap-symmetric groups keeps that
symmetry. A row's weight w counts the index assignments that give the same pair of
stored components (multinomial coefficients of the summed indices); when both factors
are the same tensor, M_i·M_j and M_j·M_i are one row.

With these rules the counts of basis functions, product rows, basic rows and
``alpha_moments_count`` equal those of every MLIP-3 template 06…28 (level 28: 2445
basis functions, 180069 products). The numbering of moments and basis functions is
this module's own (MLIP-3's order is not reproduced): basic rows in MLIP-3's order
(μ, then ν, then monomial), then intermediate tensors by depth, then basis functions
by number of tensors, level and graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from math import factorial, prod
from typing import NamedTuple

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp.parameters import MTPPotential

__all__ = ["MAX_LEVEL", "BasisTables", "Contraction", "generate_basis", "new_potential", "tensor_level"]

MAX_LEVEL = 28       # highest MLIP-3 template; how MLIP-3 would cap μ, ν above it is unknown
MAX_MU = 5           # radial functions per template: at most 6 (μ = 0..5)
MAX_NU = 10          # highest tensor rank MLIP-3 uses
MAX_TENSORS = 4      # basic tensors per basis function

Label = tuple[int, int]                 # (μ, ν) of a basic tensor
Monomial = tuple[int, int, int]         # (a, b, c): x^a y^b z^c


def tensor_level(mu: int, nu: int) -> int:
    """Level of the basic tensor M_{μ,ν}: 2 + 4μ + ν."""
    return 2 + 4 * mu + nu


class Contraction(NamedTuple):
    """A basis function as a contraction graph.

    ``nodes``: the (μ, ν) labels of its basic tensors, sorted; ``edges``: rows
    (p, q, e), p < q, meaning e indices are summed between tensors p and q.
    """

    nodes: tuple[Label, ...]
    edges: tuple[tuple[int, int, int], ...]

    @property
    def level(self) -> int:
        return sum(tensor_level(mu, nu) for mu, nu in self.nodes)


@dataclass(frozen=True, eq=False)
class BasisTables:
    """The basis of an MTP of one level, in MLIP-3's table form (arrays are read-only)."""

    level: int
    alpha_index_basic: np.ndarray        # (n_basic, 4) int64: μ, a, b, c
    alpha_index_times: np.ndarray        # (n_times, 4) int64: i, j, w, k
    alpha_moment_mapping: np.ndarray     # (n_basis,) int64
    alpha_moments_count: int
    radial_funcs_count: int
    contractions: tuple[Contraction, ...]  # what basis function α computes

    @property
    def n_basis(self) -> int:
        return len(self.alpha_moment_mapping)

    @property
    def basis_levels(self) -> np.ndarray:
        """Level of each basis function."""
        return np.array([c.level for c in self.contractions], dtype=np.int64)


# --------------------------------------------------------------------------- monomials
@cache
def _monomials(degree: int) -> tuple[Monomial, ...]:
    """Monomials of a degree in MLIP-3's order: a descending, then b descending."""
    return tuple((a, b, degree - a - b) for a in range(degree, -1, -1) for b in range(degree - a, -1, -1))


@cache
def _multinomial(m: Monomial) -> int:
    """Number of index sequences (over x, y, z) with the counts ``m``."""
    return factorial(m[0] + m[1] + m[2]) // (factorial(m[0]) * factorial(m[1]) * factorial(m[2]))


def _add(m: Monomial, n: Monomial) -> Monomial:
    return (m[0] + n[0], m[1] + n[1], m[2] + n[2])


_ZERO: Monomial = (0, 0, 0)


# --------------------------------------------------------------------------- stored tensors
class _Stored:
    """How a (basic or intermediate) tensor is stored: index groups and their symmetry.

    ``groups``: sizes of the symmetric index groups; ``perms``: the group permutations
    (identity included) under which the tensor is invariant. One moment is stored per
    orbit of group-monomial tuples; ``reps`` lists one representative per moment.
    """

    __slots__ = ("groups", "perms", "reps", "_index", "offset")

    def __init__(self, groups: Sequence[int], perms: Sequence[tuple[int, ...]]):
        self.groups = tuple(groups)
        self.perms = tuple(sorted(set(perms)))
        self._index: dict[tuple[Monomial, ...], int] = {}
        self.reps: list[tuple[Monomial, ...]] = []
        self.offset = -1
        for tup in itertools.product(*(_monomials(s) for s in self.groups)):
            can = self._canonical(tup)
            if can not in self._index:
                self._index[can] = len(self.reps)
                self.reps.append(can)

    def _canonical(self, tup: tuple[Monomial, ...]) -> tuple[Monomial, ...]:
        if len(self.perms) == 1:
            return tup
        return min(tuple(tup[p[i]] for i in range(len(tup))) for p in self.perms)

    def index(self, tup: tuple[Monomial, ...]) -> int:
        """Local moment index of the component with these group monomials."""
        return self._index[self._canonical(tup)]


_IDENTITY = {n: tuple(range(n)) for n in range(4)}


def _contract(x: _Stored, y: _Stored, n: Sequence[Sequence[int]],
              result: _Stored) -> list[tuple[int, int, int, int]]:
    """Rows (i, j, w, k) in local indices for ``result = contraction of x and y``.

    ``n[g][h]`` indices are summed between group g of x and group h of y. The result's
    groups are x's groups that keep free indices, then y's, in order.
    """
    free_x = [s - sum(n[g]) if n else s for g, s in enumerate(x.groups)]
    free_y = [s - sum(n[g][h] for g in range(len(x.groups))) if n else s for h, s in enumerate(y.groups)]
    summed = [(g, h, n[g][h]) for g in range(len(x.groups)) for h in range(len(y.groups)) if n and n[g][h]]
    choices = list(itertools.product(*(_monomials(c) for _g, _h, c in summed)))
    weights = [prod(_multinomial(m) for m in ch) for ch in choices]
    same = x is y
    rows: list[tuple[int, int, int, int]] = []
    for k, rep in enumerate(result.reps):
        it = iter(rep)
        xm0 = [next(it) if f > 0 else _ZERO for f in free_x]
        ym0 = [next(it) if f > 0 else _ZERO for f in free_y]
        acc: dict[tuple[int, int], int] = {}
        for ch, w in zip(choices, weights, strict=True):
            xm, ym = list(xm0), list(ym0)
            for (g, h, _c), m in zip(summed, ch, strict=True):
                xm[g] = _add(xm[g], m)
                ym[h] = _add(ym[h], m)
            i, j = x.index(tuple(xm)), y.index(tuple(ym))
            if same and j < i:  # M_i·M_j and M_j·M_i are the same product
                i, j = j, i
            acc[(i, j)] = acc.get((i, j), 0) + w
        rows.extend((i, j, w, k) for (i, j), w in acc.items())
    return rows


# --------------------------------------------------------------------------- graphs
class _Graph:
    """A contraction graph being decomposed: node labels and edge multiplicities."""

    def __init__(self, contraction: Contraction):
        self.labels = list(contraction.nodes)
        n = len(self.labels)
        self.e = [[0] * n for _ in range(n)]
        for p, q, m in contraction.edges:
            self.e[p][q] = self.e[q][p] = m

    def inside(self, v: int, nodes: Sequence[int]) -> int:
        """Indices of v contracted with the other nodes of ``nodes``."""
        return sum(self.e[v][q] for q in nodes if q != v)

    def free(self, v: int, nodes: Sequence[int]) -> int:
        """Indices of v not contracted inside ``nodes``."""
        return self.labels[v][1] - self.inside(v, nodes)

    def components(self, nodes: Sequence[int]) -> list[list[int]]:
        left, out = list(nodes), []
        while left:
            comp, stack = [], [left.pop(0)]
            while stack:
                v = stack.pop()
                comp.append(v)
                for q in list(left):
                    if self.e[v][q]:
                        left.remove(q)
                        stack.append(q)
            out.append(sorted(comp))
        return out

    def outer(self, nodes: Sequence[int]) -> int:
        """The tensor MLIP-3 contracts last into the rest of ``nodes``."""
        def removable(v: int) -> bool:
            rest = [q for q in nodes if q != v]
            return len(self.components(rest)) == 1 or all(self.free(q, rest) == 0 for q in rest)
        cands = [v for v in nodes if removable(v)]
        return min(cands, key=lambda v: (self.inside(v, nodes), self.labels[v][0], self.labels[v][1], v))


def _edge_assignments(degrees: Sequence[int]) -> list[tuple[int, ...]]:
    """All edge multiplicities (over the node pairs, in combinations order) giving these degrees."""
    n = len(degrees)
    pairs = list(itertools.combinations(range(n), 2))
    last_use = {v: max((t for t, pq in enumerate(pairs) if v in pq), default=-1) for v in range(n)}
    out: list[tuple[int, ...]] = []

    def rec(t: int, left: list[int], edges: list[int]) -> None:
        if t == len(pairs):
            if not any(left):
                out.append(tuple(edges))
            return
        p, q = pairs[t]
        for m in range(min(left[p], left[q]) + 1):
            left[p] -= m
            left[q] -= m
            if not (left[p] and last_use[p] == t):  # p has no later pair to use its indices
                rec(t + 1, left, edges + [m])
            left[p] += m
            left[q] += m

    if n == 1:
        return [()] if degrees[0] == 0 else []
    rec(0, list(degrees), [])
    return out


def _contractions(level: int) -> list[Contraction]:
    """Every distinct complete contraction of ≤ 4 basic tensors with total level ≤ ``level``."""
    labels = sorted((mu, nu) for mu in range(MAX_MU + 1) for nu in range(MAX_NU + 1)
                    if tensor_level(mu, nu) <= level)
    found: set[Contraction] = set()
    for n in range(1, MAX_TENSORS + 1):
        pairs = list(itertools.combinations(range(n), 2))
        for combo in itertools.combinations_with_replacement(labels, n):
            if sum(tensor_level(*lab) for lab in combo) > level or sum(nu for _mu, nu in combo) % 2:
                continue
            # relabellings that keep the (sorted) labels in place: permutations within equal labels
            perms = [p for p in itertools.permutations(range(n))
                     if all(combo[p[i]] == combo[i] for i in range(n))]
            for edges in _edge_assignments([nu for _mu, nu in combo]):
                mult = dict(zip(pairs, edges, strict=True))
                canon = min(tuple(mult[tuple(sorted((p[a], p[b])))] for a, b in pairs) for p in perms)
                kept = tuple((a, b, m) for (a, b), m in zip(pairs, canon, strict=True) if m)
                found.add(Contraction(tuple(combo), kept))
    return sorted(found, key=lambda c: (len(c.nodes), c.level, c.nodes, c.edges))


# --------------------------------------------------------------------------- decomposition
class _Builder:
    """Decomposes contraction graphs into MLIP-3's pairwise steps, sharing intermediates.

    Keys: ("basic", label), ("pair", A, B, c), ("outer", O, inner_key, pattern) and
    ("pp", key1, key2, n) for a contraction of two pair tensors (n = summed indices
    between their groups; empty for a product of two pair scalars).
    """

    def __init__(self) -> None:
        self.stored: dict[tuple, _Stored] = {}
        self.depth: dict[tuple, int] = {}
        self.order: list[tuple] = []

    def _add(self, key: tuple, stored_fn, depth: int) -> None:
        if key not in self.stored:
            self.stored[key] = stored_fn()
            self.depth[key] = depth
            self.order.append(key)

    def basic(self, label: Label) -> tuple:
        key = ("basic", label)
        nu = label[1]
        self._add(key, lambda: _Stored((nu,) if nu else (), [_IDENTITY[1 if nu else 0]]), 0)
        return key

    def decompose(self, g: _Graph, nodes: tuple[int, ...]) -> tuple[tuple, list[int]]:
        """Key of the tensor contracting ``nodes`` and, per stored group, the node owning it."""
        lab = g.labels
        if len(nodes) == 1:
            v = nodes[0]
            return self.basic(lab[v]), ([v] if lab[v][1] else [])
        if len(nodes) == 2:
            p, q = sorted(nodes, key=lambda v: (lab[v], v))
            c = g.e[p][q]
            fp, fq = lab[p][1] - c, lab[q][1] - c
            self.basic(lab[p])
            self.basic(lab[q])
            groups = [f for f in (fp, fq) if f]
            perms = [_IDENTITY[len(groups)]]
            if lab[p] == lab[q] and len(groups) == 2:
                perms.append((1, 0))  # a pair of equal tensors: the two groups commute
            key = ("pair", lab[p], lab[q], c)
            self._add(key, lambda: _Stored(groups, perms), 1)
            return key, [v for v, f in ((p, fp), (q, fq)) if f]
        comps = g.components(nodes)
        if (len(nodes) == 4 and len(comps) == 2 and all(len(cm) == 2 for cm in comps)
                and all(lab[v][1] for v in nodes)):
            return self._pair_of_pairs(g, tuple(comps[0]), tuple(comps[1])), []
        v = g.outer(nodes)
        rest = tuple(q for q in nodes if q != v)
        if len(nodes) == 4 and len(comps) == 1:
            o3 = g.outer(rest)
            pair = tuple(q for q in rest if q != o3)
            if g.e[o3][v] > g.inside(o3, rest):
                return self._pair_of_pairs(g, tuple(sorted((v, o3))), pair), []
        return self._outer(g, v, rest, nodes)

    def _outer(self, g: _Graph, v: int, rest: tuple[int, ...],
               nodes: tuple[int, ...]) -> tuple[tuple, list[int]]:
        self.basic(g.labels[v])
        ikey, owners = self.decompose(g, rest)
        inner = self.stored[ikey]
        pattern = tuple(g.e[v][o] for o in owners)
        # equivalent patterns under the inner tensor's symmetry give the same tensor: keep the smallest
        pattern, perm = min((tuple(pattern[p[i]] for i in range(len(p))), p) for p in inner.perms)
        owners = [owners[perm[i]] for i in range(len(perm))]
        fv = g.free(v, nodes)
        keep = [h for h in range(len(pattern)) if inner.groups[h] - pattern[h] > 0]
        key = ("outer", g.labels[v], ikey, pattern)

        def stored() -> _Stored:
            groups = ([fv] if fv else []) + [inner.groups[h] - pattern[h] for h in keep]
            off = 1 if fv else 0
            perms = [tuple(range(off)) + tuple(off + keep.index(p[h]) for h in keep)
                     for p in inner.perms if tuple(pattern[p[i]] for i in range(len(p))) == pattern]
            return _Stored(groups, perms)

        self._add(key, stored, self.depth[ikey] + 1)
        return key, ([v] if fv else []) + [owners[h] for h in keep]

    def _pair_of_pairs(self, g: _Graph, a: tuple[int, ...], b: tuple[int, ...]) -> tuple:
        k1, o1 = self.decompose(g, a)
        k2, o2 = self.decompose(g, b)
        if repr(k2) < repr(k1):  # one orientation per pair of pairs
            k1, o1, k2, o2 = k2, o2, k1, o1
        s1, s2 = self.stored[k1], self.stored[k2]
        n = [[g.e[x][y] for y in o2] for x in o1]
        # the same contraction written through the factors' symmetries (and, for equal
        # factors, with the factors swapped): keep the smallest summation matrix
        options = []
        for p1 in s1.perms:
            for p2 in s2.perms:
                nn = tuple(tuple(n[p1[i]][p2[j]] for j in range(len(o2))) for i in range(len(o1)))
                options.append(nn)
                if k1 == k2:
                    options.append(tuple(zip(*nn, strict=True)))
        key = ("pp", k1, k2, min(options))
        self._add(key, lambda: _Stored((), [()]), max(self.depth[k1], self.depth[k2]) + 1)
        return key

    def factors(self, key: tuple) -> tuple[_Stored, _Stored, list[list[int]]]:
        """The two tensors an intermediate contracts, and the indices summed between their groups."""
        kind = key[0]
        if kind == "pair":
            x, y = self.stored[("basic", key[1])], self.stored[("basic", key[2])]
            return x, y, ([[key[3]]] if x.groups and y.groups else [])
        if kind == "outer":
            x, y = self.stored[("basic", key[1])], self.stored[key[2]]
            return x, y, ([list(key[3])] if x.groups else [])
        return self.stored[key[1]], self.stored[key[2]], [list(r) for r in key[3]]


# --------------------------------------------------------------------------- public API
def _check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise InputError(f"level must be an even integer, got {level!r}", field="level")
    level = int(level)
    if level < 2 or level > MAX_LEVEL or level % 2:
        raise InputError(f"level must be even and between 2 and {MAX_LEVEL}, got {level}", field="level")
    return level


def generate_basis(level: int) -> BasisTables:
    """The basis tables of MLIP-3's level-``level`` template (even level, 2…28).

    Results are cached per level; the returned arrays are read-only (copy them to modify).
    """
    return _generate(_check_level(level))


@lru_cache(maxsize=32)  # one entry per level
def _generate(level: int) -> BasisTables:
    contractions = _contractions(level)
    builder = _Builder()
    finals = []
    for c in contractions:
        g = _Graph(c)
        key, owners = builder.decompose(g, tuple(range(len(c.nodes))))
        assert not owners, "a basis function must be a scalar"
        finals.append(key)
    if len(set(finals)) != len(finals):  # would mean two graphs computed as one function
        raise AssertionError("basis generator produced the same moment for two contractions")

    # moments: basic rows in MLIP-3's order, then intermediates by depth (inputs first)
    basics = sorted(k[1] for k in builder.order if k[0] == "basic")
    basic_rows = []
    for mu, nu in basics:
        builder.stored[("basic", (mu, nu))].offset = len(basic_rows)
        basic_rows.extend((mu, *m) for m in _monomials(nu))
    count = len(basic_rows)
    inter = sorted((k for k in builder.order if k[0] != "basic"), key=lambda k: builder.depth[k])
    for key in inter:
        builder.stored[key].offset = count
        count += len(builder.stored[key].reps)

    times: list[tuple[int, int, int, int]] = []
    for key in inter:
        x, y, n = builder.factors(key)
        out = builder.stored[key]
        times.extend((x.offset + i, y.offset + j, w, out.offset + k)
                     for i, j, w, k in _contract(x, y, n, out))

    mapping = [builder.stored[k].offset for k in finals]
    radial = max(mu for mu, _nu in basics) + 1

    def frozen(a: list, shape: tuple[int, ...]) -> np.ndarray:
        arr = np.array(a, dtype=np.int64).reshape(shape)
        arr.setflags(write=False)
        return arr

    return BasisTables(level=level,
                       alpha_index_basic=frozen(basic_rows, (-1, 4)),
                       alpha_index_times=frozen(times, (-1, 4)),
                       alpha_moment_mapping=frozen(mapping, (-1,)),
                       alpha_moments_count=count, radial_funcs_count=radial,
                       contractions=tuple(contractions))


def _intervals(mag_interval: object, species_count: int) -> tuple[np.ndarray, np.ndarray]:
    """(mag_min, mag_max) per species from a global (min, max) or one pair per species."""
    try:
        arr = np.asarray(mag_interval, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"magnetic interval must be (min, max) or one (min, max) per species, "
                         f"got {mag_interval!r}", field="mag_interval") from None
    if arr.shape == (2,):
        arr = np.tile(arr, (species_count, 1))
    if arr.shape != (species_count, 2):
        raise InputError(f"magnetic interval must be (min, max) or {species_count} pairs (one per "
                         f"species), got shape {arr.shape}", field="mag_interval")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 1] <= arr[:, 0]):
        raise InputError(f"magnetic interval needs finite min < max, got {arr.tolist()}",
                         field="mag_interval")
    return arr[:, 0].copy(), arr[:, 1].copy()


def new_potential(level: int, species_count: int = 1, radial_basis_size: int = 8, mag_basis_size: int = 1,
                  mag_interval: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
                  min_dist: float = 2.0, max_dist: float = 5.0, species_names: Sequence[str] | None = None,
                  init: str = "default", seed: int = 0) -> MTPPotential:
    """A new (untrained) potential with MLIP-3's level-``level`` basis.

    The potential is magnetic when ``mag_basis_size > 1`` or ``mag_interval`` is given;
    ``mag_interval`` is one (min, max) in μB for all species (MLIP-3) or one pair per
    species (spec §2). ``init``: ``"default"`` sets MLIP-3's untrained defaults
    (:meth:`MTPPotential.init_default_params`), ``"none"`` leaves the coefficients unset
    (a template), ``"random"`` draws random coefficients from ``seed`` (radial
    U(−0.3, 0.3), species U(−1, 1), moment N(0, 0.1²)) — for tests.
    """
    tables = generate_basis(level)
    for name, value, low in (("species_count", species_count, 1), ("radial_basis_size", radial_basis_size, 1),
                             ("mag_basis_size", mag_basis_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}", field=name)
    if init not in ("default", "none", "random"):
        raise InputError(f"init must be 'default', 'none' or 'random', got {init!r}", field="init")
    if species_names is not None:
        species_names = [str(s) for s in species_names]
        if len(species_names) != species_count:
            raise InputError(f"{len(species_names)} species names for {species_count} species",
                             field="species_names")
    magnetic = mag_basis_size > 1 or mag_interval is not None
    mag_min = mag_max = None
    if magnetic:
        if mag_interval is None:
            raise InputError("a magnetic basis (mag_basis_size > 1) needs a magnetic interval "
                             "(mag_interval)", field="mag_interval")
        mag_min, mag_max = _intervals(mag_interval, int(species_count))
    pot = MTPPotential(
        species_count=int(species_count), min_dist=float(min_dist), max_dist=float(max_dist),
        radial_basis_size=int(radial_basis_size), radial_funcs_count=tables.radial_funcs_count,
        alpha_index_basic=tables.alpha_index_basic.copy(), alpha_index_times=tables.alpha_index_times.copy(),
        alpha_moment_mapping=tables.alpha_moment_mapping.copy(),
        alpha_moments_count=tables.alpha_moments_count,
        magnetic=magnetic, mag_basis_size=int(mag_basis_size), mag_min=mag_min, mag_max=mag_max,
        species_names=species_names)
    if init == "default":
        pot.init_default_params()
    elif init == "random":
        rng = np.random.default_rng(seed)
        pot.radial_coeffs = rng.uniform(-0.3, 0.3, size=pot.radial_shape)
        pot.species_coeffs = rng.uniform(-1.0, 1.0, size=pot.species_count)
        pot.moment_coeffs = rng.normal(scale=0.1, size=pot.n_basis)
    return pot
