r"""Velocity autocorrelation (VACF) and the vibrational (phonon) density of states from it.

Mass-weighted VACF of the atoms of species s, averaged over all time origins::

    C_s(t) = Σ_{i∈s} m_i ⟨v_i(t₀) · v_i(t₀ + t)⟩_{t₀}                    (amu Å²/fs²)

computed with FFTs (Wiener–Khinchin, zero-padded to 2F so the correlation is not
circular; lag k is divided by the F − k origins that contribute). In a harmonic crystal
C(t) = Σ_modes k_BT cos(ω t), so its spectrum counts modes, each with the same weight
(classical equipartition) — which is why the VACF is mass-weighted.

DOS (Dickey & Paskin 1969; the phonon DOS of arXiv 2605.26897, Figs. 4–5)::

    g_s(ν) = c · ∫_{−t_max}^{t_max} w(t) C_s(t) e^{−2πiνt} dt
           = c · Δt [C_s(0) + 2 Σ_{k≥1} w_k C_s(k Δt) cos(2πν kΔt)]

with a window w (``"hann"``: w(t) = cos²(π t / 2t_max), which takes the truncated VACF
smoothly to zero and trades resolution ≈ 1/t_max for no ringing; ``"none"``: a box),
evaluated by FFT on a frequency grid refined by zero padding. One constant c for all
species makes ``∫_0^{ν_Nyquist} Σ_s g_s dν = 3N`` (states per frequency unit: one per
degree of freedom); each partial DOS then integrates to ≈ 3N_s, the share equipartition
gives it. Frequencies are in THz (1/fs × 1000).

An independent frequency-domain estimate of the same quantity (for checks):
:func:`power_spectrum_dos`, the Hann-windowed periodogram Σ_i m_i |FFT_t v_i(t)|².
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mmtp_hpc.errors import InputError

WINDOWS = ("hann", "none")
_ATOM_CHUNK = 512          # atoms per FFT batch (bounds memory: F × chunk × 3 complex)


@dataclass
class VACF:
    """``time_fs`` (L,) lags; ``total`` (L,) and ``partial`` {species: (L,)} mass-weighted
    VACF sums (amu Å²/fs²); ``counts`` {species: atoms}; ``dt_fs`` the frame spacing."""

    time_fs: np.ndarray
    total: np.ndarray
    partial: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    dt_fs: float = 1.0

    def normalised(self) -> dict[str, np.ndarray]:
        """C(t)/C(0), total and per species."""
        out = {"total": self.total / self.total[0]}
        out.update({k: v / v[0] for k, v in self.partial.items()})
        return out

    def table(self) -> dict[str, np.ndarray]:
        """CSV columns: ``time_fs``, ``vacf_total``, ``vacf_<species>`` (normalised to 1 at t = 0)."""
        norm = self.normalised()
        out = {"time_fs": self.time_fs, "vacf_total": norm["total"]}
        out.update({f"vacf_{k}": norm[k] for k in self.partial})
        return out


@dataclass
class DOS:
    """``freq_THz`` (K,); ``total`` (K,) and ``partial`` {species: (K,)} states/THz with
    ∫ total dν = 3N; ``counts`` {species: atoms}; ``resolution_THz`` ≈ 1/t_max."""

    freq_THz: np.ndarray
    total: np.ndarray
    partial: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    resolution_THz: float = 0.0

    def integral(self, values: np.ndarray | None = None) -> float:
        """∫ g dν (trapezoid) of the total or of ``values``."""
        y = self.total if values is None else values
        return float(np.trapezoid(y, self.freq_THz))

    def peak_THz(self, values: np.ndarray | None = None) -> float:
        y = self.total if values is None else values
        return float(self.freq_THz[int(np.argmax(y))])

    def table(self) -> dict[str, np.ndarray]:
        """CSV columns: ``freq_THz``, ``dos_total``, ``dos_<species>`` (states/THz)."""
        out = {"freq_THz": self.freq_THz, "dos_total": self.total}
        out.update({f"dos_{k}": v for k, v in self.partial.items()})
        return out


def _groups(types: np.ndarray, species: Sequence[str]) -> dict[str, np.ndarray]:
    types = np.asarray(types, dtype=np.int64)
    return {(species[t] if t < len(species) else f"type{t}"): np.flatnonzero(types == t)
            for t in sorted(set(types.tolist()))}


def _check(velocities: np.ndarray, masses: np.ndarray | None, dt_fs: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(velocities, dtype=np.float64)
    if v.ndim != 3 or v.shape[2] != 3:
        raise InputError(f"velocities must be (frames, atoms, 3), got shape {v.shape}", field="velocities")
    if v.shape[0] < 4:
        raise InputError(f"need at least 4 frames for a VACF, got {v.shape[0]}", field="frames")
    if not np.all(np.isfinite(v)):
        raise InputError("velocities contain NaN (were they stored in every frame?)", field="velocities")
    if not dt_fs > 0:
        raise InputError(f"frame spacing must be positive, got {dt_fs} fs", field="dt")
    m = np.ones(v.shape[1]) if masses is None else np.asarray(masses, dtype=np.float64).reshape(v.shape[1])
    return v, m


def velocity_autocorrelation(velocities: np.ndarray, dt_fs: float, types: np.ndarray,
                             species: Sequence[str], masses: np.ndarray | None = None,
                             max_lag: int | None = None) -> VACF:
    """Mass-weighted VACF (see the module docstring) from velocities (F, N, 3) Å/fs at frames
    ``dt_fs`` apart; ``max_lag`` frames (default F // 2: longer lags average few origins)."""
    v, m = _check(velocities, masses, dt_fs)
    n_frames = v.shape[0]
    lags = n_frames // 2 if max_lag is None else int(min(max(max_lag, 2), n_frames - 1))
    n_fft = 2 * n_frames
    origins = (n_frames - np.arange(lags)).astype(np.float64)
    partial: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for name, atoms in _groups(types, species).items():
        acc = np.zeros(lags)
        for start in range(0, len(atoms), _ATOM_CHUNK):
            idx = atoms[start:start + _ATOM_CHUNK]
            spec = np.fft.rfft(v[:, idx, :], n=n_fft, axis=0)
            power = (spec.real ** 2 + spec.imag ** 2) * m[idx][None, :, None]
            acc += np.fft.irfft(power.sum(axis=(1, 2)), n=n_fft)[:lags]
        partial[name] = acc / origins
        counts[name] = len(atoms)
    total = np.sum(list(partial.values()), axis=0)
    return VACF(time_fs=np.arange(lags) * float(dt_fs), total=total, partial=partial,
                counts=counts, dt_fs=float(dt_fs))


def window_function(n: int, window: str) -> np.ndarray:
    """w_k for lags k = 0..n-1: half-Hann cos²(πk/2n) or ones."""
    if window == "hann":
        return np.cos(0.5 * np.pi * np.arange(n) / n) ** 2
    if window == "none":
        return np.ones(n)
    raise InputError(f"unknown window {window!r}; known: {', '.join(WINDOWS)}", field="window")


def _cosine_transform(c: np.ndarray, dt: float, n_fft: int) -> np.ndarray:
    """Δt [c_0 + 2 Σ_{k≥1} c_k cos(2π f_j k Δt)] on the rfft grid of length n_fft."""
    seq = np.zeros(n_fft)
    seq[:len(c)] = c
    seq[n_fft - len(c) + 1:] = c[1:][::-1]        # even extension: negative lags
    return np.fft.rfft(seq).real * dt


def vibrational_dos(vacf: VACF, window: str = "hann", pad: int = 4,
                    n_dof: float | None = None) -> DOS:
    """DOS from a VACF (module docstring): ``window`` applied over the lags, zero padding to
    ``pad`` × the even extension (a finer frequency grid, not a finer resolution); normalised
    so ∫ total dν = ``n_dof`` (default 3N)."""
    lags = len(vacf.time_fs)
    w = window_function(lags, window)
    n_fft = int(max(2, pad) * 2 * lags)
    dt = vacf.dt_fs
    freq = np.fft.rfftfreq(n_fft, d=dt) * 1000.0          # 1/fs -> THz
    raw = {k: _cosine_transform(c * w, dt, n_fft) for k, c in vacf.partial.items()}
    raw_total = np.sum(list(raw.values()), axis=0)
    n_atoms = sum(vacf.counts.values())
    target = 3.0 * n_atoms if n_dof is None else float(n_dof)
    scale = target / float(np.trapezoid(raw_total, freq))
    return DOS(freq_THz=freq, total=raw_total * scale,
               partial={k: v * scale for k, v in raw.items()}, counts=dict(vacf.counts),
               resolution_THz=1000.0 / (lags * dt))


def power_spectrum_dos(velocities: np.ndarray, dt_fs: float, types: np.ndarray,
                       species: Sequence[str], masses: np.ndarray | None = None,
                       pad: int = 2, n_dof: float | None = None) -> DOS:
    """The DOS estimated directly in the frequency domain: Σ_{i∈s} m_i |FFT_t[h(t) v_i(t)]|²
    with a Hann taper h over the whole run, normalised like :func:`vibrational_dos`. It
    does not pass through the VACF, so it checks that route (both estimate the same
    spectrum; their resolutions differ)."""
    v, m = _check(velocities, masses, dt_fs)
    n_frames = v.shape[0]
    taper = np.hanning(n_frames)
    n_fft = int(max(1, pad) * n_frames)
    freq = np.fft.rfftfreq(n_fft, d=dt_fs) * 1000.0
    raw: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for name, atoms in _groups(types, species).items():
        acc = np.zeros(len(freq))
        for start in range(0, len(atoms), _ATOM_CHUNK):
            idx = atoms[start:start + _ATOM_CHUNK]
            spec = np.fft.rfft(v[:, idx, :] * taper[:, None, None], n=n_fft, axis=0)
            acc += ((spec.real ** 2 + spec.imag ** 2) * m[idx][None, :, None]).sum(axis=(1, 2))
        raw[name] = acc
        counts[name] = len(atoms)
    raw_total = np.sum(list(raw.values()), axis=0)
    target = 3.0 * sum(counts.values()) if n_dof is None else float(n_dof)
    scale = target / float(np.trapezoid(raw_total, freq))
    return DOS(freq_THz=freq, total=raw_total * scale, partial={k: x * scale for k, x in raw.items()},
               counts=counts, resolution_THz=1000.0 / (n_frames * dt_fs))


def frame_spacing(time_fs: np.ndarray, rtol: float = 1e-6) -> float:
    """The uniform spacing (fs) of frame times, or an InputError naming the first gap."""
    t = np.asarray(time_fs, dtype=np.float64)
    if len(t) < 2:
        raise InputError("need at least 2 frames", field="frames")
    d = np.diff(t)
    dt = float(np.median(d))
    bad = np.flatnonzero(np.abs(d - dt) > rtol * max(abs(dt), 1e-12) + 1e-9)
    if dt <= 0 or bad.size:
        k = int(bad[0]) if bad.size else 0
        raise InputError(f"frames are not equally spaced in time (frame {k} → {k + 1}: "
                         f"{d[k]:g} fs, typical {dt:g} fs); select a uniform range with --frames",
                         field="time")
    return dt


# thresholds of :func:`dos_warnings` (a metal's lattice vibrations reach 8–15 THz)
MAX_FRAME_SPACING_FS = 5.0        # ≥ 20 samples per period of a 10 THz vibration
MAX_RESOLUTION_THZ = 0.5          # ≥ 2 ps of correlation time
MIN_FRAMES = 200


def dos_warnings(dt_fs: float, n_frames: int, resolution_THz: float) -> list[str]:
    """What makes a vibrational DOS from these frames unreliable, in words (empty: nothing).

    Frames further apart than 5 fs sample a 10 THz vibration fewer than 20 times per period
    (Nyquist 1/(2Δt)); a resolution ≈ 1/t_max coarser than 0.5 THz merges the features of a
    lattice DOS that spans ~10 THz into one hump; fewer than 200 frames leave a noisy VACF.
    """
    out = []
    if dt_fs > MAX_FRAME_SPACING_FS:
        out.append(f"frames are {dt_fs:g} fs apart (Nyquist {500.0 / dt_fs:.3g} THz): a 10 THz vibration "
                   f"is sampled {100.0 / dt_fs:.1f} times per period; store frames every 1–5 fs "
                   f"([output] every)")
    if resolution_THz > MAX_RESOLUTION_THZ:
        out.append(f"resolution ≈ {resolution_THz:.3g} THz: a lattice DOS spanning ~10 THz is smeared "
                   f"into a few bins; correlate over ≥ {1000.0 / MAX_RESOLUTION_THZ / 1000:.0f} ps "
                   f"(a longer run, --max-lag-fs)")
    if n_frames < MIN_FRAMES:
        out.append(f"only {n_frames} frames: the VACF and DOS are noisy; use ≥ {MIN_FRAMES} frames")
    return out
