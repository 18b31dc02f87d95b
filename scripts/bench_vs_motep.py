"""Side-by-side speed of mmtp_hpc and motep's C engine ("cext") on the same cells, same run.

For levels 10, 16, 20, magnetic (M = 2) and not, and bcc Fe cells of 250 and 2000 atoms
(cutoff 5 Å, ≈ 55 neighbours), both codes evaluate energy + forces + stress (+ ∂E/∂m,
moments fixed) on one core; runs alternate between the codes so that machine load hits both
alike. Prints median µs/atom of each and the ratio motep / mmtp_hpc.

motep is installed into its own virtualenv (not a dependency of this package)::

    python scripts/bench_vs_motep.py [--motep-venv /tmp/motep-venv] [--rounds 5] [--levels 10 16 20]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as the mmtp command: no spinning BLAS threads

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mmtp_hpc.io.formats import write_configurations
from mmtp_hpc.potentials.mtp.basis import new_potential
from mmtp_hpc.potentials.mtp.mlip_io import save_potential
from mmtp_hpc.system.lattice import bulk

MOTEP_SNIPPET = r"""
import sys, time, json, statistics
import ase.io
from motep.io.mlip.mtp import read_mtp
from motep.calculator import make_calculator
pot = read_mtp(sys.argv[1])
atoms = ase.io.read(sys.argv[2])
atoms.numbers[:] = 0          # motep matches potential types by atomic number
calc = make_calculator(pot, engine="cext", relax_magmoms=False)
repeat = int(sys.argv[3])
calc.calculate(atoms, ["energy", "forces", "stress"])  # warm-up
times = []
for _ in range(repeat):
    calc.results = {}
    t0 = time.perf_counter()
    calc.calculate(atoms, ["energy", "forces", "stress"])
    times.append(time.perf_counter() - t0)
print(json.dumps({"us_per_atom": 1e6 * statistics.median(times) / len(atoms),
                  "energy": float(calc.results["energy"])}))
"""


def ensure_motep(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "motep"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--motep-venv", type=Path, default=Path(tempfile.gettempdir()) / "motep-venv")
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 16, 20])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10], help="bcc repeats (5 → 250, 10 → 2000 atoms)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per case (median over rounds)")
    parser.add_argument("--repeat", type=int, default=3, help="calls per round")
    parser.add_argument("--kernels", nargs="+", default=["auto"], choices=["auto", "portable", "avx2"],
                        help="mmtp_hpc kernel variants to time (MMTP_KERNELS); the first one gives the ratio")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    motep_python = ensure_motep(args.motep_venv)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for repeat in args.sizes:
            cfg = bulk("bcc", 2.8665, repeat, magmoms=2.2, jitter=0.04, seed=1)
            cfg.magmoms = cfg.magmoms + np.random.default_rng(2).normal(scale=0.1, size=len(cfg))
            write_configurations(tmp / f"bcc{repeat}.cfg", [cfg])
            write_configurations(tmp / f"bcc{repeat}.xyz", [cfg], species=["Fe"])
            for level in args.levels:
                for magnetic in (False, True):
                    pot = new_potential(level, 1, radial_basis_size=8, mag_basis_size=2 if magnetic else 1,
                                        mag_interval=(-3.0, 3.0) if magnetic else None, min_dist=2.0,
                                        max_dist=5.0, init="random", seed=level)
                    pot_file = tmp / f"l{level}{'m' if magnetic else ''}.mtp"
                    save_potential(pot, pot_file)
                    ours = {k: [] for k in args.kernels}
                    theirs = []
                    variant = {}
                    deviation = 0.0
                    for _ in range(args.rounds):
                        for kern in args.kernels:
                            out = subprocess.run(
                                [sys.executable, "-m", "mmtp_hpc", "bench", str(pot_file),
                                 str(tmp / f"bcc{repeat}.cfg"), "--repeat", str(args.repeat), "--json"],
                                capture_output=True, text=True, env=dict(env, MMTP_KERNELS=kern), check=True)
                            mine = json.loads(out.stdout.strip().splitlines()[-1])
                            ours[kern].append(mine["efs_us_per_atom_median"])
                            variant[kern] = mine.get("kernels", kern)
                        out = subprocess.run([str(motep_python), "-c", MOTEP_SNIPPET, str(pot_file),
                                              str(tmp / f"bcc{repeat}.xyz"), str(args.repeat)],
                                             capture_output=True, text=True, env=env, check=True)
                        res = json.loads(out.stdout.strip().splitlines()[-1])
                        theirs.append(res["us_per_atom"])
                        deviation = abs(res["energy"] - mine["energy"]) / max(abs(mine["energy"]), 1e-300)
                    first = args.kernels[0]
                    row = {"atoms": len(cfg), "level": level, "magnetic": magnetic, "kernels": variant[first],
                           "mmtp_us_per_atom": statistics.median(ours[first]),
                           "motep_us_per_atom": statistics.median(theirs)}
                    row["ratio"] = row["motep_us_per_atom"] / row["mmtp_us_per_atom"]
                    for kern in args.kernels[1:]:
                        row[f"mmtp_{variant[kern]}_us_per_atom"] = statistics.median(ours[kern])
                        row[f"ratio_{variant[kern]}"] = row["motep_us_per_atom"] / statistics.median(ours[kern])
                    row["energy_rel_diff"] = deviation
                    rows.append(row)
                    extra = "".join(f"  [{variant[k]} {row[f'mmtp_{variant[k]}_us_per_atom']:6.1f} µs/atom, "
                                    f"{row[f'ratio_{variant[k]}']:4.1f}x]" for k in args.kernels[1:])
                    print(f"{row['atoms']:6d} atoms  level {level:2d}  {'magnetic    ' if magnetic else 'non-magnetic'}"
                          f"  mmtp_hpc ({variant[first]}) {row['mmtp_us_per_atom']:8.1f}  motep "
                          f"{row['motep_us_per_atom']:8.1f} µs/atom  ratio {row['ratio']:5.1f}x{extra}"
                          f"  |ΔE|/|E| {deviation:.1e}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
