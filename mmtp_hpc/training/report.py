"""Error report of a potential on labelled data (spec §4 "quality reported per quantity").

This module's single job is to compare predictions with labels and present the result:
RMSE, MAE and largest error of

* energy per atom (meV/atom),
* forces (eV/Å, per Cartesian component; also per species),
* stress (GPa, ASE sign, the 6 unique components xx yy zz yz xz xy; only configurations
  with a virial label and periodic in all three directions),
* ∂E/∂m (eV/μB, MLIP-3's +∂E/∂m; per species; only for a magnetic potential),

each only where the data have the label, with the counts. The report also keeps the
per-configuration (energy, stress) and per-atom (forces, ∂E/∂m) reference and predicted
values for parity plots. :func:`format_report` renders a text table and
:func:`parity_plot` a PNG (matplotlib, Agg canvas, no display needed).

The same RMSE definitions as the training log (:func:`mmtp_hpc.training.loss.rmse_from_sums`)
are used, so the numbers printed after training agree with the last logged iteration.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from mmtp_hpc.parallel.comm import SerialComm
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA, Configuration

# quantity key -> (label in tables and plots, error unit, unit of the stored values,
#                  factor from the value unit to the error unit)
QUANTITIES: dict[str, tuple[str, str, str, float]] = {
    "energy": ("energy per atom", "meV/atom", "eV/atom", 1000.0),
    "forces": ("forces", "eV/Å", "eV/Å", 1.0),
    "stress": ("stress", "GPa", "GPa", 1.0),
    "magnetic_gradient": ("dE/dm", "eV/μB", "eV/μB", 1.0),
}
# Voigt order of the 6 unique stress components
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
_VOIGT_ROWS = np.array([a for a, _ in VOIGT])
_VOIGT_COLS = np.array([b for _, b in VOIGT])

Prediction = dict
Predictor = Callable[[Configuration], Prediction]


# --------------------------------------------------------------------------- predictions
def engine_predictor(pot: MTPPotential, symmetric: bool | None = None,
                     num_threads: int | None = None) -> Predictor:
    """cfg → {energy (eV), forces (N,3) eV/Å, stress (3,3) GPa ASE sign, magnetic_gradient}."""
    from mmtp_hpc.potentials.mtp.engine import MTPEngine

    engine = MTPEngine(pot, num_threads=num_threads)

    def predict(cfg: Configuration) -> Prediction:
        out = engine.evaluate(cfg, symmetric=symmetric)
        return {"energy": out["energy"], "forces": out["forces"], "stress": out["stress"],
                "magnetic_gradient": out["magnetic_gradient"] if pot.magnetic else None}

    return predict


def collect_predictions(configs: Sequence[Configuration], predict: Predictor,
                        comm=None) -> list[Prediction]:
    """``predict`` applied to every configuration, in order.

    With a communicator the configurations are shared round robin and the results are
    gathered on every rank (pickled: a report is made once per run, and every rank then
    holds the same report, so callers need no rank-dependent control flow).
    """
    comm = comm if comm is not None else SerialComm()
    rank, size = comm.Get_rank(), comm.Get_size()
    mine = {k: predict(cfg) for k, cfg in enumerate(configs) if k % size == rank}
    if size == 1:
        return [mine[k] for k in range(len(configs))]
    merged: dict[int, Prediction] = {}
    for part in comm.allgather(mine):
        merged.update(part)
    return [merged[k] for k in range(len(configs))]


# --------------------------------------------------------------------------- statistics
def _stats(pred: np.ndarray, ref: np.ndarray, factor: float) -> dict:
    err = (np.asarray(pred) - np.asarray(ref)).ravel() * factor
    if err.size == 0:
        return {"count": 0}
    return {"count": int(err.size), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "mae": float(np.mean(np.abs(err))), "max_abs": float(np.max(np.abs(err)))}


def _relative(diff: np.ndarray, ref: np.ndarray) -> dict:
    """MLIP-3's relative errors over rows (atoms or configurations) of vectors:
    RMS(diff)/RMS(ref) = sqrt(Σ|Δ|²/Σ|ref|²) and Max(diff)/Max(ref) = max|Δ_i|/max|ref_i|."""
    diff, ref = np.asarray(diff), np.asarray(ref)
    if diff.size == 0:
        return {}
    ref_sq, diff_sq = float(np.sum(ref ** 2)), float(np.sum(diff ** 2))
    ref_max = float(np.max(np.linalg.norm(ref, axis=1)))
    return {"rms_relative": np.sqrt(diff_sq / ref_sq) if ref_sq > 0 else float("inf"),
            "max_relative": float(np.max(np.linalg.norm(diff, axis=1))) / ref_max if ref_max > 0
            else float("inf")}


def _per_species(pred: np.ndarray, ref: np.ndarray, types: np.ndarray, names: list[str],
                 factor: float) -> dict:
    out = {}
    for t in np.unique(types):
        sel = types == t
        out[names[t] if t < len(names) else f"type {t}"] = _stats(pred[sel], ref[sel], factor)
    return out


def species_labels(n_species: int, species_names: Sequence[str] | None) -> list[str]:
    """Names for types 0..C-1: the given symbols, or ``type k``."""
    if species_names is not None and len(species_names) >= n_species:
        return [str(s) for s in species_names]
    return [f"type {t}" for t in range(n_species)]


def build_report(configs: Sequence[Configuration], predictions: Sequence[Prediction],
                 species_names: Sequence[str] | None = None, n_species: int | None = None) -> dict:
    """The report from predictions (see :func:`engine_predictor` for their keys and units)."""
    n_species = n_species or (1 + max((int(c.types.max()) for c in configs if len(c)), default=0))
    names = species_labels(n_species, species_names)
    report: dict = {"n_configurations": len(configs), "n_atoms": int(sum(len(c) for c in configs)),
                    "species_names": names}
    e_ref, e_pred, e_idx = [], [], []
    f_ref, f_pred, f_types, f_idx = [], [], [], []
    s_ref, s_pred, s_idx, s_vol = [], [], [], []
    m_ref, m_pred, m_types, m_idx = [], [], [], []
    for k, (cfg, out) in enumerate(zip(configs, predictions, strict=True)):
        n = len(cfg)
        if cfg.energy is not None and n > 0:
            e_ref.append(cfg.energy / n)
            e_pred.append(out["energy"] / n)
            e_idx.append(k)
        if cfg.forces is not None:
            f_ref.append(cfg.forces)
            f_pred.append(out["forces"])
            f_types.append(cfg.types)
            f_idx.append(np.full(n, k))
        if cfg.virial is not None and bool(np.all(cfg.pbc)) and out.get("stress") is not None:
            # both sides as ASE-sign stress in GPa: −PlusStress / V
            ref = -cfg.virial / cfg.volume * EV_PER_A3_TO_GPA
            s_ref.append(ref[_VOIGT_ROWS, _VOIGT_COLS])
            s_pred.append(np.asarray(out["stress"])[_VOIGT_ROWS, _VOIGT_COLS])
            s_idx.append(k)
            s_vol.append(cfg.volume)
        if cfg.magnetic_gradient is not None and out.get("magnetic_gradient") is not None:
            m_ref.append(cfg.magnetic_gradient)
            m_pred.append(out["magnetic_gradient"])
            m_types.append(cfg.types)
            m_idx.append(np.full(n, k))
    if e_idx:
        ref, pred = np.array(e_ref), np.array(e_pred)
        report["energy"] = {**_stats(pred, ref, 1000.0), "reference": ref, "predicted": pred,
                            "config_index": np.array(e_idx)}
    if f_ref:
        ref, pred = np.concatenate(f_ref), np.concatenate(f_pred)
        types = np.concatenate(f_types)
        report["forces"] = {**_stats(pred, ref, 1.0), **_relative(pred - ref, ref),
                            "reference": ref, "predicted": pred,
                            "types": types, "config_index": np.concatenate(f_idx),
                            "per_species": _per_species(pred, ref, types, names, 1.0)}
    if s_idx:
        ref, pred = np.array(s_ref), np.array(s_pred)
        # MLIP-3 compares full 3×3 PlusStress tensors in eV (off-diagonal terms count twice)
        to_virial = np.array(s_vol)[:, None] / EV_PER_A3_TO_GPA * np.sqrt([1, 1, 1, 2, 2, 2])
        report["stress"] = {**_stats(pred, ref, 1.0), **_relative((pred - ref) * to_virial, ref * to_virial),
                            "reference": ref, "predicted": pred,
                            "config_index": np.array(s_idx)}
    if m_ref:
        ref, pred = np.concatenate(m_ref), np.concatenate(m_pred)
        types = np.concatenate(m_types)
        # the error if the labels had the other sign (−∂E/∂m, the magnetic force): a sign check
        opposite = float(np.sqrt(np.mean((pred + ref) ** 2))) if ref.size else float("nan")
        report["magnetic_gradient"] = {**_stats(pred, ref, 1.0), "rmse_opposite_sign": opposite,
                                       "reference": ref, "predicted": pred,
                                       "types": types, "config_index": np.concatenate(m_idx),
                                       "per_species": _per_species(pred, ref, types, names, 1.0)}
    for key, (_, unit, value_unit, _) in QUANTITIES.items():
        if key in report:
            report[key]["unit"] = unit
            report[key]["values_unit"] = value_unit
    return report


def error_report(pot: MTPPotential, configs: Sequence[Configuration], symmetric: bool | None = None,
                 species_names: Sequence[str] | None = None, comm=None,
                 num_threads: int | None = None) -> dict:
    """RMSE/MAE/max error per quantity of ``pot`` on ``configs`` and the values behind them.

    ``symmetric`` (default: the potential's flag) selects the spin-symmetrised prediction.
    ``species_names`` (default: the potential's) label the per-species errors. With ``comm``
    the evaluation is shared between ranks and every rank returns the same report.

    Returns ``{"n_configurations", "n_atoms", "species_names", QUANTITY: {...}}`` where
    QUANTITY is present only when some configuration has that label and is one of
    ``energy`` (errors in meV/atom, values in eV/atom, one per configuration), ``forces``
    (eV/Å; values (n, 3) for all atoms with force labels, ``types``, ``per_species``),
    ``stress`` (GPa, ASE sign; values (k, 6) in Voigt order) and ``magnetic_gradient``
    (+∂E/∂m, eV/μB; ``types``, ``per_species``). Each has ``count`` (compared numbers),
    ``rmse``, ``mae``, ``max_abs``, ``unit``, ``values_unit``, ``reference``,
    ``predicted`` and ``config_index`` (the configuration of every value).
    """
    predictions = collect_predictions(configs, engine_predictor(pot, symmetric, num_threads), comm)
    names = species_names if species_names is not None else pot.species_names
    report = build_report(configs, predictions, names, pot.species_count)
    report["symmetric"] = bool(pot.symmetric if symmetric is None else symmetric) and pot.magnetic
    return report


def report_summary(report: dict) -> dict:
    """The report without the per-value arrays: plain numbers, fit for JSON."""
    out: dict = {}
    for key, value in report.items():
        if key in QUANTITIES:
            out[key] = {k: v for k, v in value.items() if not isinstance(v, np.ndarray)}
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- text
def format_report(report: dict, title: str = "errors") -> str:
    """A text table: one row per quantity (and per species for forces and ∂E/∂m)."""
    lines = [f"{title}: {report['n_configurations']} configurations, {report['n_atoms']} atoms"
             + ("  (spin-symmetrised)" if report.get("symmetric") else "")]
    header = f"  {'quantity':<20s} {'unit':<10s} {'count':>9s} {'RMSE':>12s} {'MAE':>12s} {'max|err|':>12s}"
    rows = []

    def row(label: str, unit: str, st: dict) -> str:
        if not st.get("count"):
            return f"  {label:<20s} {unit:<10s} {0:>9d} {'-':>12s} {'-':>12s} {'-':>12s}"
        return (f"  {label:<20s} {unit:<10s} {st['count']:>9d} {st['rmse']:>12.6g} "
                f"{st['mae']:>12.6g} {st['max_abs']:>12.6g}")

    for key, (label, unit, _, _) in QUANTITIES.items():
        if key not in report:
            continue
        rows.append(row(label, unit, report[key]))
        per = report[key].get("per_species", {})
        if len(per) > 1:  # one species would only repeat the total
            for name, st in per.items():
                rows.append(row(f"  {name}", unit, st))
    if not rows:
        lines.append("  no labels to compare with")
    else:
        lines.append(header)
        lines.extend(rows)
    relative = [f"{name} RMS(Δ)/RMS = {report[key]['rms_relative']:.6g}, Max(Δ)/Max = "
                f"{report[key]['max_relative']:.6g}"
                for key, name in (("forces", "forces"), ("stress", "stress"))
                if "rms_relative" in report.get(key, {})]
    if relative:
        lines.append("relative errors as MLIP-3 reports them: " + "; ".join(relative))
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
_MAX_POINTS = 200_000  # per set and panel: beyond this a scatter plot only gets slower


def _thin(ref: np.ndarray, pred: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ref, pred = np.ravel(ref), np.ravel(pred)
    if ref.size > _MAX_POINTS:
        keep = np.sort(rng.choice(ref.size, _MAX_POINTS, replace=False))
        ref, pred = ref[keep], pred[keep]
    return ref, pred


def parity_plot(report_train: dict | None, report_valid: dict | None, path: str | os.PathLike,
                dpi: int = 130) -> list[str]:
    """Write a PNG of predicted vs reference values, one panel per quantity present.

    Training points and validation points get different colours; each panel has the y = x
    line, axis labels with units and the RMSE of each set in the legend. Returns the
    quantities plotted. The file is replaced atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mmtp_hpc.io.atomic import atomic_path

    sets = [(r, name, colour) for r, name, colour in
            ((report_train, "train", "tab:blue"), (report_valid, "validation", "tab:orange"))
            if r is not None]
    keys = [k for k in QUANTITIES if any(k in r for r, _, _ in sets)]
    n_panels = max(len(keys), 1)
    fig = Figure(figsize=(4.6 * n_panels, 4.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    rng = np.random.default_rng(0)  # fixed: the same data give the same picture
    axis_names = {"energy": "energy per atom", "forces": "force component",
                  "stress": "stress component", "magnetic_gradient": r"$\partial E/\partial m$"}
    if not keys:
        axes[0].text(0.5, 0.5, "no labels to compare with", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, key in zip(axes, keys, strict=False):
        _, unit, value_unit, _ = QUANTITIES[key]
        lo, hi = np.inf, -np.inf
        for report, name, colour in sets:
            if key not in report:
                continue
            q = report[key]
            ref, pred = _thin(q["reference"], q["predicted"], rng)
            if ref.size == 0:
                continue
            lo = min(lo, float(ref.min()), float(pred.min()))
            hi = max(hi, float(ref.max()), float(pred.max()))
            shown = "" if ref.size == q["reference"].size else f", {ref.size} shown"
            ax.scatter(ref, pred, s=6 if ref.size > 2000 else 14, alpha=0.6, color=colour,
                       edgecolors="none", rasterized=True,
                       label=f"{name}: RMSE {q['rmse']:.4g} {unit} (n={q['count']}{shown})")
        if np.isfinite(lo):
            pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.05
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=1, ls="--",
                    label="y = x")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"reference {axis_names[key]} ({value_unit})")
        ax.set_ylabel(f"predicted {axis_names[key]} ({value_unit})")
        ax.set_title(r"$\partial E/\partial m$" if key == "magnetic_gradient" else QUANTITIES[key][0])
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize="small", framealpha=0.8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return keys
