"""``mmtp info FILE``: summarise a potential, a data file, an MD trajectory or a checkpoint."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

POTENTIAL_SUFFIXES = {".mtp", ".almtp", ".mtpr"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a potential, configurations, a trajectory or a checkpoint")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--en-der-sign", type=int, choices=(1, -1), default=1)
    p.set_defaults(func=run)


def open_trajectory(path: Path):
    from mmtp_hpc.io.trajectory_frames import open_trajectory as _open

    return _open(path)


def h5_kind(path: Path) -> str | None:
    """The ``kind`` attribute of an HDF5 file written by mmtp_hpc (None for other files)."""
    if path.suffix not in (".h5", ".hdf5"):
        return None
    import h5py

    from mmtp_hpc.io import schema
    try:
        with open_trajectory(path) as f:   # also a trajectory being written
            kind = f.attrs.get(schema.KIND_ATTR)
    except OSError:
        return None
    return kind.decode() if isinstance(kind, bytes) else kind


def trajectory_summary(path: Path) -> dict:
    """Frames, atoms, species, time span and spacing, averages, and what the frames allow."""
    import numpy as np

    from mmtp_hpc.io.trajectory_frames import read_frames

    t = read_frames(path, names=["temperature", "potential_energy", "pressure", "volume"])
    n, f = t.n_atoms, t.n_frames
    counts = {(t.species[k] if k < len(t.species) else f"type {k}"): int(c)
              for k, c in enumerate(np.bincount(t.types)) if c}
    md = t.settings.get("md", {}) if isinstance(t.settings, dict) else {}
    from mmtp_hpc.io.trajectory_frames import trajectory_layout

    info = {"file": str(path), "kind": "MD trajectory",
            "layout": "H5MD 1.1" if trajectory_layout(path) == "h5md" else "first layout (/frames)",
            "frames": f, "atoms": n, "species": counts,
            "ensemble": md.get("ensemble"), "potential": _potential_file(t.settings)}
    if f:
        info["steps"] = f"{int(t.step[0])} → {int(t.step[-1])}"
        info["time_ps"] = f"{t.time[0] / 1000:.4g} → {t.time[-1] / 1000:.4g}"
    if f > 1:
        dt = float(np.median(np.diff(t.time)))
        info["frame_spacing_fs"] = dt
        info["vdos_nyquist_THz"] = round(500.0 / dt, 4)
        info["vdos_resolution_THz"] = round(1000.0 / (0.5 * (t.time[-1] - t.time[0])), 4)
    for name, unit, scale in (("temperature", "K", 1.0), ("potential_energy", "eV/atom", 1.0 / max(n, 1)),
                              ("pressure", "GPa", 1.0), ("volume", "Å³/atom", 1.0 / max(n, 1))):
        if name in t.data and f:
            info[f"mean_{name}"] = f"{float(np.mean(t.data[name])) * scale:.6g} {unit}"
    info["datasets"] = sorted(t.available)
    return info


def _potential_file(settings: object) -> str | None:
    pot = settings.get("potential") if isinstance(settings, dict) else None
    return pot.get("file") if isinstance(pot, dict) else pot


def checkpoint_summary(path: Path) -> dict:
    """Step, time, atoms, species, energy, the potential and why the run stopped."""
    import numpy as np

    from mmtp_hpc.io.checkpoint import read_checkpoint

    c = read_checkpoint(path)
    types = np.asarray(c.state["types"])
    n = len(types)
    md = c.settings.get("md", {}) if isinstance(c.settings, dict) else {}
    return {"file": str(path), "kind": "MD checkpoint", "step": int(c.step),
            "target_steps": md.get("steps"), "time_ps": c.time / 1000.0, "atoms": n,
            "species": {(c.species[k] if k < len(c.species) else f"type {k}"): int(v)
                        for k, v in enumerate(np.bincount(types)) if v},
            "potential_energy": f"{c.energy / max(n, 1):.6g} eV/atom", "ensemble": md.get("ensemble"),
            "potential": c.potential, "potential_sha256": c.potential_sha256,
            "stop_reason": c.stop_reason or "-"}


def is_potential(path: Path) -> bool:
    if path.suffix in POTENTIAL_SUFFIXES:
        return True
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        from mmtp_hpc.io import schema
        with open_trajectory(path) as f:   # also a trajectory being written
            return f.attrs.get(schema.KIND_ATTR) == schema.KIND_POTENTIAL
    return False


def potential_summary(path: Path) -> dict:
    from mmtp_hpc.io.potential_card import read_card
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    pot = load_potential(path)
    out = {"file": str(path), "kind": "potential", **pot.summary()}
    card = read_card(path)
    if card is not None:
        out["card"] = card
    return out


def data_summary(path: Path, en_der_sign: int) -> dict:
    from mmtp_hpc.io.formats import read_configurations
    configs = read_configurations(path, en_der_sign=en_der_sign)
    species = Counter()
    labels = Counter()
    for cfg in configs:
        species.update(cfg.types.tolist())
        labels.update(cfg.labels_present())
        if "MV_grade" in cfg.features:
            labels["MV_grade"] += 1
    sizes = [len(c) for c in configs]
    return {"file": str(path), "kind": "configurations", "configurations": len(configs),
            "atoms": int(sum(sizes)), "atoms_min": min(sizes, default=0), "atoms_max": max(sizes, default=0),
            "types": {int(k): int(v) for k, v in sorted(species.items())},
            "labels": {k: int(v) for k, v in sorted(labels.items())}}


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.io.trajectory_frames import is_trajectory

    path = Path(args.file)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    from mmtp_hpc.io import schema

    kind = h5_kind(path)
    if kind == "checkpoint":
        with schema.reading(path, "checkpoint"):
            info = checkpoint_summary(path)
    elif kind == "trajectory" or (path.suffix in (".h5", ".hdf5") and is_trajectory(path)):
        with schema.reading(path, "trajectory"):
            info = trajectory_summary(path)
    elif path.suffix in (".h5", ".hdf5"):
        with schema.reading(path, kind or "HDF5"):
            info = potential_summary(path) if is_potential(path) else data_summary(path, args.en_der_sign)
    else:
        info = potential_summary(path) if is_potential(path) else data_summary(path, args.en_der_sign)
    if args.json:
        print(json.dumps(info))
        return 0
    card = info.pop("card", None)
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    if card is not None:
        from mmtp_hpc.io.potential_card import card_lines

        rows = card_lines(card)
        w = max((len(k) for k, _ in rows), default=0)
        print("training range and provenance (" + path.name + ".card.json):")
        for key, value in rows:
            print(f"  {key:<{w}}  {value}")
    elif info.get("kind") == "potential":
        print("no card beside this potential (" + path.name + ".card.json): its training range is not recorded")
    return 0
