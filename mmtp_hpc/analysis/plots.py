"""PNG figures of the analyses (matplotlib's Agg canvas; no display, no pyplot state).

Every figure has labelled axes with units, a legend where there is more than one curve and
a title naming the source; each function writes one PNG (atomically) and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmtp_hpc.io.atomic import atomic_path

_DPI = 120
_STYLES = ("-", "--", "-.", ":")


def _figure(rows: int, cols: int = 1, width: float = 7.0, height_per_row: float = 2.4,
            sharex: bool = True) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, max(3.2, height_per_row * rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=sharex, squeeze=False).ravel())
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")
    return path


def _notes(ax, notes: Sequence[str] | None) -> None:
    """Warnings about what the figure can show, written on the figure itself."""
    if notes:
        ax.text(0.99, 0.97, "\n".join(f"⚠ {n}" for n in notes), transform=ax.transAxes, ha="right",
                va="top", fontsize="x-small", color="C3", wrap=True,
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "C3", "alpha": 0.85})


def _finite(values: np.ndarray | None) -> bool:
    return values is not None and bool(np.isfinite(np.asarray(values, dtype=float)).any())


# ============================================================== thermodynamics
def plot_thermo(table: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "",
                targets: Mapping[str, float] | None = None) -> Path:
    """Panels vs time (ps): T (K); E_pot and E_pot + E_kin (eV/atom); P (GPa); V/N (Å³/atom,
    when the volume changes: NPT); |M|/N (μB/atom); the largest extrapolation grade γ when
    one was computed. Each panel shows the time average (thin dotted line) and, where
    ``targets`` gives one (keys of the table, e.g. ``temperature_K``), the target (dashed)."""
    t = np.asarray(table["time_ps"])
    panels: list[tuple[str, list[tuple[str, str]]]] = []
    if "temperature_K" in table:
        panels.append(("T (K)", [("temperature_K", "T")]))
    energies = [(k, lab) for k, lab in (("potential_energy_eV_per_atom", "E_pot"),
                                        ("total_energy_eV_per_atom", "E_pot + E_kin"),
                                        ("conserved_energy_eV_per_atom", "conserved"))
                if k in table and _finite(table[k])]
    if energies:
        panels.append(("E (eV/atom)", energies))
    if "pressure_GPa" in table:
        panels.append(("P (GPa)", [("pressure_GPa", "P")]))
    volume = table.get("volume_A3_per_atom")
    if volume is not None and _finite(volume) and np.ptp(np.asarray(volume, dtype=float)) > 0:
        panels.append(("V / N (Å³/atom)", [("volume_A3_per_atom", "V/N")]))
    if "magnetization_per_atom_uB" in table:
        panels.append(("|M| / N (μB/atom)", [("magnetization_per_atom_uB", "|M|/N")]))
    if "max_grade" in table and _finite(table["max_grade"]):
        panels.append(("max γ", [("max_grade", "γ")]))
    fig, axes = _figure(len(panels))
    for ax, (ylabel, curves) in zip(axes, panels, strict=True):
        for k, (style, (key, label)) in enumerate(zip(_STYLES * 3, curves, strict=False)):
            values = np.asarray(table[key], dtype=float)
            ax.plot(t, values, style, color=f"C{k}", marker="." if len(t) < 60 else None, label=label)
            if key != "max_grade" and _finite(values):
                mean = float(np.nanmean(values))
                ax.axhline(mean, color=f"C{k}", ls=":", lw=0.9, label=f"average {label} = {mean:.4g}")
            if targets and key in targets and targets[key] is not None:
                ax.axhline(float(targets[key]), color="k", ls="--", lw=0.9,
                           label=f"target {label} = {float(targets[key]):.4g}")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    axes[-1].set_xlabel("time (ps)")
    fig.suptitle(title or "thermodynamics")
    return _save(fig, path)


# ============================================================== magnetisation
def plot_magnetisation(table: Mapping[str, np.ndarray], species: Sequence[str],
                       path: str | os.PathLike, title: str = "",
                       averages: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Mean moment ⟨m⟩ (solid) and mean magnitude ⟨|m|⟩ (dashed) per species vs time (ps),
    with the time averages as thin horizontal lines; a second panel shows |M|/N."""
    t = np.asarray(table["time_ps"])
    fig, axes = _figure(2, height_per_row=2.8)
    colors = [f"C{k}" for k in range(10)]
    for k, name in enumerate(species):
        key = f"mean_{name}_uB"
        if key not in table:
            continue
        c = colors[k % 10]
        axes[0].plot(t, table[key], "-", color=c, label=f"⟨m⟩ {name}")
        axes[0].plot(t, table[f"abs_mean_{name}_uB"], "--", color=c, label=f"⟨|m|⟩ {name}")
        if averages and key in averages and np.isfinite(averages[key][0]):
            axes[0].axhline(averages[key][0], color=c, ls=":", lw=0.9,
                            label=f"average ⟨m⟩ {name} = {averages[key][0]:.4g}")
    axes[0].set_ylabel("moment (μB/atom)")
    axes[0].legend(loc="best", fontsize="small", ncol=2)
    axes[0].grid(alpha=0.3)
    axes[1].plot(t, table["abs_M_per_atom_uB"], "-", color="k", label="|Σ m| / N")
    if averages and "abs_M_per_atom_uB" in averages:
        axes[1].axhline(averages["abs_M_per_atom_uB"][0], color="k", ls=":", lw=0.9,
                        label=f"average = {averages['abs_M_per_atom_uB'][0]:.4g}")
    axes[1].set_ylabel("|M| / N (μB/atom)")
    axes[1].set_xlabel("time (ps)")
    axes[1].legend(loc="best", fontsize="small")
    axes[1].grid(alpha=0.3)
    fig.suptitle(title or "magnetisation per species")
    return _save(fig, path)


# ============================================================== RDF
def plot_rdf(r: np.ndarray, total: np.ndarray, partial: Mapping[str, np.ndarray],
             path: str | os.PathLike, title: str = "",
             markers: Sequence[float] | None = None,
             coordination: Mapping[str, np.ndarray] | None = None,
             notes: Sequence[str] | None = None) -> Path:
    """g(r) of all atoms (black) and per species pair (coloured; only when there is more than
    one species), vertical dotted lines at ``markers`` (e.g. ideal shell radii); with
    ``coordination`` the running coordination number n(r) of all atoms on a right-hand axis,
    labelled at the first minimum of g(r) (the first-shell coordination number)."""
    fig, axes = _figure(1, height_per_row=3.8)
    ax = axes[0]
    ax.plot(r, total, "-", color="k", lw=1.6, label="g(r) total")
    if len(partial) > 1:
        for k, (name, g) in enumerate(partial.items()):
            ax.plot(r, g, _STYLES[k % len(_STYLES)], lw=1.0, label=name)
    for x in markers or ():
        ax.axvline(x, color="gray", ls=":", lw=0.8)
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.set_xlim(0, float(np.max(r)))
    handles, labels = ax.get_legend_handles_labels()
    if coordination is not None and "total" in coordination:
        n_r = np.asarray(coordination["total"])
        cx = ax.twinx()
        (line,) = cx.plot(r, n_r, "--", color="C3", lw=1.0)
        cx.set_ylabel("running coordination n(r)", color="C3")
        cx.set_ylim(bottom=0)
        handles.append(line)
        labels.append("n(r) total")
        shell = first_shell(r, np.asarray(total))
        if shell is not None:
            k = int(np.searchsorted(r, shell))
            cx.plot([r[k]], [n_r[k]], "o", color="C3", ms=4)
            cx.annotate(f"n = {n_r[k]:.2f} at {r[k]:.2f} Å", (r[k], n_r[k]), textcoords="offset points",
                        xytext=(6, -12), fontsize="small", color="C3")
    ax.legend(handles, labels, loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    _notes(ax, notes)
    fig.suptitle(title or "radial distribution function")
    return _save(fig, path)


def first_shell(r: np.ndarray, g: np.ndarray, smooth_A: float = 0.1) -> float | None:
    """r of the first minimum of g(r) after its first peak (the end of the first shell).

    g is smoothed over ``smooth_A`` first, so that the noise of a few frames does not make a
    minimum; None when g never exceeds 1 or has no minimum after its first peak.
    """
    g = np.asarray(g, dtype=float)
    if g.size < 5 or not np.any(g > 1.0):
        return None
    width = max(1, int(round(smooth_A / max(float(r[1] - r[0]), 1e-12))))
    if width > 1:
        g = np.convolve(g, np.ones(width) / width, mode="same")
    k = int(np.argmax(g > 1.0))
    while k + 1 < g.size and g[k + 1] >= g[k]:      # climb to the first peak
        k += 1
    while k + 1 < g.size and g[k + 1] <= g[k]:      # descend to the next minimum
        k += 1
    return float(r[k]) if k + 1 < g.size else None


# ============================================================== VACF and DOS
def plot_dos(freq_THz: np.ndarray, total: np.ndarray, partial: Mapping[str, np.ndarray],
             path: str | os.PathLike, title: str = "", vacf_time_fs: np.ndarray | None = None,
             vacf: Mapping[str, np.ndarray] | None = None, f_max: float | None = None,
             reference: tuple[np.ndarray, np.ndarray, str] | None = None,
             notes: Sequence[str] | None = None) -> Path:
    """Vibrational DOS (states/THz) vs frequency (THz), total (black, filled) and per species;
    optionally a ``reference`` curve (ν, g, label) and a lower panel with the normalised VACF."""
    rows = 2 if vacf is not None else 1
    fig, axes = _figure(rows, height_per_row=3.0, sharex=False)
    ax = axes[0]
    ax.fill_between(freq_THz, total, color="0.85")
    ax.plot(freq_THz, total, "-", color="k", lw=1.4, label="total")
    if len(partial) > 1:
        for k, (name, g) in enumerate(partial.items()):
            ax.plot(freq_THz, g, _STYLES[k % len(_STYLES)], color=f"C{k}", lw=1.1, label=name)
    if reference is not None:
        ax.plot(reference[0], reference[1], ":", color="C3", lw=1.2, label=reference[2])
    if f_max is None:
        # up to where the spectrum has fallen to 1 % of its peak for good, plus a margin
        above = np.flatnonzero(np.asarray(total) > 0.01 * float(np.max(total)))
        f_top = float(freq_THz[above[-1]]) if above.size else float(freq_THz[-1])
        f_max = min(float(freq_THz[-1]), 1.3 * f_top)
    ax.set_xlim(0, f_max)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("frequency ν (THz)")
    ax.set_ylabel("DOS (states/THz)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    _notes(ax, notes)
    if vacf is not None and vacf_time_fs is not None:
        bx = axes[1]
        for k, (name, c) in enumerate(vacf.items()):
            bx.plot(vacf_time_fs, c, "-" if name == "total" else _STYLES[(k + 1) % len(_STYLES)],
                    color="k" if name == "total" else f"C{k - 1}", label=name)
        bx.axhline(0.0, color="gray", lw=0.5)
        bx.set_xlabel("time (fs)")
        bx.set_ylabel("VACF C(t)/C(0)")
        bx.legend(loc="best", fontsize="small")
        bx.grid(alpha=0.3)
    fig.suptitle(title or "vibrational density of states")
    return _save(fig, path)


# ============================================================== MSD
def plot_msd(time_ps: np.ndarray, total: np.ndarray, partial: Mapping[str, np.ndarray],
             path: str | os.PathLike, title: str = "") -> Path:
    """MSD (Å²) vs time (ps), all atoms and per species."""
    fig, axes = _figure(1, height_per_row=3.6)
    ax = axes[0]
    ax.plot(time_ps, total, "-", color="k", lw=1.6, label="all atoms")
    if len(partial) > 1:
        for k, (name, y) in enumerate(partial.items()):
            ax.plot(time_ps, y, _STYLES[(k + 1) % len(_STYLES)], color=f"C{k}", label=name)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.suptitle(title or "mean-squared displacement")
    return _save(fig, path)


# ============================================================== lattice scans
def plot_scan(scans: Sequence, path: str | os.PathLike, title: str = "") -> Path:
    """E/N (eV/atom), P (GPa) and relaxed moments per species (μB) vs a (Å) for each
    :class:`~mmtp_hpc.analysis.scan.Scan`: the first solid with markers, others dashed."""
    fig, axes = _figure(3, height_per_row=2.5)
    for k, scan in enumerate(scans):
        style = "-o" if k == 0 else ("--s" if k == 1 else ":^")
        label = scan.label or f"model {k + 1}"
        axes[0].plot(scan.a, scan.energy_per_atom, style, ms=4, color=f"C{k}", label=label)
        axes[1].plot(scan.a, scan.pressure, style, ms=4, color=f"C{k}", label=label)
        for j, (name, m) in enumerate(scan.moment_mean.items()):
            axes[2].plot(scan.a, m, style, ms=4, color=f"C{k}", alpha=1.0 if j == 0 else 0.55,
                         label=f"{label}: {name}")
    axes[0].set_ylabel("E / N (eV/atom)")
    axes[1].set_ylabel("P (GPa)")
    axes[1].axhline(0.0, color="gray", lw=0.6)
    axes[2].set_ylabel("moment (μB)")
    axes[2].set_xlabel("lattice parameter a (Å)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title or "energy, pressure and relaxed moments vs lattice parameter")
    return _save(fig, path)
