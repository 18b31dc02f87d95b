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
    p = sub.add_parser("errors", aliases=["check_errors"],
                       help="RMSE/MAE of a potential on labelled configurations",
                       description="Compare the predictions of POT with the labels in DATA: energy per "
                                   "atom (meV/atom), forces (eV/Å per component, per species), stress "
                                   "(GPa, 6 unique components, periodic configurations with a virial), "
                                   "dE/dm (eV/μB, per species), each where DATA has the label, and MLIP-3's "
                                   "relative errors of forces and stresses. Warns when the en_der_* "
                                   "labels look like the other sign convention, and when the data's "
                                   "type numbering looks like another species order than POT's.")
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
                   help="symbols of the data's types 0, 1, ... (.cfg, extended XYZ, .h5): the data are renumbered to "
                        "POT's species order, and .cfg output keeps the data's numbering (default: POT's order)")
    p.add_argument("--check-en-der", action="store_true",
                   help="print which sign convention the en_der_* labels of DATA follow, judged by POT: "
                        "+dE/dm (MLIP-3) or the magnetic force -dE/dm (then read them with --en-der-sign -1)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default OMP_NUM_THREADS or 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.cli.train import read_data
    from mmtp_hpc.parallel.comm import get_comm
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential
    from mmtp_hpc.training.report import error_report, format_report, parity_plot, report_summary

    comm = get_comm()
    pot = load_potential(args.potential)
    pot.require_trained()
    species = args.species or pot.species_names
    configs, found = read_data(args.data, args, species, pot)
    report = error_report(pot, configs, symmetric=args.symmetrize, species_names=pot.species_names or found,
                          comm=comm, num_threads=args.threads)
    if comm.Get_rank() != 0:
        return 0
    notes = en_der_notes(report, args) + type_order_notes(pot, configs, report, args)
    for note in notes:
        print(f"mmtp errors: {note}", file=sys.stderr if args.json else sys.stdout, flush=True)
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


def en_der_notes(report: dict, args: argparse.Namespace) -> list[str]:
    """The en_der sign diagnostic: do the labels agree better with +∂E/∂m or with −∂E/∂m?

    The potential's own ∂E/∂m is the judge (a trained magnetic potential fits ∂E/∂m well
    enough to tell the sign, whatever its error). A warning when the other sign fits at least
    twice better; with ``--check-en-der`` a verdict either way.
    """
    mg = report.get("magnetic_gradient")
    if not mg or not mg.get("count"):
        return ["check-en-der: DATA has no en_der_* labels (or POT is not magnetic)"] if args.check_en_der else []
    as_read, other = mg["rmse"], mg["rmse_opposite_sign"]
    read_sign = "+dE/dm (MLIP-3's sign)" if args.en_der_sign == 1 else "-dE/dm (the magnetic force)"
    other_option = "--en-der-sign -1" if args.en_der_sign == 1 else "--en-der-sign 1"
    figures = f"RMSE {as_read:.4g} eV/μB as read ({read_sign}), {other:.4g} eV/μB with the other sign"
    if other < 0.5 * as_read:
        return [f"warning: the en_der_* labels look like the other sign convention ({figures}); "
                f"if the file stores the other sign, read it with {other_option}"]
    if args.check_en_der:
        verdict = ("the labels follow the sign they were read with" if as_read < 0.5 * other else
                   "the potential cannot tell the sign apart (errors of similar size)")
        return [f"check-en-der: {verdict}: {figures}"]
    return []


def type_order_notes(pot, configs: list, report: dict, args: argparse.Namespace,
                     max_configs: int = 4) -> list[str]:
    """A hint when another numbering of the data's types fits the energies far better.

    Types in a .cfg are numbers; their meaning comes from the potential (type t = its species
    t) unless --species says otherwise. An energy error of eV/atom is the sign of a mismatch:
    the few first configurations are evaluated with every other order of the species.
    """
    import itertools
    import warnings

    import numpy as np

    from mmtp_hpc.potentials.mtp.engine import MagneticRangeWarning, MTPEngine

    energy = report.get("energy")
    if args.species or pot.species_count < 2 or pot.species_count > 4 or not energy or energy["rmse"] < 500.0:
        return []
    sample = [c for c in configs if c.energy is not None and len(c)][:max_configs]
    engine = MTPEngine(pot, num_threads=args.threads)
    names = pot.species_names or [f"type{t}" for t in range(pot.species_count)]

    def rmse(order: np.ndarray) -> float:
        errors = []
        for cfg in sample:
            trial = cfg.copy()
            trial.types = order[cfg.types]
            errors.append((engine.evaluate(trial)["energy"] - cfg.energy) / len(cfg))
        return 1000.0 * float(np.sqrt(np.mean(np.square(errors))))

    try:
        with warnings.catch_warnings():
            # moments outside a species' interval are expected under a wrong order: not news
            warnings.simplefilter("ignore", MagneticRangeWarning)
            identity = rmse(np.arange(pot.species_count))
            trials = [(rmse(np.array(p)), p) for p in itertools.permutations(range(pot.species_count))
                      if list(p) != list(range(pot.species_count))]
    except Exception:   # noqa: BLE001 - a hint must never turn a report into a failure
        return []
    best, order = min(trials)
    if best > 0.1 * identity:
        return [f"warning: the energy error is {energy['rmse']:.4g} meV/atom; check that the data's "
                f"types mean the potential's species in its order ({', '.join(names)})"]
    symbols = " ".join(names[t] for t in order)
    return [f"warning: the energy error is {energy['rmse']:.4g} meV/atom: the data's types seem to be "
            f"numbered in another species order than the potential's ({', '.join(names)}). With "
            f"--species {symbols} (the symbols of the data's types 0, 1, ...) the energy error of the "
            f"first {len(sample)} configuration(s) is {best:.4g} meV/atom instead of {identity:.4g}."]
