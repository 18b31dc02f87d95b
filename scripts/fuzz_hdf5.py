"""Fuzz the HDF5 readers through the CLI: every damaged file must give one clear error.

    python scripts/fuzz_hdf5.py [--cases 100] [--seed 1] [--kinds trajectory checkpoint trainingset potential]

Makes valid files of every HDF5 kind the project writes (an MD trajectory and checkpoint from a
short run, a training set, a potential), damages copies of them with h5py (datasets or groups
deleted, attributes deleted or changed: kind, schema version, counts, JSON; datasets replaced
with other shapes, dtypes, NaN, inf or huge values) or as bytes (truncation, flipped bytes in
compressed data), and runs what a user would: `mmtp info`, then `mmtp post thermo` /
`mmtp convert` (trajectory), `mmtp md --restart` (checkpoint), `mmtp errors` (training set),
`mmtp efs` (potential). A case passes when the command ends normally (exit 0, or an error
turned into exit 1 with a message) and, when it exits 0, the damage was harmless (nothing
non-finite reached an output); it fails on a traceback. Prints the counts per kind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import shutil
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path
from unittest import mock

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
POT = REPO / "inputs" / "potentials" / "fe_bcc_analytic_l16.almtp"
KINDS = ("trajectory", "checkpoint", "trainingset", "potential")


def run_cli(argv: list[str]) -> tuple[int | None, str | None]:
    """(exit code, traceback or None)."""
    from mmtp_hpc.cli import main

    try:
        # after an output failure the CLI leaves with os._exit (no HDF5 clean-up at exit): here that
        # is the command's normal end, not the end of the harness
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                mock.patch.object(os, "_exit", side_effect=SystemExit):
            code = main(argv)
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else 1), None
    except Exception:       # noqa: BLE001 - exactly what this script looks for
        return None, traceback.format_exc(limit=-4)
    return code, None


def make_sources(tmp: Path) -> dict[str, Path]:
    """One valid file of each kind."""
    md = tmp / "md"
    md.mkdir()
    (md / "input.toml").write_text(f"""
[system]
lattice = "bcc"
a = 2.855
repeat = 2
species = ["Fe"]
magmoms = 2.25
[potential]
file = "{POT}"
[md]
steps = 20
ensemble = "nvt"
temperature_K = 300.0
[moments]
mode = "fixed"
[output]
trajectory = "traj.h5"
every = 5
store = ["positions", "velocities", "magmoms", "forces", "site_energies"]
checkpoint = "ckpt.h5"
checkpoint_every = 10
log_every = 1000
speed_log = ""
""")
    code, tb = run_cli(["md", str(md / "input.toml"), "--quiet"])
    assert code == 0 and tb is None, tb
    train = tmp / "train.h5"
    code, tb = run_cli(["convert", str(SHARED / "mlip3" / "magnetic" / "fe_magmom.cfg"), str(train)])
    assert code == 0 and tb is None, tb
    pot = tmp / "pot.h5"
    code, tb = run_cli(["convert", str(POT), str(pot)])
    if code != 0 or tb is not None or not pot.is_file():
        from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential

        save_potential(load_potential(POT), pot)
    return {"trajectory": md / "traj.h5", "checkpoint": md / "ckpt.h5", "trainingset": train, "potential": pot}


def _objects(f: h5py.File) -> tuple[list[str], list[str]]:
    datasets, groups = [], []
    f.visititems(lambda name, obj: (datasets if isinstance(obj, h5py.Dataset) else groups).append(name) and None)
    return datasets, groups


BAD_VALUES = [np.nan, np.inf, -np.inf, 1e308, -1.0, 0.0, 2 ** 40, -(2 ** 31)]


def mutate(path: Path, rng: random.Random) -> str:
    """Damage ``path`` in place; returns what was done."""
    kind = rng.choice(["delete", "attr", "attr", "replace", "values", "values", "truncate", "bytes"])
    if kind == "truncate":
        raw = path.read_bytes()
        cut = rng.randrange(max(1, len(raw)))
        path.write_bytes(raw[:cut])
        return f"truncated to {cut} bytes"
    if kind == "bytes":
        raw = bytearray(path.read_bytes())
        start = rng.randrange(len(raw) // 4, len(raw))
        for _ in range(rng.randint(1, 16)):
            k = rng.randrange(start, len(raw))
            raw[k] = rng.randrange(256)
        path.write_bytes(bytes(raw))
        return f"bytes flipped after {start}"
    with h5py.File(path, "a") as f:
        datasets, groups = _objects(f)
        if kind == "delete":
            name = rng.choice(datasets + groups)
            del f[name]
            return f"deleted {name}"
        if kind == "attr":
            owners = [f, *(f[n] for n in groups + datasets)]
            owners = [o for o in owners if len(o.attrs)]
            owner = rng.choice(owners)
            key = rng.choice(list(owner.attrs))
            action = rng.choice(["delete", "number", "text", "json"])
            if action == "delete":
                del owner.attrs[key]
            elif action == "number":
                owner.attrs[key] = rng.choice([-1, 0, 99, 2 ** 40, np.nan, 1e300])
            elif action == "text":
                owner.attrs[key] = rng.choice(["x", "", "trajectory", "checkpoint", "potential"])
            else:
                owner.attrs[key] = rng.choice(["{", "[1, 2", "null", '{"a": 1}', "[]", '"x"'])
            return f"attr {owner.name}@{key}: {action}"
        name = rng.choice(datasets)
        ds = f[name]
        if kind == "replace":
            shape = ds.shape
            new_shape = rng.choice([(), (0,), (3,), tuple(max(0, s + rng.choice([-1, 1])) for s in shape) or (2,),
                                    (*shape, 2) if shape else (2, 2)])
            dtype = rng.choice([np.float64, np.int64, "S4", np.float32])
            del f[name]
            data = np.zeros(new_shape, dtype=dtype) if dtype != "S4" else np.full(new_shape, b"x", dtype="S4")
            f.create_dataset(name, data=data)
            return f"replaced {name}: {shape} -> {new_shape} {dtype}"
        if ds.size == 0 or ds.dtype.kind not in "fiu":
            del f[name]
            return f"deleted {name} (no values to damage)"
        data = ds[...]
        flat = data.reshape(-1)
        value = rng.choice(BAD_VALUES)
        if data.dtype.kind in "iu":
            value = int(rng.choice([-1, 2 ** 40, -(2 ** 31), 7, 10 ** 6]))
        for _ in range(rng.randint(1, 3)):
            flat[rng.randrange(flat.size)] = value
        ds[...] = data
        return f"values in {name} set to {value}"


def commands(kind: str, path: Path, out: Path) -> list[list[str]]:
    cfg = str(SHARED / "mlip3" / "magnetic" / "fe_magmom.cfg")
    first = [["info", str(path)]]
    if kind == "trajectory":
        return first + [["post", "thermo", str(path)], ["convert", str(path), str(out / "t.xyz")]]
    if kind == "checkpoint":
        inp = out / "input.toml"
        text = (path.parent.parent / "md" / "input.toml").read_text() if (path.parent.parent / "md").is_dir() else ""
        inp.write_text(text.replace('trajectory = "traj.h5"', 'trajectory = ""').replace("steps = 20", "steps = 22"))
        return first + [["md", str(inp), "--restart", str(path), "--quiet", "--allow-changes"]]
    if kind == "trainingset":
        return first + [["errors", str(POT), str(path)]]
    return first + [["efs", str(path), cfg, "-o", str(out / "o.cfg")]]


def nonfinite_output(out: Path) -> bool:
    for f in list(out.glob("*.cfg")) + list(out.glob("*.xyz")):
        if re.search(r"(?<![a-z])(nan|inf)(?![a-z])", f.read_text(errors="replace").lower()):
            return True
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--cases", type=int, default=100, help="damaged files per kind")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--show", type=int, default=5, help="failures to print")
    p.add_argument("--verbose", action="store_true", help="name each case before it runs (stderr)")
    args = p.parse_args()
    import resource

    # a damaged count must give an error, not eat the machine: 8 GB of address space at most
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2 ** 30, 8 * 2 ** 30))
    np.seterr(all="ignore")
    rng = random.Random(args.seed)
    totals: Counter = Counter()
    failures: list[tuple[str, str, list[str], str]] = []
    with tempfile.TemporaryDirectory(prefix="mmtp_fuzz_h5_") as tmp:
        tmp = Path(tmp)
        sources = make_sources(tmp)
        for kind in args.kinds:
            for case in range(args.cases):
                work = tmp / f"{kind}{case}"
                work.mkdir()
                path = work / sources[kind].name
                shutil.copy(sources[kind], path)
                if kind == "checkpoint":      # the input the restart reads sits beside the md folder
                    (work / "md").mkdir()
                    shutil.copy(sources["checkpoint"].parent / "input.toml", work / "md" / "input.toml")
                    ck = work / "md" / "ckpt.h5"
                    shutil.move(path, ck)
                    path = ck
                try:
                    what = mutate(path, rng)
                except (OSError, KeyError, ValueError, TypeError, OverflowError) as exc:
                    what = f"(mutation failed: {exc})"
                out = work / "out"
                out.mkdir()
                for argv in commands(kind, path, out):
                    if args.verbose:
                        print(f"{kind} {case}: {what}: mmtp {' '.join(argv)}", file=sys.stderr, flush=True)
                    totals[kind, "runs"] += 1
                    code, tb = run_cli(argv)
                    if tb is None and code == 0 and nonfinite_output(out):
                        tb = "a non-finite number reached the output without an error"
                    if tb is not None:
                        totals[kind, "failed"] += 1
                        failures.append((kind, what, argv, tb))
    print(f"{'kind':<12} {'runs':>6} {'uncaught':>9}")
    for kind in args.kinds:
        print(f"{kind:<12} {totals[kind, 'runs']:>6} {totals[kind, 'failed']:>9}")
    for kind, what, argv, tb in failures[:args.show]:
        print(f"\n--- {kind} ({what}): mmtp {' '.join(argv)}\n{tb.strip()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
