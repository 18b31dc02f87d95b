"""``mmtp info FILE``: summarise a potential or a data file."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

POTENTIAL_SUFFIXES = {".mtp", ".almtp", ".mtpr"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a potential or a configuration file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--en-der-sign", type=int, choices=(1, -1), default=1)
    p.set_defaults(func=run)


def is_potential(path: Path) -> bool:
    if path.suffix in POTENTIAL_SUFFIXES:
        return True
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        from mmtp_hpc.io import schema
        with h5py.File(path, "r") as f:
            return f.attrs.get(schema.KIND_ATTR) == schema.KIND_POTENTIAL
    return False


def potential_summary(path: Path) -> dict:
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential
    pot = load_potential(path)
    return {"file": str(path), "kind": "potential", **pot.summary()}


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


def trajectory_summary(path: Path) -> dict:
    """Frames, atoms, layout and stored quantities of an MD trajectory (no per-atom data read)."""
    import numpy as np

    from mmtp_hpc.io.trajectory_frames import read_frames, trajectory_layout

    t = read_frames(path, slice(None), names=())
    counts = np.bincount(t.types, minlength=len(t.species)) if t.n_atoms else np.zeros(0, int)
    return {"file": str(path), "kind": "trajectory",
            "layout": "H5MD 1.1" if trajectory_layout(path) == "h5md" else "first layout (/frames)",
            "frames": t.n_frames, "atoms": t.n_atoms,
            "steps": f"{int(t.step[0])} … {int(t.step[-1])}" if t.n_frames else "",
            "time_fs": f"{float(t.time[0]):g} … {float(t.time[-1]):g}" if t.n_frames else "",
            "species": {(t.species[k] if k < len(t.species) else str(k)): int(c) for k, c in enumerate(counts)},
            "stored": list(t.available)}


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.io.trajectory_frames import is_trajectory

    path = Path(args.file)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if is_potential(path):
        info = potential_summary(path)
    elif path.suffix in (".h5", ".hdf5") and is_trajectory(path):
        info = trajectory_summary(path)
    else:
        info = data_summary(path, args.en_der_sign)
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0
