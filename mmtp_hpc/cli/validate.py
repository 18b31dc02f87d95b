"""``mmtp validate POT --oracle INPUT.toml``: the potential against direct DFT, with a table and figures.

At each lattice parameter the oracle computes the unconstrained magnetic ground state and the
potential relaxes its moments from the same start; E(a) − E(a_ref), the pressure and the relaxed
moments are compared. ``--moments`` adds E(m) and ∂E/∂m at fixed a for uniform constrained
moments, ``--antiparallel`` the energy of an antiparallel pair. ``--ensemble`` members draw
the spread as a band. DFT results are kept in ``--workdir`` and reused by a rerun; the oracle is
the ``[oracle]`` table of a TOML file (e.g. the ``mmtp learn`` input that trained the potential).
Writes PREFIX.md (tables, pass/fail), PREFIX.csv, PREFIX.png and PREFIX_moments.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mmtp_hpc.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    from mmtp_hpc.active.validate import CRITERIA

    p = sub.add_parser("validate", help="compare a potential with direct DFT (E, P, moments vs a; E(m))",
                       description=__doc__.split("\n\n", 1)[1].strip())
    p.add_argument("potential", help="potential file (.almtp, .mtp, .h5)")
    p.add_argument("--oracle", required=True, metavar="TOML",
                   help="TOML file with an [oracle] table (command oracle, e.g. writer = \"abinit\")")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="POT", help="ensemble members (band)")
    p.add_argument("--lattice", default="bcc", choices=("bcc", "fcc", "b2", "sc", "l12"))
    p.add_argument("--a", nargs="+", type=float, required=True, metavar="A",
                   help="lattice parameters (Å): a list, or A_MIN A_MAX with --points")
    p.add_argument("--points", type=int, default=None, help="points between A_MIN and A_MAX")
    p.add_argument("--a-ref", type=float, required=True, help="reference lattice parameter (one of --a)")
    p.add_argument("--start", nargs="+", type=float, default=None, metavar="M",
                   help="start moments per species (μB; default: the top of the potential's interval)")
    p.add_argument("--moments", nargs="+", type=float, default=[], metavar="M",
                   help="uniform constrained moments of the first species for E(m), ∂E/∂m")
    p.add_argument("--a-moments", type=float, default=None, help="a of the E(m) scan (default a-ref)")
    p.add_argument("--antiparallel", type=float, default=None, metavar="M",
                   help="|m| of the antiparallel-pair check at a-ref")
    p.add_argument("--trained-a", nargs=2, type=float, default=None, metavar=("A_MIN", "A_MAX"),
                   help="lattice-parameter range of the training data (shaded; spread in/out)")
    p.add_argument("--curve", nargs=3, type=float, default=None, metavar=("A_MIN", "A_MAX", "N"),
                   help="dense potential curve (default: --a range widened by 0.1 Å, 41 points)")
    p.add_argument("--species", nargs="+", default=None, help="symbols of types 0, 1, … (default: "
                                                               "the potential's)")
    p.add_argument("--workdir", default="validation", help="DFT runs (reused by a rerun)")
    p.add_argument("--no-check-free", action="store_true",
                   help="trust a converged free SCF's moments (default: check each with constrained runs "
                        "at its moments and take the root of dE/dm where it is off: near a magnetic "
                        "transition the free SCF stops early)")
    p.add_argument("-o", "--output", default="validation", help="output prefix")
    p.add_argument("--title", default=None)
    for key, (tol, unit, what) in CRITERIA.items():
        p.add_argument(f"--tol-{key.replace('_', '-')}", type=float, default=tol,
                       help=f"{what} ({unit}, default {tol:g})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.active.oracles import oracle_from_settings
    from mmtp_hpc.active.validate import CRITERIA, plot_validation, validate
    from mmtp_hpc.settings import read_toml
    from mmtp_hpc.io.atomic import atomic_path
    from mmtp_hpc.potentials.mtp.engine import MTPEngine
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    pot = load_potential(args.potential)
    species = args.species or pot.species_names
    if not species:
        raise InputError("the potential records no chemical symbols; pass --species", field="species")
    if args.points is not None:
        if len(args.a) != 2 or args.points < 2:
            raise InputError("--points needs --a A_MIN A_MAX and at least 2 points", field="a")
        a_values = np.linspace(args.a[0], args.a[1], args.points)
    else:
        a_values = np.array(args.a)
    data, text = read_toml(args.oracle)
    if "oracle" not in data:
        raise InputError("no [oracle] table", path=args.oracle)
    oracle = oracle_from_settings(data["oracle"], Path(args.oracle).resolve().parent, list(species),
                                  source=args.oracle, text=text)
    members = [MTPEngine(load_potential(m)) for m in args.ensemble]
    curve = None
    if args.curve is not None:
        curve = np.linspace(args.curve[0], args.curve[1], int(args.curve[2]))
    tolerances = {k: getattr(args, f"tol_{k}") for k in CRITERIA}
    v = validate(MTPEngine(pot), oracle, list(species), args.lattice, a_values, args.a_ref,
                 start=args.start, workdir=args.workdir, moment_values=args.moments,
                 a_moment=args.a_moments, antiparallel_m=args.antiparallel, members=members,
                 curve=curve, trained_a=tuple(args.trained_a) if args.trained_a else None,
                 tolerances=tolerances, check_free=not args.no_check_free, log=print)
    text = v.markdown()
    print(text)
    prefix = Path(args.output)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    title = args.title or f"{Path(args.potential).name} vs DFT"
    with atomic_path(prefix.with_suffix(".md")) as tmp:
        Path(tmp).write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
    from mmtp_hpc.analysis.csvtable import write_csv

    table = {"a_A": v.a, "dft_energy_eV_per_atom": v.dft_energy, "pot_energy_eV_per_atom": v.pot_energy,
             "dft_pressure_GPa": v.dft_pressure, "pot_pressure_GPa": v.pot_pressure}
    for s in v.species:
        table[f"dft_m_{s}_uB"] = v.dft_moments[s]
        table[f"pot_m_{s}_uB"] = v.pot_moments[s]
    write_csv(prefix.with_suffix(".csv"), table, comment=f"mmtp validate {args.potential}")
    summary = {"errors": v.errors(), "passed": v.passed(), "tolerances": tolerances,
               "failures": v.failures, "spread_inside_outside_meV": v.spread_inside_outside()}
    with atomic_path(prefix.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    figures = plot_validation(v, prefix.with_suffix(".png"), title)
    written = [prefix.with_suffix(s) for s in (".md", ".csv", ".json")] + figures
    print("written: " + ", ".join(str(w) for w in written))
    ok = all(v.passed().values())
    print("validation: " + ("all criteria pass" if ok else "FAILED: " + ", ".join(
        k for k, good in v.passed().items() if not good)))
    return 0 if ok else 1
