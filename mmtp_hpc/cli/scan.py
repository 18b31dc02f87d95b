"""``mmtp scan POT``: energy, pressure and relaxed moments vs lattice parameter, with a figure.

For a cubic lattice (``--lattice bcc --a 2.6 3.1 --points 21``) or an isotropically scaled
structure file (``--structure POSCAR --scale 0.92 1.08``), the moments are relaxed at each
point (or held at ``--magmoms`` with ``--fixed-moments``) and E/N, P and ⟨m⟩ per species are
tabulated; ``--oracle builtin`` (or a model JSON) adds the same curves from the analytic
reference model for comparison.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mmtp_hpc.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="energy, pressure and relaxed moments vs lattice parameter",
                       description=__doc__.split("\n\n", 1)[1].strip())
    p.add_argument("potential", help="potential file (.mtp, .almtp, .h5), or 'builtin' / a model "
                                     "JSON to scan the analytic model alone")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lattice", default="bcc", choices=("bcc", "fcc", "b2", "sc", "l12"),
                   help="cubic lattice to build (default bcc; b2: type 0 on corners, 1 in centres)")
    g.add_argument("--structure", help="structure file to scale instead (.cfg, .xyz, POSCAR, cif, …)")
    p.add_argument("--a", nargs=2, type=float, default=(2.6, 3.1), metavar=("A_MIN", "A_MAX"),
                   help="lattice parameter range (Å) for --lattice (default 2.6 3.1)")
    p.add_argument("--scale", nargs=2, type=float, default=(0.92, 1.08), metavar=("S_MIN", "S_MAX"),
                   help="linear scale range for --structure (default 0.92 1.08)")
    p.add_argument("--points", type=int, default=21, help="number of points (default 21)")
    p.add_argument("--repeat", type=int, default=1, help="supercell repeat of the cubic cell (default 1)")
    p.add_argument("--species", nargs="+", default=None, metavar="SYMBOL",
                   help="symbols of types 0, 1, … (default: the potential's)")
    p.add_argument("--magmoms", type=float, nargs="+", default=None, metavar="M",
                   help="start (or, with --fixed-moments, fixed) moment in μB: one value or one per "
                        "species (default: a ferromagnetic guess, or the structure file's moments)")
    p.add_argument("--fixed-moments", action="store_true", help="do not relax the moments")
    p.add_argument("--tol", type=float, default=1e-5, help="moment relaxation tolerance, max|dE/dm| eV/μB")
    p.add_argument("--symmetrize", action=argparse.BooleanOptionalAction, default=None,
                   help="spin-symmetrised energy (default: the potential's flag)")
    p.add_argument("--oracle", default=None, metavar="MODEL",
                   help="also scan the analytic model ('builtin' or a JSON file) for comparison")
    p.add_argument("--plot", metavar="PNG", help="write E, P and moments vs a")
    p.add_argument("--csv", metavar="CSV", help="write the table")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(func=run)


def _model(spec: str, species: list[str] | None):
    """(model, label, species) for a potential file or an analytic model spec."""
    from pathlib import Path

    from mmtp_hpc.potentials.analytic import AnalyticMagneticModel

    if spec.lower() in ("builtin", "default") or Path(spec).suffix.lower() == ".json":
        model = AnalyticMagneticModel.load(spec, species=species)
        return model, f"oracle ({spec})", list(model.species)
    from mmtp_hpc.potentials.mtp.engine import MTPEngine
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    pot = load_potential(spec)
    names = species or pot.species_names
    if names is None:
        raise InputError("the potential records no chemical symbols; pass --species", field="species")
    return MTPEngine(pot), Path(spec).name, list(names)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.analysis import scan as sc

    if args.points < 2:
        raise InputError(f"--points must be >= 2, got {args.points}", field="points")
    model, label, species = _model(args.potential, args.species)
    kwargs = {"magmoms": args.magmoms, "relax": not args.fixed_moments, "tol": args.tol,
              "symmetric": args.symmetrize}
    reference = None
    if args.structure:
        from mmtp_hpc.io.formats import read_configurations

        reference = read_configurations(args.structure, species=species)[0]
        xs = np.linspace(args.scale[0], args.scale[1], args.points)
    else:
        xs = np.linspace(args.a[0], args.a[1], args.points)

    def scan_with(m, lab: str, names: list[str]):
        if reference is not None:
            return sc.scan_scaled(m, reference, xs, names, label=lab, **kwargs)
        return sc.scan_lattice(m, args.lattice, xs, names, repeat=args.repeat, label=lab, **kwargs)

    scans = [scan_with(model, label, species)]
    if args.oracle:
        oracle, olabel, _ = _model(args.oracle, species)
        scans.append(scan_with(oracle, olabel, species))
    what = f"{args.lattice} lattice" if reference is None else f"{args.structure} scaled"
    print(f"mmtp scan: {what}, {args.points} points, moments "
          f"{'fixed' if args.fixed_moments else 'relaxed'}", file=sys.stdout)
    lines = []
    for s in scans:
        a0, e0 = s.equilibrium()
        line = (f"{s.label}: E minimum at a = {a0:.4f} Å, E/N = {e0:.5f} eV/atom" if np.isfinite(a0)
                else f"{s.label}: the energy minimum is at an end of the range")
        k = int(np.argmin(s.energy_per_atom))
        line += "; moments there: " + ", ".join(f"{n} {v[k]:.3f} μB" for n, v in s.moment_mean.items())
        lines.append(line)
        print("  " + line)
        header = ["a_A", "E_eV/at", "P_GPa"] + [f"m_{n}" for n in s.moment_mean]
        print("    " + " ".join(f"{h:>10}" for h in header))
        for k in range(len(s.a)):
            row = [s.a[k], s.energy_per_atom[k], s.pressure[k]] + [v[k] for v in s.moment_mean.values()]
            print("    " + " ".join(f"{x:10.5f}" for x in row))
    if args.csv:
        from mmtp_hpc.analysis.csvtable import write_csv

        table = scans[0].table()
        if len(scans) > 1:
            table.update({k: v for k, v in scans[1].table(prefix="oracle_").items() if k != "a_A"})
        write_csv(args.csv, table, comment="mmtp scan\n" + "\n".join(lines))
        print(f"  table: {args.csv}")
    if args.plot:
        from mmtp_hpc.analysis.plots import plot_scan

        plot_scan(scans, args.plot, args.title or f"{label}: {what}")
        print(f"  figure: {args.plot}")
    return 0
