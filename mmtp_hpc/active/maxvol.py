"""MaxVol selection of the active set (spec §5) and building MLIP-3's ``#MVS_v1.1`` block.

Rows: ``b = ∂E/∂θ / N`` per configuration (``mode="cfg"``) or ``b_i = ∂E_i/∂θ`` per
neighbourhood (``mode="nbh"``, MLIP-3's default with ``site_en_weight 1``), over all n
parameters; atoms marked ``ghost`` (neighbours only, in clusters cut out of a large
configuration) have no row and do not count in N. The active set A (n × n) starts as
1e-6·I. While some row of the pool has ``max |B A⁻¹| > threshold`` the row/column pair
with the largest entry is swapped in, which multiplies |det A| by that entry, and A⁻¹ and
C = B A⁻¹ are updated by Sherman–Morrison (Goreinov et al., "How to find a good
submatrix", 2010)::

    C ← C − C[:, j] ⊗ (C[i] − e_j) / C[i, j]     A⁻¹ ← A⁻¹ − A⁻¹[:, j] ⊗ (C[i] − e_j) / C[i, j]

The pool is the candidate rows *and* the rows the active set started with (the 1e-6·e_j
rows, or the rows of a given set that are not among the candidates): a row swapped out
stays a candidate, as in MLIP-3. Where the rows do not span all n directions this matters:
the initial rows that fill the remaining directions are then chosen for volume too, and
the active set of MLIP-3's worked example (``04_pot.almtp`` over ``train.cfg``) is
reproduced exactly (without it our volume was 0.85× MLIP-3's there).

Ties (entries equal to 1e-10 relative) go to the row listed first, so that exact
duplicates never compete and a caller decides who wins by the order of the rows.

The grade of a row is ``max_j |(b A⁻¹)_j|``; after selection every row of the pool has
grade ≤ threshold. A⁻¹ is recomputed from A now and then so that round-off cannot
accumulate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import dger

from mmtp_hpc.errors import InputError
from mmtp_hpc.io.cfg import format_cfg
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import ActiveSetBlock
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import Configuration

INITIAL_DIAGONAL = 1e-6
REFRESH_EVERY = 256  # swaps between fresh inverses (measured: no drift without any)
TIE_RTOL = 1e-10     # pivots this close count as equal; the first row listed wins
CHUNK_ROWS = 256     # rows per block of the |C| sweeps (the temporary stays in cache)


@dataclass
class Selection:
    matrix: np.ndarray       # A (n, n)
    inverse: np.ndarray      # A⁻¹ (n, n)
    rows: np.ndarray         # (n,) index of the candidate row in each slot, -1 = initial row
    swaps: int
    max_grade: float         # max |B A⁻¹| over the candidates after selection

    @property
    def log_volume(self) -> float:
        """ln |det A|."""
        return float(np.linalg.slogdet(self.matrix)[1])


def maxvol(candidates: np.ndarray, matrix: np.ndarray | None = None, rows: np.ndarray | None = None,
           threshold: float = 1.001, max_swaps: int | None = None, *,
           groups: np.ndarray | None = None, max_groups: int | None = None,
           progress: Callable[[int, float], None] | None = None) -> Selection:
    """Select rows of ``candidates`` (m, n) into the active set by MaxVol.

    ``matrix``/``rows``: a current active set to extend (its slots keep their row indices,
    -1 for rows not among the candidates); default 1e-6·I. The rows of ``matrix`` marked
    -1 join the pool, so they can come back after being swapped out.

    ``groups`` (m,) and ``max_groups``: rows with ``groups >= 0`` belong to numbered groups
    (configurations); once rows of ``max_groups`` different groups are in the set, rows of
    other groups are no longer swapped in (rows with ``groups < 0`` always can be). The
    pivots are taken largest first, so the groups admitted are the most extrapolative.

    ``progress(swaps, pivot)`` is called every ``REFRESH_EVERY`` swaps.
    """
    B = np.ascontiguousarray(candidates, dtype=np.float64)
    m, n = B.shape
    if threshold < 1.0:
        raise InputError(f"MaxVol threshold must be >= 1, got {threshold}")
    A = INITIAL_DIAGONAL * np.eye(n) if matrix is None else np.array(matrix, dtype=np.float64)
    if A.shape != (n, n):
        raise InputError(f"active set must be ({n}, {n}) for rows of length {n}, got {A.shape}")
    slots = np.full(n, -1, dtype=np.int64) if rows is None else np.array(rows, dtype=np.int64).reshape(n)
    # the pool: candidates, then the set's rows that are not candidates (index m + k)
    outside = np.flatnonzero(slots < 0)
    pool = np.vstack([B, A[outside]]) if len(outside) else B
    in_slot = slots.copy()
    in_slot[outside] = m + np.arange(len(outside))
    group_of = np.full(len(pool), -1, dtype=np.int64)
    if groups is not None:
        group_of[:m] = np.asarray(groups, dtype=np.int64).reshape(m)
    limited = max_groups is not None and groups is not None
    if limited:
        if max_groups < 0:
            raise InputError(f"max_groups must be >= 0, got {max_groups}")
        n_groups = int(group_of.max()) + 1 if len(group_of) else 0
        count = np.zeros(max(n_groups, 1), dtype=np.int64)      # slots held per group
        for r in in_slot:
            if group_of[r] >= 0:
                count[group_of[r]] += 1

    Ainv = np.linalg.inv(A)
    C = pool @ Ainv
    rowmax = _row_max(C)
    swaps = 0
    limit = max_swaps if max_swaps is not None else 20 * n + m
    while len(pool) and swaps < limit:
        eligible = rowmax
        if limited and np.count_nonzero(count) >= max_groups:
            closed = (group_of >= 0) & (count[np.maximum(group_of, 0)] == 0)
            eligible = np.where(closed, 0.0, rowmax)
        best = eligible.max()
        if best <= threshold:
            break
        i = int(np.argmax(eligible >= best * (1.0 - TIE_RTOL)))   # the first of the tied rows
        j = int(np.argmax(np.abs(C[i])))
        pivot = C[i, j]
        v = C[i].copy()
        v[j] -= 1.0
        Ainv -= np.outer(Ainv[:, j] / pivot, v)
        A[j] = pool[i]
        if limited:
            if group_of[in_slot[j]] >= 0:
                count[group_of[in_slot[j]]] -= 1
            if group_of[i] >= 0:
                count[group_of[i]] += 1
        in_slot[j] = i
        swaps += 1
        if swaps % REFRESH_EVERY == 0:
            Ainv = np.linalg.inv(A)
            C = pool @ Ainv
            rowmax = _row_max(C)
            if progress is not None:
                progress(swaps, float(abs(pivot)))
        else:
            _rank_one_update(C, C[:, j] / pivot, v, rowmax)
    Ainv = np.linalg.inv(A)
    slots = np.where(in_slot < m, in_slot, -1)
    max_grade = float(_row_max(B @ Ainv).max()) if m else 0.0
    return Selection(A, Ainv, slots, swaps, max_grade)


def _row_max(C: np.ndarray) -> np.ndarray:
    """max_j |C_ij| of each row, a block of rows at a time (no m × n temporary)."""
    out = np.empty(len(C))
    for s in range(0, len(C), CHUNK_ROWS):
        np.abs(C[s:s + CHUNK_ROWS]).max(axis=1, out=out[s:s + CHUNK_ROWS])
    return out


def _rank_one_update(C: np.ndarray, column: np.ndarray, v: np.ndarray, rowmax: np.ndarray) -> None:
    """C ← C − column ⊗ v in place (BLAS ger on Cᵀ, one sweep), then ``rowmax`` refreshed."""
    out = dger(-1.0, v, column, a=C.T, overwrite_a=1)
    if not np.shares_memory(out, C):      # C was not contiguous: ger worked on a copy
        C[...] = out.T
    for s in range(0, len(C), CHUNK_ROWS):
        np.abs(C[s:s + CHUNK_ROWS]).max(axis=1, out=rowmax[s:s + CHUNK_ROWS])


def grades(rows: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Grade of each row b: max_j |(b A⁻¹)_j| (``inverse`` = A⁻¹)."""
    return np.abs(np.atleast_2d(rows) @ inverse).max(axis=1)


def real_atoms(cfg: Configuration) -> np.ndarray:
    """Indices of the atoms that have neighbourhood rows (all but MLIP-3's ghost atoms)."""
    if cfg.ghost is None:
        return np.arange(len(cfg))
    return np.flatnonzero(~cfg.ghost)


def configuration_rows(engine: MTPEngine, cfg: Configuration, mode: str = "nbh"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one configuration and their MLIP-3 equation indices.

    ``nbh``: ``∂E_i/∂θ`` of each non-ghost atom, equation ``10 + 3N + i`` (N, i counted over
    the non-ghost atoms: MLIP-3's site-energy equations after energy, 3N forces and 9
    stresses); ``cfg``: ``Σ_i ∂E_i/∂θ / N``, equation 0. A configuration without atoms
    (or only ghosts) has no rows.
    """
    if mode not in ("nbh", "cfg"):
        raise InputError(f"active-set mode must be 'nbh' or 'cfg', got {mode!r}")
    real = real_atoms(cfg)
    n = len(real)
    if n == 0:
        return np.zeros((0, engine.pot.n_params)), np.zeros(0, dtype=np.int64)
    site = engine.param_gradients(cfg, site=True)["site_param_grad"]
    if cfg.ghost is not None:
        site = site[real]
    if mode == "nbh":
        return site, (10 + 3 * n + np.arange(n)).astype(np.int64)
    return site.sum(axis=0)[None, :] / n, np.zeros(1, dtype=np.int64)


def candidate_rows(engine: MTPEngine, configs: list[Configuration], mode: str = "nbh"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of the configurations: (B, configuration index, MLIP-3 equation index)."""
    if mode not in ("nbh", "cfg"):
        raise InputError(f"active-set mode must be 'nbh' or 'cfg', got {mode!r}")
    blocks, cfg_idx, eqn_idx = [np.zeros((0, engine.pot.n_params))], [], []
    for k, cfg in enumerate(configs):
        rows, eqns = configuration_rows(engine, cfg, mode)
        blocks.append(rows)
        cfg_idx.append(np.full(len(rows), k))
        eqn_idx.append(eqns)
    return (np.concatenate(blocks), np.concatenate(cfg_idx + [[]]).astype(np.int64),
            np.concatenate(eqn_idx + [[]]).astype(np.int64))


def active_set_block(matrix: np.ndarray, inverse: np.ndarray, slot_configs: np.ndarray,
                     slot_eqns: np.ndarray, configs: list[Configuration], mode: str) -> ActiveSetBlock:
    """MLIP-3's ``#MVS_v1.1`` block of an active set.

    ``matrix`` A and ``inverse`` A⁻¹ (n, n); slot j holds equation ``slot_eqns[j]`` of
    ``configs[slot_configs[j]]`` (-1: an initial row). The configurations that hold slots
    are stored with a ``selected_eqn_inds`` feature, in the order of ``configs``.
    """
    slot_configs = np.asarray(slot_configs, dtype=np.int64)
    slot_eqns = np.asarray(slot_eqns, dtype=np.int64)
    used = sorted({int(k) for k in slot_configs if k >= 0})
    position = {k: p for p, k in enumerate(used)}
    cfg_indices = np.array([position[int(k)] if k >= 0 else -1 for k in slot_configs])
    eqn_indices = np.where(slot_configs >= 0, slot_eqns, -1)
    chosen = []
    for k in used:
        cfg = configs[k].copy()
        eqns = sorted(int(e) for c, e in zip(slot_configs, slot_eqns, strict=True) if c == k)
        cfg.features = dict(cfg.features)
        cfg.features["selected_eqn_inds"] = ",".join(map(str, eqns))
        chosen.append(cfg)
    weights = ({"energy_weight": 0.0, "site_en_weight": 1.0} if mode == "nbh"
               else {"energy_weight": 1.0, "site_en_weight": 0.0})
    return ActiveSetBlock.from_parts(
        matrix, np.asarray(inverse).T, cfg_indices, eqn_indices, format_cfg(chosen, "%.16e"),
        force_weight=0.0, stress_weight=0.0, weight_scaling=2, **weights)


def attach_active_set(pot: MTPPotential, configs: list[Configuration], mode: str = "nbh",
                      threshold: float = 1.001) -> Selection:
    """Select the active set of ``pot`` over ``configs`` and store it in ``pot.active_set``
    as an MLIP-3 ``#MVS_v1.1`` block (written with ``.almtp`` files)."""
    engine = MTPEngine(pot)
    B, cfg_of_row, eqn_of_row = candidate_rows(engine, configs, mode)
    sel = maxvol(B, threshold=threshold)
    slot_configs = np.where(sel.rows >= 0, cfg_of_row[np.maximum(sel.rows, 0)], -1) if len(B) \
        else np.full(len(sel.rows), -1)
    slot_eqns = np.where(sel.rows >= 0, eqn_of_row[np.maximum(sel.rows, 0)], -1) if len(B) \
        else np.full(len(sel.rows), -1)
    pot.active_set = active_set_block(sel.matrix, sel.inverse, slot_configs, slot_eqns, configs, mode)
    return sel
