"""Magnetisation per species: mean moment, mean |moment| and total moment of each species per
frame, and their time averages.

For species s with N_s atoms, per frame: ``mean_s = Σ_{i∈s} m_i / N_s`` (μB/atom, keeps the
sign: ferromagnetic order survives averaging, antiferromagnetic order cancels),
``abs_mean_s = Σ |m_i| / N_s`` (the local-moment size), ``total_s = Σ m_i`` (μB); and for all
atoms ``|M| = |Σ m_i|`` and ``|M|/N``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def magnetisation_table(magmoms: np.ndarray, types: np.ndarray, species: Sequence[str],
                        step: np.ndarray | None = None,
                        time_fs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Columns per frame from moments (F, N) μB and types (N,): ``mean_<s>_uB``,
    ``abs_mean_<s>_uB``, ``total_<s>_uB`` for each species present, ``abs_M_uB`` and
    ``abs_M_per_atom_uB`` (plus ``step``/``time_ps`` when given)."""
    m = np.asarray(magmoms, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"magmoms must be (frames, atoms), got shape {m.shape}")
    types = np.asarray(types)
    table: dict[str, np.ndarray] = {}
    if step is not None:
        table["step"] = np.asarray(step, dtype=np.int64)
    if time_fs is not None:
        table["time_ps"] = np.asarray(time_fs, dtype=np.float64) / 1000.0
    for t in sorted(set(types.tolist())):
        name = species[t] if t < len(species) else f"type{t}"
        sel = m[:, types == t]
        table[f"mean_{name}_uB"] = sel.mean(axis=1)
        table[f"abs_mean_{name}_uB"] = np.abs(sel).mean(axis=1)
        table[f"total_{name}_uB"] = sel.sum(axis=1)
    total = np.abs(m.sum(axis=1))
    table["abs_M_uB"] = total
    table["abs_M_per_atom_uB"] = total / max(m.shape[1], 1)
    return table


def time_average(values: np.ndarray, n_blocks: int = 5) -> tuple[float, float]:
    """Mean over frames and its standard error from ``n_blocks`` block averages (frames of
    an MD run are correlated, so the naive σ/√F underestimates the error); the error is NaN
    with fewer frames than blocks."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan
    mean = float(v.mean())
    if v.size < n_blocks or n_blocks < 2:
        return mean, np.nan
    blocks = np.array([b.mean() for b in np.array_split(v, n_blocks)])
    return mean, float(blocks.std(ddof=1) / np.sqrt(n_blocks))


def averages(table: dict[str, np.ndarray], n_blocks: int = 5) -> dict[str, tuple[float, float]]:
    """(mean, block standard error) of every moment column of :func:`magnetisation_table`."""
    return {name: time_average(values, n_blocks) for name, values in table.items()
            if name not in ("step", "time_ps")}
