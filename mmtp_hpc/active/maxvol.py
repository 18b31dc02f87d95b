"""MaxVol selection of the active set (spec §5) and building MLIP-3's ``#MVS_v1.1`` block.

Rows: ``b = ∂E/∂θ / N`` per configuration (``mode="cfg"``) or ``b_i = ∂E_i/∂θ`` per
neighbourhood (``mode="nbh"``, MLIP-3's default with ``site_en_weight 1``), over all n
parameters. The active set A (n × n) starts as 1e-6·I. While some candidate row has
``max |B A⁻¹| > threshold`` the row/column pair with the largest entry is swapped in,
which multiplies |det A| by that entry, and A⁻¹ and C = B A⁻¹ are updated by
Sherman–Morrison (Goreinov et al., "How to find a good submatrix", 2010)::

    C ← C − C[:, j] ⊗ (C[i] − e_j) / C[i, j]     A⁻¹ ← A⁻¹ − A⁻¹[:, j] ⊗ (C[i] − e_j) / C[i, j]

The grade of a row is ``max_j |(b A⁻¹)_j|``; after selection every candidate has grade
≤ threshold. A⁻¹ is recomputed from A now and then so that round-off cannot accumulate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io.cfg import format_cfg
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import ActiveSetBlock
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import Configuration

INITIAL_DIAGONAL = 1e-6
REFRESH_EVERY = 64   # swaps between fresh inverses


@dataclass
class Selection:
    matrix: np.ndarray       # A (n, n)
    inverse: np.ndarray      # A⁻¹ (n, n)
    rows: np.ndarray         # (n,) index of the candidate row in each slot, -1 = initial row
    swaps: int
    max_grade: float         # max |B A⁻¹| over the candidates after selection


def maxvol(candidates: np.ndarray, matrix: np.ndarray | None = None, rows: np.ndarray | None = None,
           threshold: float = 1.001, max_swaps: int | None = None) -> Selection:
    """Select rows of ``candidates`` (m, n) into the active set by MaxVol.

    ``matrix``/``rows``: a current active set to extend (its slots keep their row indices,
    -1 for rows not among the candidates); default 1e-6·I.
    """
    B = np.ascontiguousarray(candidates, dtype=np.float64)
    m, n = B.shape
    if threshold < 1.0:
        raise InputError(f"MaxVol threshold must be >= 1, got {threshold}")
    A = INITIAL_DIAGONAL * np.eye(n) if matrix is None else np.array(matrix, dtype=np.float64)
    slots = np.full(n, -1, dtype=np.int64) if rows is None else np.array(rows, dtype=np.int64)
    Ainv = np.linalg.inv(A)
    C = B @ Ainv
    swaps = 0
    limit = max_swaps if max_swaps is not None else 20 * n + m
    while m and swaps < limit:
        flat = int(np.argmax(np.abs(C)))
        i, j = divmod(flat, n)
        pivot = C[i, j]
        if abs(pivot) <= threshold:
            break
        v = C[i].copy()
        v[j] -= 1.0
        C -= np.outer(C[:, j] / pivot, v)
        Ainv -= np.outer(Ainv[:, j] / pivot, v)
        A[j] = B[i]
        slots[j] = i
        swaps += 1
        if swaps % REFRESH_EVERY == 0:
            Ainv = np.linalg.inv(A)
            C = B @ Ainv
    Ainv = np.linalg.inv(A)
    C = B @ Ainv
    return Selection(A, Ainv, slots, swaps, float(np.abs(C).max()) if m else 0.0)


def grades(rows: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Grade of each row b: max_j |(b A⁻¹)_j| (``inverse`` = A⁻¹)."""
    return np.abs(np.atleast_2d(rows) @ inverse).max(axis=1)


def candidate_rows(engine: MTPEngine, configs: list[Configuration], mode: str = "nbh"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of the configurations: (B, configuration index, MLIP-3 equation index)."""
    if mode not in ("nbh", "cfg"):
        raise InputError(f"active-set mode must be 'nbh' or 'cfg', got {mode!r}")
    blocks, cfg_idx, eqn_idx = [], [], []
    for k, cfg in enumerate(configs):
        pg = engine.param_gradients(cfg, site=True)
        n = len(cfg)
        if mode == "nbh":
            blocks.append(pg["site_param_grad"])
            cfg_idx.append(np.full(n, k))
            eqn_idx.append(10 + 3 * n + np.arange(n))   # MLIP-3's site-energy equations
        else:
            blocks.append(pg["energy_param_grad"][None, :] / n)
            cfg_idx.append([k])
            eqn_idx.append([0])                          # the energy equation
    return (np.concatenate(blocks), np.concatenate(cfg_idx).astype(np.int64),
            np.concatenate(eqn_idx).astype(np.int64))


def attach_active_set(pot: MTPPotential, configs: list[Configuration], mode: str = "nbh",
                      threshold: float = 1.001) -> Selection:
    """Select the active set of ``pot`` over ``configs`` and store it in ``pot.active_set``
    as an MLIP-3 ``#MVS_v1.1`` block (written with ``.almtp`` files)."""
    engine = MTPEngine(pot)
    B, cfg_of_row, eqn_of_row = candidate_rows(engine, configs, mode)
    sel = maxvol(B, threshold=threshold)
    used = sorted({int(cfg_of_row[r]) for r in sel.rows if r >= 0})
    position = {k: p for p, k in enumerate(used)}
    cfg_indices = np.array([position[int(cfg_of_row[r])] if r >= 0 else -1 for r in sel.rows])
    eqn_indices = np.array([int(eqn_of_row[r]) if r >= 0 else -1 for r in sel.rows])
    chosen = []
    for k in used:
        cfg = configs[k].copy()
        eqns = sorted(int(eqn_of_row[r]) for r in sel.rows if r >= 0 and cfg_of_row[r] == k)
        cfg.features = dict(cfg.features)
        cfg.features["selected_eqn_inds"] = ",".join(map(str, eqns))
        chosen.append(cfg)
    weights = ({"energy_weight": 0.0, "site_en_weight": 1.0} if mode == "nbh"
               else {"energy_weight": 1.0, "site_en_weight": 0.0})
    pot.active_set = ActiveSetBlock.from_parts(
        sel.matrix, sel.inverse.T, cfg_indices, eqn_indices, format_cfg(chosen, "%.16e"),
        force_weight=0.0, stress_weight=0.0, weight_scaling=2, **weights)
    return sel
