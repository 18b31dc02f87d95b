"""Radial distribution functions g_ab(r) per species pair, averaged over frames.

Definition (periodic cell of volume V, N_a atoms of species a)::

    g_ab(r) = V / (N_a N_b) · ⟨ Σ_{i∈a} Σ_{j∈b, j≠i} δ(r − r_ij) ⟩ / (4π r²)

with r_ij over all periodic images (so r_max may exceed half the cell), estimated by a
histogram with bins of width Δr divided by the shell volume 4π/3 [(r+Δr)³ − r³]. The total
g(r) is the same with all atoms (N_a = N_b = N). An ideal gas has g = 1; a crystal has peaks
at its neighbour shells (bcc: a√3/2, a, a√2, a√11/2, a√3). The running coordination number
``n_ab(r) = 4π ρ_b ∫_0^r g_ab(s) s² ds`` (ρ_b = N_b/V) counts the b neighbours of an a atom
within r. Pairs come from the project's neighbour list (all images within r_max).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.system.neighbors import build_neighbor_list


@dataclass
class RDF:
    """``r`` (B,) Å bin centres, ``edges`` (B+1,) Å; ``total`` (B,) and ``partial`` {"Fe-Al": (B,)}
    g(r) (dimensionless); ``coordination`` the running coordination numbers with the same keys
    (``"total"`` for all atoms); ``n_frames`` frames averaged."""

    r: np.ndarray
    edges: np.ndarray
    total: np.ndarray
    partial: dict[str, np.ndarray] = field(default_factory=dict)
    coordination: dict[str, np.ndarray] = field(default_factory=dict)
    n_frames: int = 0

    def table(self) -> dict[str, np.ndarray]:
        """Columns for a CSV file: ``r_A``, ``g_total``, ``g_<a>-<b>``, ``n_total``, ``n_<a>-<b>``."""
        out = {"r_A": self.r, "g_total": self.total}
        out.update({f"g_{k}": v for k, v in self.partial.items()})
        out.update({f"n_{k}": v for k, v in self.coordination.items()})
        return out


def radial_distribution(positions: np.ndarray, cells: np.ndarray, types: np.ndarray,
                        species: Sequence[str], r_max: float = 6.0, n_bins: int = 200,
                        pbc: Sequence[bool] = (True, True, True)) -> RDF:
    """g(r) and g_ab(r) from positions (F, N, 3) Å and cells (F, 3, 3) Å (or one (3, 3) cell)."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    cells = np.asarray(cells, dtype=np.float64)
    if cells.ndim == 2:
        cells = np.broadcast_to(cells, (len(pos), 3, 3))
    if not np.all(pbc):
        raise InputError("the RDF needs a cell periodic in all three directions", field="pbc")
    if not (r_max > 0 and n_bins > 0):
        raise InputError(f"need r_max > 0 and bins > 0, got {r_max}, {n_bins}", field="rmax")
    types = np.asarray(types, dtype=np.int64)
    present = sorted(set(types.tolist()))
    names = {t: (species[t] if t < len(species) else f"type{t}") for t in present}
    counts = {t: int(np.sum(types == t)) for t in present}
    n = len(types)
    edges = np.linspace(0.0, r_max, n_bins + 1)
    shell = 4.0 * np.pi / 3.0 * (edges[1:] ** 3 - edges[:-1] ** 3)
    pair_keys = [(a, b) for a in present for b in present if a <= b]
    hist_total = np.zeros(n_bins)
    hist = {key: np.zeros(n_bins) for key in pair_keys}
    volume_sum = 0.0
    for frame in range(len(pos)):
        cell = cells[frame]
        volume = abs(float(np.linalg.det(cell)))
        nl = build_neighbor_list(cell, np.ones(3, dtype=bool), pos[frame], r_max)
        centres = np.repeat(np.arange(nl.n_local), np.diff(nl.offsets))
        dist = np.linalg.norm(nl.positions[nl.neighbors] - nl.positions[centres], axis=1)
        bins = np.minimum((dist / r_max * n_bins).astype(np.int64), n_bins - 1)
        ti, tj = types[centres], types[nl.image_of[nl.neighbors]]
        # g ∝ V / (N_a N_b): accumulate each frame's histogram with its own volume
        hist_total += volume / (n * n) * np.bincount(bins, minlength=n_bins)
        for a, b in pair_keys:
            sel = (ti == a) & (tj == b)
            hist[(a, b)] += volume / (counts[a] * counts[b]) * np.bincount(bins[sel], minlength=n_bins)
        volume_sum += volume
    n_frames = len(pos)
    volume_mean = volume_sum / max(n_frames, 1)
    r = 0.5 * (edges[1:] + edges[:-1])
    total = hist_total / (n_frames * shell)
    out = RDF(r=r, edges=edges, total=total, n_frames=n_frames)
    dr_shell = shell  # ∫ g 4π r² dr over a bin = g · shell volume
    out.coordination["total"] = n / volume_mean * np.cumsum(total * dr_shell)
    for a, b in pair_keys:
        g = hist[(a, b)] / (n_frames * shell)
        key = f"{names[a]}-{names[b]}"
        out.partial[key] = g
        out.coordination[key] = counts[b] / volume_mean * np.cumsum(g * dr_shell)
    return out


def peak_positions(r: np.ndarray, g: np.ndarray, min_height: float = 1.0,
                   min_separation: float = 0.2) -> np.ndarray:
    """Positions (Å) of local maxima of g above ``min_height``, at least ``min_separation``
    apart (the higher one wins), in increasing r."""
    g = np.asarray(g)
    idx = [k for k in range(1, len(g) - 1)
           if g[k] >= g[k - 1] and g[k] > g[k + 1] and g[k] > min_height]
    idx.sort(key=lambda k: -g[k])
    kept: list[int] = []
    for k in idx:
        if all(abs(r[k] - r[j]) >= min_separation for j in kept):
            kept.append(k)
    return np.sort(np.asarray(r)[kept])


MIN_FRAMES = 10
MIN_PAIRS_PER_BIN = 100


def rdf_warnings(n_frames: int, n_atoms: int, volume: float, r_max: float, n_bins: int) -> list[str]:
    """What makes g(r) from these frames noisy, in words (empty: nothing).

    The expected number of pairs in a bin at r_max/2 of an ideal gas, N·ρ·4πr²Δr·F/2,
    sets the relative noise 1/√count of g there.
    """
    out = []
    if n_frames < MIN_FRAMES:
        out.append(f"only {n_frames} frame(s) averaged: g(r) shows one snapshot's thermal noise; "
                   f"use ≥ {MIN_FRAMES} frames")
    r = 0.5 * r_max
    pairs = 0.5 * n_atoms * (n_atoms / volume) * 4.0 * np.pi * r * r * (r_max / n_bins) * n_frames
    if pairs < MIN_PAIRS_PER_BIN:
        out.append(f"about {pairs:.0f} pairs per bin at r = {r:.3g} Å (noise ≈ {100 / np.sqrt(max(pairs, 1)):.0f} %): "
                   "use fewer --bins or more frames")
    return out
