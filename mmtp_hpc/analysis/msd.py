r"""Mean-squared displacement per species and the diffusion coefficient from its slope.

``MSD_s(t) = ⟨ |r_i(t₀ + t) − r_i(t₀)|² ⟩_{i∈s, t₀}`` (Å²), averaged over all time origins
with the FFT algorithm of Kneller et al. (Comput. Phys. Commun. 91, 191 (1995)):
``MSD(m) = S1(m) − 2 S2(m)`` where S2 is the position autocorrelation and S1 a running
sum of |r|², so the cost is O(F log F) per atom instead of O(F²).

Positions must be continuous in time. MD trajectories of ``mmtp md`` store unwrapped
positions; :func:`unwrap` makes wrapped ones (e.g. from other codes) continuous by taking
each frame-to-frame step as the minimum image in fractional coordinates (valid while no
atom moves more than half a cell between frames). The centre-of-mass drift (a Langevin
thermostat lets it diffuse) is removed by default. In 3D, ``D = lim MSD/(6t)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mmtp_hpc.errors import InputError

_ATOM_CHUNK = 512


@dataclass
class MSD:
    """``time_fs`` (L,); ``total`` (L,) and ``partial`` {species: (L,)} Å²; ``counts``."""

    time_fs: np.ndarray
    total: np.ndarray
    partial: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def table(self) -> dict[str, np.ndarray]:
        """CSV columns: ``time_ps``, ``msd_total_A2``, ``msd_<species>_A2``."""
        out = {"time_ps": self.time_fs / 1000.0, "msd_total_A2": self.total}
        out.update({f"msd_{k}_A2": v for k, v in self.partial.items()})
        return out


def unwrap(positions: np.ndarray, cells: np.ndarray, pbc: Sequence[bool] = (True, True, True)
           ) -> np.ndarray:
    """Continuous positions (F, N, 3) from possibly wrapped ones (cells (F, 3, 3) or (3, 3))."""
    pos = np.asarray(positions, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.float64)
    if cells.ndim == 2:
        cells = np.broadcast_to(cells, (len(pos), 3, 3))
    periodic = np.asarray(pbc, dtype=bool)
    frac = np.einsum("fnj,fjk->fnk", pos, np.linalg.inv(cells))
    step = np.diff(frac, axis=0)
    step[..., periodic] -= np.round(step[..., periodic])
    frac_cont = np.concatenate([frac[:1], frac[:1] + np.cumsum(step, axis=0)], axis=0)
    return np.einsum("fnk,fkj->fnj", frac_cont, cells)


def _msd_fft(x: np.ndarray) -> np.ndarray:
    """Σ over atoms of MSD(m) for x (F, n, 3), all lags m = 0..F-1."""
    n_frames = x.shape[0]
    d = np.square(x).sum(axis=2)                               # (F, n)
    d = np.concatenate([d, np.zeros((1, d.shape[1]))])         # d[-1] = d[F] = 0
    spec = np.fft.rfft(x, n=2 * n_frames, axis=0)
    s2 = np.fft.irfft((spec.real ** 2 + spec.imag ** 2).sum(axis=2), n=2 * n_frames, axis=0)[:n_frames]
    origins = (n_frames - np.arange(n_frames))[:, None].astype(np.float64)
    s2 /= origins
    m = np.arange(n_frames)
    q = 2.0 * d[:n_frames].sum(axis=0)
    drop = np.cumsum(d[m - 1] + d[n_frames - m], axis=0)      # Q_m = Q − Σ_{k≤m} (D_{k−1} + D_{F−k})
    s1 = (q[None, :] - drop) / origins
    return (s1 - 2.0 * s2).sum(axis=1)


def remove_drift(positions: np.ndarray, masses: np.ndarray | None = None) -> np.ndarray:
    """Positions (F, N, 3) with the centre-of-mass displacement since frame 0 subtracted
    (a stochastic thermostat lets the centre of mass diffuse, which a crystal's MSD must not
    show)."""
    pos = np.asarray(positions, dtype=np.float64)
    w = np.ones(pos.shape[1]) if masses is None else np.asarray(masses, dtype=np.float64)
    com = np.einsum("fnj,n->fj", pos, w) / w.sum()
    return pos - (com - com[0])[:, None, :]


def mean_squared_displacement(positions: np.ndarray, dt_fs: float, types: np.ndarray,
                              species: Sequence[str], max_lag: int | None = None,
                              masses: np.ndarray | None = None, drift: bool = False) -> MSD:
    """MSD per species from continuous positions (F, N, 3) Å at frames ``dt_fs`` apart;
    ``max_lag`` frames (default F // 2). Unless ``drift``, the centre-of-mass motion
    (weighted by ``masses``, default equal) is removed first (:func:`remove_drift`)."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[2] != 3 or pos.shape[0] < 2:
        raise InputError(f"positions must be (frames ≥ 2, atoms, 3), got shape {pos.shape}",
                         field="positions")
    if not drift:
        pos = remove_drift(pos, masses)
    n_frames = pos.shape[0]
    lags = n_frames // 2 if max_lag is None else int(min(max(max_lag, 2), n_frames))
    types = np.asarray(types, dtype=np.int64)
    partial: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for t in sorted(set(types.tolist())):
        name = species[t] if t < len(species) else f"type{t}"
        atoms = np.flatnonzero(types == t)
        acc = np.zeros(n_frames)
        for start in range(0, len(atoms), _ATOM_CHUNK):
            acc += _msd_fft(pos[:, atoms[start:start + _ATOM_CHUNK], :])
        partial[name] = np.maximum(acc[:lags] / len(atoms), 0.0)
        counts[name] = len(atoms)
    n = sum(counts.values())
    total = np.sum([partial[k] * counts[k] for k in partial], axis=0) / n
    return MSD(time_fs=np.arange(lags) * float(dt_fs), total=total, partial=partial, counts=counts)


def diffusion_coefficient(time_fs: np.ndarray, msd: np.ndarray, start_fraction: float = 0.2
                          ) -> tuple[float, float]:
    """D from a straight-line fit of MSD(t) over t ≥ ``start_fraction`` × t_max (skipping the
    ballistic start): returns (D in Å²/ps, D in cm²/s). 1 Å²/ps = 1e-4 cm²/s."""
    t = np.asarray(time_fs, dtype=np.float64)
    y = np.asarray(msd, dtype=np.float64)
    sel = t >= start_fraction * t[-1]
    if sel.sum() < 2:
        return np.nan, np.nan
    slope = np.polyfit(t[sel], y[sel], 1)[0]                  # Å²/fs
    d_a2_ps = slope / 6.0 * 1000.0
    return float(d_a2_ps), float(d_a2_ps * 1e-4)
