"""The card of a potential: what it was trained on, stored beside it as ``<file>.card.json``.

A shipped potential states its training range (DEVELOPERS' standards): species, numbers of
configurations and atoms, the volume per atom and the equivalent lattice parameter of a 2-atom
cubic cell (bcc/B2: a = (2·V/N)^(1/3)), the moments per species, the labels present, and who
labelled the data (the oracle and its DFT settings). MLIP-3's formats have no place for this,
so it lives in a JSON file next to the potential; ``mmtp info`` prints it, and results outside
the range are extrapolations (the extrapolation grade says how far).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.system.configuration import Configuration

SUFFIX = ".card.json"


def card_path(potential: str | os.PathLike) -> Path:
    p = Path(potential)
    return p.with_name(p.name + SUFFIX)


def training_range(configs: Sequence[Configuration], species: Sequence[str]) -> dict[str, Any]:
    """Ranges of a training set (see the module doc)."""
    if not configs:
        raise InputError("an empty training set has no range")
    vpa = np.array([c.volume / len(c) for c in configs if c.pbc.all()])
    out: dict[str, Any] = {"species": list(species), "configurations": len(configs),
                           "atoms": int(sum(len(c) for c in configs)),
                           "atoms_per_configuration": sorted({len(c) for c in configs})}
    if vpa.size:
        out["volume_per_atom_A3"] = [round(float(vpa.min()), 4), round(float(vpa.max()), 4)]
        a2 = np.cbrt(2.0 * vpa)
        out["cubic2_lattice_parameter_A"] = [round(float(a2.min()), 4), round(float(a2.max()), 4)]
    moments: dict[str, list[float]] = {}
    for t, s in enumerate(species):
        vals = [c.magmoms[c.types == t] for c in configs if c.magmoms is not None and np.any(c.types == t)]
        if vals:
            v = np.concatenate(vals)
            moments[s] = [round(float(v.min()), 3), round(float(v.max()), 3)]
    if moments:
        out["moments_uB"] = moments
    anti = sum(1 for c in configs if c.magmoms is not None
               and np.any(c.magmoms > 0.1) and np.any(c.magmoms < -0.1))
    out["configurations_with_antiparallel_moments"] = anti
    out["labels"] = {name: sum(1 for c in configs if getattr(c, attr) is not None)
                     for name, attr in (("energy", "energy"), ("forces", "forces"), ("stress", "virial"),
                                        ("dE/dm", "magnetic_gradient"))}
    return out


def write_card(potential: str | os.PathLike, card: Mapping[str, Any]) -> Path:
    from mmtp_hpc.io.atomic import atomic_path

    path = card_path(potential)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_card(potential: str | os.PathLike) -> dict[str, Any] | None:
    """The card beside ``potential``, or None when there is none; a malformed one is an error."""
    path = card_path(potential)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the potential card: {exc}", path=str(path)) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=str(path))
    return data


def range_warnings(card: Mapping[str, Any] | None, n_atoms: int, volume: float | None,
                   moments: Mapping[str, tuple[float, float]] | None = None) -> list[str]:
    """What of a system lies outside the training range on ``card`` (one line each; empty when
    all lies inside or there is no card): the volume per atom, the moments per species (``moments``:
    symbol → (min, max) over the system's atoms), species the potential was not trained on, and
    a larger cell where every training cell had at most 4 atoms (each atom there sees periodic
    copies of one or two environments: phonons of other wave vectors and non-uniform moments
    go beyond them). A potential marked "not physics" on its card says so too. These are
    warnings: the extrapolation grade measures how far a configuration is from the training set."""
    if not card:
        return []
    out = []
    text = f"{card.get('description', '')} {card.get('status', '')}"
    if "NOT PHYSICS" in text.upper():
        out.append("the potential's card says it is not physics (fitted to the analytic model): "
                   "its numbers are for tests and demonstrations only")
    tr = card.get("training") or {}
    vr = tr.get("volume_per_atom_A3")
    if volume is not None and vr and n_atoms > 0:
        vpa = volume / n_atoms
        if not vr[0] * (1 - 1e-6) <= vpa <= vr[1] * (1 + 1e-6):
            a2 = (2.0 * vpa) ** (1.0 / 3.0)
            out.append(f"the volume per atom, {vpa:.3f} Å³ (a = {a2:.3f} Å for a 2-atom cubic cell), is "
                       f"outside the training range {vr[0]}–{vr[1]} Å³")
    sizes = tr.get("atoms_per_configuration") or []
    if sizes and max(sizes) <= 4 < n_atoms:
        out.append(f"the potential was trained on cells of {' and '.join(map(str, sizes))} atoms only; "
                   f"in {n_atoms} atoms the local environments (other phonons, non-uniform moments) "
                   "go beyond its training range: watch the extrapolation grade ([extrapolation] every)")
    trained = tr.get("moments_uB") or {}
    known = tr.get("species") or []
    for sym, (lo, hi) in (moments or {}).items():
        if known and sym not in known:
            out.append(f"species {sym} is not in the potential's training set ({', '.join(known)})")
        elif sym in trained:
            tlo, thi = trained[sym]
            if lo < tlo - 1e-9 or hi > thi + 1e-9:
                out.append(f"the moments of {sym} span {lo:+.2f} … {hi:+.2f} μB, outside the training "
                           f"range {tlo:+.2f} … {thi:+.2f} μB")
    return out


def card_lines(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, value) lines for ``mmtp info``."""
    rows = []
    tr = card.get("training", {})
    if card.get("description"):
        rows.append(("description", str(card["description"])))
    if card.get("status"):
        rows.append(("status", str(card["status"])))
    if tr:
        rows.append(("trained on", f"{tr.get('configurations')} configurations, {tr.get('atoms')} atoms "
                                   f"({', '.join(map(str, tr.get('atoms_per_configuration', [])))} per cell)"))
        if "cubic2_lattice_parameter_A" in tr:
            lo, hi = tr["cubic2_lattice_parameter_A"]
            v0, v1 = tr.get("volume_per_atom_A3", [None, None])
            rows.append(("lattice range", f"a = {lo:.3f}–{hi:.3f} Å (2-atom cubic cell; {v0}–{v1} Å³/atom)"))
        for s, (lo, hi) in tr.get("moments_uB", {}).items():
            rows.append((f"moments {s}", f"{lo:+.2f} … {hi:+.2f} μB"))
        if tr.get("configurations_with_antiparallel_moments"):
            rows.append(("antiparallel", f"{tr['configurations_with_antiparallel_moments']} configurations"))
        if tr.get("labels"):
            rows.append(("labels", ", ".join(f"{k} {v}" for k, v in tr["labels"].items())))
    if card.get("oracle"):
        o = card["oracle"]
        rows.append(("labelled by", ", ".join(f"{k} {v}" for k, v in o.items() if not isinstance(v, dict))))
        for k, v in o.items():
            if isinstance(v, dict):
                rows.append((f"  {k}", ", ".join(f"{kk} = {vv}" for kk, vv in v.items())))
    if card.get("labels_computed"):
        lc = card["labels_computed"]
        rows.append(("DFT runs", f"{lc.get('runs')} ({lc.get('failed', 0)} failed), "
                                 f"{lc.get('core_hours')} core-hours"))
    if card.get("final_refit"):
        fr = card["final_refit"]
        errs = fr.get("errors", {})
        parts = [f"{name} {errs[key]:.3g} {unit}" for key, name, unit in (
            ("energy_rmse", "E", "meV/atom"), ("force_rmse", "F", "eV/Å"), ("stress_rmse", "S", "GPa"),
            ("magnetic_rmse", "dE/dm", "eV/μB")) if isinstance(errs.get(key), (int, float))]
        rows.append(("training RMSE", ", ".join(parts) + f" (final refit, {fr.get('max_iter')} iterations)"))
    for text in card.get("limits", []) or []:
        rows.append(("limits", str(text)))
    if card.get("validation"):
        rows.append(("validation", str(card["validation"])))
    return rows
