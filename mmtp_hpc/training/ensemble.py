"""Ensembles of potentials trained from different seeds, and their uncertainty (spec §4).

This module's single job is the ensemble: train N members with seeds seed, seed+1, …
(the seed sets the random start of the radial coefficients, so members end in different
minima), predict with all of them (mean and standard deviation of energy per atom,
forces, stress and ∂E/∂m — the standard deviation is the uncertainty estimate), and
summarise member errors and the ensemble spread.

The standard deviation is the population one (ddof = 0): it is defined for any ensemble
size and is what query-by-committee selection uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.parameters import MTPPotential
from mmtp_hpc.system.configuration import Configuration
from mmtp_hpc.training.fit import TrainResult, TrainSettings, train
from mmtp_hpc.training.report import (
    build_report,
    collect_predictions,
    error_report,
    report_summary,
)

Member = MTPPotential | MTPEngine


def train_ensemble(pot: MTPPotential, configs: list[Configuration], settings: TrainSettings,
                   n_members: int, comm=None, log: Callable[[str], None] | None = None) -> list[TrainResult]:
    """Train ``n_members`` potentials from ``pot`` with seeds ``settings.seed + i``."""
    if n_members < 1:
        raise InputError(f"an ensemble needs at least one member, got {n_members}", field="ensemble")
    if settings.init != "random" and n_members > 1:
        # without a random start every member would be the same potential
        raise InputError(f"an ensemble needs init = random (got {settings.init!r}): the seeds "
                         "only differ in the random initial parameters", field="ensemble")
    results = []
    for i in range(n_members):
        member_settings = dataclasses.replace(settings, seed=settings.seed + i)
        if log is not None:
            log(f"ensemble member {i + 1}/{n_members} (seed {member_settings.seed})")
        results.append(train(pot, configs, member_settings, comm=comm, log=log))
    return results


def _engines(members: Sequence[Member], num_threads: int | None = None) -> list[MTPEngine]:
    if not members:
        raise InputError("empty ensemble")
    return [m if isinstance(m, MTPEngine) else MTPEngine(m, num_threads=num_threads) for m in members]


def ensemble_predict(members: Sequence[Member], cfg: Configuration,
                     symmetric: bool | None = None) -> dict:
    """Mean and standard deviation over the members' predictions for one configuration.

    ``members`` are potentials or engines (pass engines to avoid re-preparing tables when
    predicting many configurations). Keys: ``energy_per_atom``/``energy_per_atom_std``
    (eV/atom), ``energy``/``energy_std`` (eV), ``forces``/``forces_std`` (N, 3) eV/Å,
    ``stress``/``stress_std`` (3, 3) GPa ASE sign, and for magnetic potentials
    ``magnetic_gradient``/``magnetic_gradient_std`` (N,) eV/μB (+∂E/∂m).
    """
    engines = _engines(members)
    outs = [e.evaluate(cfg, symmetric=symmetric) for e in engines]
    n = max(len(cfg), 1)
    result: dict = {}
    energies = np.array([o["energy"] for o in outs])
    result["energy"], result["energy_std"] = float(energies.mean()), float(energies.std())
    result["energy_per_atom"] = result["energy"] / n
    result["energy_per_atom_std"] = result["energy_std"] / n
    for key in ("forces", "stress"):
        stack = np.stack([o[key] for o in outs])
        result[key], result[f"{key}_std"] = stack.mean(axis=0), stack.std(axis=0)
    if all(e.pot.magnetic for e in engines):
        stack = np.stack([o["magnetic_gradient"] for o in outs])
        result["magnetic_gradient"] = stack.mean(axis=0)
        result["magnetic_gradient_std"] = stack.std(axis=0)
    else:
        result["magnetic_gradient"] = result["magnetic_gradient_std"] = None
    return result


def ensemble_evaluation(members: Sequence[Member], configs: Sequence[Configuration],
                        species_names: Sequence[str] | None = None, symmetric: bool | None = None,
                        comm=None, num_threads: int | None = None) -> tuple[dict, dict]:
    """(error report of the ensemble-mean prediction, spread of the ensemble) on ``configs``.

    Spread: mean and largest σ of the energy per atom (meV/atom), root mean square and
    largest σ of force components (eV/Å) and of ∂E/∂m (eV/μB).
    """
    engines = _engines(members, num_threads)
    preds = collect_predictions(configs, lambda cfg: ensemble_predict(engines, cfg, symmetric), comm)
    pot0 = engines[0].pot
    names = species_names if species_names is not None else pot0.species_names
    report = build_report(configs, preds, names, pot0.species_count)
    spread: dict = {"n_configurations": len(configs), "n_members": len(engines)}
    if preds:
        e_std = np.array([p["energy_per_atom_std"] for p in preds]) * 1000.0
        f_std = np.concatenate([p["forces_std"].ravel() for p in preds])
        spread["energy_std_mean"] = float(e_std.mean())
        spread["energy_std_max"] = float(e_std.max())
        spread["force_std_rms"] = float(np.sqrt(np.mean(f_std ** 2))) if f_std.size else 0.0
        spread["force_std_max"] = float(f_std.max()) if f_std.size else 0.0
        if preds[0]["magnetic_gradient_std"] is not None:
            m_std = np.concatenate([p["magnetic_gradient_std"] for p in preds])
            spread["magnetic_gradient_std_rms"] = float(np.sqrt(np.mean(m_std ** 2)))
            spread["magnetic_gradient_std_max"] = float(m_std.max())
    spread["units"] = {"energy": "meV/atom", "force": "eV/Å", "magnetic_gradient": "eV/μB"}
    return report, spread


def ensemble_summary(results: Sequence[TrainResult], train_configs: Sequence[Configuration],
                     valid_configs: Sequence[Configuration] | None = None,
                     species_names: Sequence[str] | None = None, comm=None,
                     num_threads: int | None = None, files: Sequence[str] | None = None,
                     member_reports: Sequence[tuple[dict, dict | None]] | None = None,
                     ) -> tuple[dict, tuple[dict, dict | None]]:
    """Per-member train/validation errors, ensemble-mean errors and the spread.

    Returns (summary, (report of the ensemble mean on the training set, on the validation
    set or None)); the summary holds plain numbers only (JSON-ready). ``member_reports``
    ((train, validation) error reports per member) saves re-evaluating them when the caller
    has them already. The spread is measured on the validation set when there is one,
    otherwise on the training set (``spread["set"]`` says which).
    """
    pots = [r.potential for r in results]
    if member_reports is None:
        member_reports = [
            (error_report(p, train_configs, species_names=species_names, comm=comm, num_threads=num_threads),
             error_report(p, valid_configs, species_names=species_names, comm=comm, num_threads=num_threads)
             if valid_configs else None)
            for p in pots]
    members = []
    for i, (r, (rep_train, rep_valid)) in enumerate(zip(results, member_reports, strict=True)):
        entry: dict = {"index": i, "seed": r.settings.get("seed"), "wall_time_s": r.wall_time,
                       "iterations": r.history[-1]["iteration"] if r.history else 0}
        if files is not None:
            entry["file"] = str(files[i])
        entry["train"] = report_summary(rep_train)
        if rep_valid is not None:
            entry["validation"] = report_summary(rep_valid)
        members.append(entry)
    summary: dict = {"n_members": len(pots), "members": members, "ensemble_mean": {}}
    mean_train, spread = ensemble_evaluation(pots, train_configs, species_names, comm=comm,
                                             num_threads=num_threads)
    summary["ensemble_mean"]["train"] = report_summary(mean_train)
    spread_set, mean_valid = "train", None
    if valid_configs:
        mean_valid, spread = ensemble_evaluation(pots, valid_configs, species_names, comm=comm,
                                                 num_threads=num_threads)
        summary["ensemble_mean"]["validation"] = report_summary(mean_valid)
        spread_set = "validation"
    summary["spread"] = {"set": spread_set, **spread}
    return summary, (mean_train, mean_valid)


def format_ensemble_summary(summary: dict) -> str:
    """A short text version: one line per member and the spread."""
    lines = [f"ensemble of {summary['n_members']} potentials"]

    def brief(s: dict | None) -> str:
        if not s:
            return "-"
        parts = []
        for key, label in (("energy", "E"), ("forces", "F"), ("stress", "S"), ("magnetic_gradient", "dE/dm")):
            if key in s and s[key].get("count"):
                parts.append(f"{label} {s[key]['rmse']:.4g} {s[key]['unit']}")
        return ", ".join(parts) or "-"

    for m in summary["members"]:
        where = f" -> {m['file']}" if "file" in m else ""
        lines.append(f"  member {m['index']} (seed {m['seed']}){where}")
        lines.append(f"    train RMSE: {brief(m.get('train'))}")
        if "validation" in m:
            lines.append(f"    validation RMSE: {brief(m.get('validation'))}")
    mean = summary.get("ensemble_mean", {})
    lines.append(f"  ensemble mean, train RMSE: {brief(mean.get('train'))}")
    if "validation" in mean:
        lines.append(f"  ensemble mean, validation RMSE: {brief(mean.get('validation'))}")
    sp = summary["spread"]
    text = (f"  spread (σ over members) on the {sp['set']} set ({sp['n_configurations']} configurations): "
            f"energy mean {sp.get('energy_std_mean', 0):.4g} / max {sp.get('energy_std_max', 0):.4g} "
            f"meV/atom, forces rms {sp.get('force_std_rms', 0):.4g} / max "
            f"{sp.get('force_std_max', 0):.4g} eV/Å")
    if "magnetic_gradient_std_rms" in sp:
        text += (f", dE/dm rms {sp['magnetic_gradient_std_rms']:.4g} / max "
                 f"{sp['magnetic_gradient_std_max']:.4g} eV/μB")
    lines.append(text)
    return "\n".join(lines)
