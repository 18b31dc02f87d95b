"""Fuzz the text input parsers through the CLI: every malformed file must give a clear error.

    python scripts/fuzz_inputs.py [--cases 200] [--seed 1] [--kinds cfg almtp mtpr toml] [--show 5]

Mutates valid files (deleted, duplicated or swapped lines; truncation; NaN, inf, huge, negative
or non-numeric numbers; changed counts; garbage bytes and non-UTF-8) and runs the commands a
user would (`mmtp info`, `mmtp efs`, `mmtp grade`, two steps of `mmtp md`) in this process. A case passes when the
command ends normally (exit 0, or an MMTPError/FileNotFoundError turned into exit 1 with a
message); it fails on any other exception (a traceback) or when a number that is not finite
reaches an output without an error. Prints the counts per kind and the first failures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

SOURCES = {
    "cfg": [SHARED / "mlip3" / "magnetic" / "fe_magmom.cfg", SHARED / "mlip3" / "examples" / "train.cfg"],
    "almtp": [SHARED / "mlip3" / "examples" / "04_pot.almtp", REPO / "inputs" / "potentials" / "feal_b2_analytic_l16.almtp"],
    "mtpr": [REPO / "inputs" / "potentials" / "al_fe_mag.mtpr"],
    "toml": [REPO / "inputs" / "md_fe_nvt" / "input.toml"],
}
NUMBER = re.compile(r"-?\d+\.?\d*(?:[eE][-+]?\d+)?")
REPLACEMENTS = ["nan", "inf", "-inf", "1e308", "-1", "0", "x", "1e9", "-1e9", "3.5", ""]


def mutate(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines(keepends=True)
    kind = rng.choice(["delete", "duplicate", "swap", "truncate", "number", "number", "number",
                       "count", "garbage", "bytes"])
    if kind == "delete" and len(lines) > 1:
        del lines[rng.randrange(len(lines))]
    elif kind == "duplicate" and lines:
        k = rng.randrange(len(lines))
        lines.insert(k, lines[k])
    elif kind == "swap" and len(lines) > 1:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "truncate":
        cut = rng.randrange(max(1, len(text)))
        return text[:cut].encode("utf-8", "surrogateescape")
    elif kind in ("number", "count"):
        k = rng.randrange(len(lines))
        if kind == "count":     # a line that holds a count: Size, *_count, basis sizes
            counts = [i for i, ln in enumerate(lines) if re.search(r"count|size|Size", ln)]
            if counts:
                k = rng.choice(counts)
                if "Size" in lines[k] and k + 1 < len(lines):
                    k += 1
        matches = list(NUMBER.finditer(lines[k]))
        if matches:
            m = rng.choice(matches)
            new = rng.choice(REPLACEMENTS + ["999999999", "2", "100000"])
            lines[k] = lines[k][:m.start()] + new + lines[k][m.end():]
    elif kind == "garbage":
        k = rng.randrange(len(lines) + 1)
        lines.insert(k, rng.choice(["}}}{{{\n", "= = =\n", "BEGIN_CFG\n", "END_CFG\n", "\t\t{1, 2\n",
                                    "AtomData: id\n", "#MVS_v1.1\n"]))
    elif kind == "bytes":
        raw = bytearray("".join(lines).encode("utf-8", "surrogateescape"))
        for _ in range(rng.randint(1, 8)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    return "".join(lines).encode("utf-8", "surrogateescape")


def commands(kind: str, path: Path, out: Path) -> list[list[str]]:
    pot = str(REPO / "inputs" / "potentials" / "al_fe_mag.mtpr")
    cfg = str(SHARED / "mlip3" / "magnetic" / "fe_magmom.cfg")
    if kind == "cfg":
        return [["info", str(path)], ["efs", pot, str(path), "-o", str(out / "o.cfg")]]
    if kind == "toml":
        return [["md", str(path), "--steps", "2", "--quiet"]]
    if kind == "almtp":
        return [["info", str(path)], ["grade", str(path), cfg, "-o", str(out / "g.cfg")]]
    return [["info", str(path)], ["efs", str(path), cfg, "-o", str(out / "o.cfg")]]


def nonfinite_output(out: Path) -> bool:
    for f in out.glob("*.cfg"):
        text = f.read_text(errors="replace").lower()
        if re.search(r"(?<![a-z])(nan|inf)(?![a-z])", text):
            return True
    return False


def run_case(argv: list[str]) -> str | None:
    from mmtp_hpc.cli import main

    err = io.StringIO()
    try:
        # after an output failure the CLI leaves with os._exit (no HDF5 clean-up at exit): here that
        # is the command's normal end, not the end of the harness
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
                mock.patch.object(os, "_exit", side_effect=SystemExit):
            main(argv)
    except SystemExit:
        return None
    except Exception:       # noqa: BLE001 - exactly what this script looks for
        return traceback.format_exc(limit=-3)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--cases", type=int, default=200, help="mutated files per kind")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kinds", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--show", type=int, default=5, help="failures to print")
    p.add_argument("--verbose", action="store_true", help="name each case before it runs (stderr)")
    args = p.parse_args()
    np.seterr(all="ignore")
    rng = random.Random(args.seed)
    totals: Counter = Counter()
    failures: list[tuple[str, list[str], str]] = []
    with tempfile.TemporaryDirectory(prefix="mmtp_fuzz_") as tmp:
        tmp = Path(tmp)
        for kind in args.kinds:
            sources = [s for s in SOURCES[kind] if s.is_file()]
            for case in range(args.cases):
                src = rng.choice(sources)
                text = src.read_bytes().decode("utf-8", "surrogateescape")
                if kind == "toml":      # run where the copy is, with the example's potential
                    text = re.sub(r'file = "([^"]+)"', lambda m: f'file = "{(src.parent / m.group(1)).resolve()}"',
                                  text).replace("repeat = 5", "repeat = 2")
                data = mutate(text, rng)
                path = tmp / f"{kind}{case}{src.suffix}"
                path.write_bytes(data)
                out = tmp / f"out_{kind}{case}"
                out.mkdir()
                for argv in commands(kind, path, out):
                    if args.verbose:
                        print(f"{kind} {case} ({src.name}): mmtp {' '.join(map(str, argv))}", file=sys.stderr,
                              flush=True)
                    totals[kind, "runs"] += 1
                    tb = run_case(argv)
                    if tb is None and nonfinite_output(out):
                        tb = "a non-finite number reached the output without an error"
                    if tb is not None:
                        totals[kind, "failed"] += 1
                        failures.append((kind, argv, tb))
    print(f"{'kind':<6} {'runs':>6} {'uncaught':>9}")
    for kind in args.kinds:
        print(f"{kind:<6} {totals[kind, 'runs']:>6} {totals[kind, 'failed']:>9}")
    for kind, argv, tb in failures[:args.show]:
        print(f"\n--- {kind}: mmtp {' '.join(argv)}\n{tb.strip()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
