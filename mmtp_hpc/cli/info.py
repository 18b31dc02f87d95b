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
    from mmtp_hpc.io.potential_card import read_card

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
    path = Path(args.file)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
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
