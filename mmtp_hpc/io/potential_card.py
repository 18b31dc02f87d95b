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
