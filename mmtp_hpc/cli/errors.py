"""``mmtp errors POT DATA``: the error report of a potential on labelled configurations.

This module's single job is the command line around
:func:`mmtp_hpc.training.report.error_report`: RMSE, MAE and largest error of energy per
atom, forces, stress and ∂E/∂m, as a text table or JSON, optionally with a parity plot.
Under ``mpirun`` the configurations are shared between ranks; rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("errors", help="RMSE/MAE of a potential on labelled configurations",
                       description="Compare the predictions of POT with the labels in DATA: energy per "
                                   "atom (meV/atom), forces (eV/Å per component, per species), stress "
                                   "(GPa, 6 unique components, periodic configurations with a virial), "
                                   "dE/dm (eV/μB, per species), each where DATA has the label.")
    p.add_argument("potential", help="potential file (.mtp, .almtp, .mtpr, .h5)")
    p.add_argument("data", help="labelled configurations (.cfg, .xyz/.extxyz, .h5)")
    p.add_argument("--symmetrize", action=argparse.BooleanOptionalAction, default=None,
                   help="use the spin-symmetrised prediction ½[X(M)+X(−M)] (default: the "
                        "potential's flag)")
    p.add_argument("--parity-plot", metavar="PNG", help="write predicted-vs-reference plots to PNG")
    p.add_argument("--en-der-sign", type=int, choices=(1, -1), default=1,
                   help="sign of en_der_* columns in .cfg input (+1: +dE/dm as MLIP-3; -1: magnetic force)")
    p.add_argument("--virial-sign", type=int, choices=(1, -1), default=1,
                   help="sign of an explicit 'virial' in extended XYZ input (+1: PlusStress)")
    p.add_argument("--species", nargs="+", default=None, metavar="SYMBOL",
                   help="chemical symbols of types 0, 1, ... (extended XYZ input; default: POT's)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default OMP_NUM_THREADS or 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.cli.train import check_species, read_data
    from mmtp_hpc.parallel.comm import get_comm
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential
    from mmtp_hpc.training.report import error_report, format_report, parity_plot, report_summary

    comm = get_comm()
    pot = load_potential(args.potential)
    pot.require_trained()
    species = args.species or pot.species_names
    configs, found = read_data(args.data, args, species)
    check_species(pot, configs, args.data)
    report = error_report(pot, configs, symmetric=args.symmetrize, species_names=species or found,
                          comm=comm, num_threads=args.threads)
    if comm.Get_rank() != 0:
        return 0
    if args.json:
        summary = {"potential": args.potential, "data": args.data, **report_summary(report)}
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_report(report, f"{args.potential} on {args.data}"))
    if args.parity_plot:
        parity_plot(report, None, args.parity_plot)
        # stderr keeps stdout pure JSON with --json
        print(f"mmtp errors: wrote {args.parity_plot}", file=sys.stderr if args.json else sys.stdout)
    return 0
