"""``mmtp train POT TRAIN -o OUT``: fit a potential (or an ensemble) and report its errors.

This module's single job is the command line of training: read the potential and the
data, split off a validation set, call :func:`mmtp_hpc.training.fit.train` (or
:func:`mmtp_hpc.training.ensemble.train_ensemble`), write the potential(s), and print (and
optionally write and plot) the error report on the training and validation sets.

Under ``mpirun -n P`` every rank runs this; training and error evaluation are shared
between the ranks, and only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mmtp_hpc.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fit a potential to energies, forces, stresses (and dE/dm)",
        description="Fit POT to the labelled configurations in TRAIN: L-BFGS over all parameters with "
                    "the linear coefficients re-solved exactly every --linear-every iterations. "
                    "Prints the progress and, at the end, the errors on the training and validation "
                    "sets. Run under mpirun to share the configurations between ranks.")
    p.add_argument("potential", help="potential to start from (.mtp, .almtp, .mtpr, .h5), trained or an "
                                     "untrained template such as written by 'mmtp new-potential'")
    p.add_argument("train", help="training configurations (.cfg, .xyz/.extxyz, .h5)")
    p.add_argument("-o", "--output", "--save_to", "--trained_pot_name", dest="output", default="trained.almtp",
                   help="trained potential (.almtp with active set, .mtp, .h5; default trained.almtp)")
    w = p.add_argument_group("loss weights")
    w.add_argument("--energy-weight", "--energy_weight", dest="energy_weight", type=float, default=1.0, help="energy weight (default 1)")
    w.add_argument("--force-weight", "--force_weight", dest="force_weight", type=float, default=0.01, help="force weight (default 0.01)")
    w.add_argument("--stress-weight", "--stress_weight", dest="stress_weight", type=float, default=0.001, help="stress weight (default 0.001)")
    w.add_argument("--magnetic-weight", type=float, default=0.0,
                   help="dE/dm weight (default 0: not fitted)")
    w.add_argument("--weight-scaling", "--weight_scaling", dest="weight_scaling", type=int, choices=(0, 1, 2), default=1,
                   help="divide energy and stress terms by N^k as MLIP-3 does (default 1)")
    o = p.add_argument_group("optimiser")
    o.add_argument("--max-iter", "--iteration_limit", dest="max_iter", type=int, default=1000,
                   help="L-BFGS iterations (default 1000)")
    o.add_argument("--tolerance", type=float, default=1e-8,
                   help="stop when a chunk of --linear-every iterations lowers the loss by less than "
                        "this fraction (default 1e-8)")
    o.add_argument("--linear-every", type=int, default=50,
                   help="iterations between exact re-solves of the linear coefficients (default 50)")
    o.add_argument("--seed", type=int, default=0,
                   help="seed of the random start and of --validation-fraction (default 0)")
    o.add_argument("--init", choices=("random", "default", "keep"), default="random",
                   help="start: random radial coefficients (default), MLIP-3's defaults, or keep the "
                        "coefficients of POT")
    o.add_argument("--symmetrize", action="store_true",
                   help="fit the spin-symmetrised energy ½[E(M)+E(−M)] (stored in the potential)")
    o.add_argument("--magnetic-interval", choices=("auto", "keep"), default="keep",
                   help="auto: per-species ±max|m| of the training data; keep: POT's (default)")
    o.add_argument("--min-dist", choices=("auto", "keep"), default="keep",
                   help="auto: 0.99 × shortest distance in the training data; keep: POT's (default)")
    o.add_argument("--ensemble", type=int, default=None, metavar="N",
                   help="train N potentials with seeds SEED..SEED+N-1, written as OUT.0 .. OUT.N-1 "
                        "(suffix kept) with a summary OUT.ensemble.json")
    o.add_argument("--threads", type=int, default=None, help="OpenMP threads (default OMP_NUM_THREADS or 1)")
    o.add_argument("--al-mode", "--al_mode", dest="al_mode", choices=("nbh", "cfg"), default="nbh",
                   help="rows of the MaxVol active set stored in an .almtp output: per neighbourhood "
                        "(default) or per configuration")
    m = p.add_argument_group("MLIP-3 spellings (mlp train), mapped to the options above")
    m.add_argument("--init_random", type=_bool_value, default=None, metavar="true|false",
                   help="true: --init random; false: --init default (MLIP-3's initial coefficients)")
    m.add_argument("--update_mindist", dest="min_dist", action="store_const", const="auto",
                   help="--min-dist auto")
    m.add_argument("--no_mindist_update", dest="min_dist", action="store_const", const="keep",
                   help="--min-dist keep")
    m.add_argument("--auto-minmax-magmom", "--auto_minmax_magmom", dest="magnetic_interval",
                   action="store_const", const="auto", help="--magnetic-interval auto")
    m.add_argument("--weight_scaling_forces", type=int, choices=(0,), default=0,
                   help="only 0 (forces not divided by N), MLIP-3's default")
    m.add_argument("--skip_preinit", action="store_true",
                   help="accepted and ignored (mmtp train has no pre-initialisation iterations)")
    d = p.add_argument_group("data")
    v = d.add_mutually_exclusive_group()
    v.add_argument("--validation", "--valid_cfgs", dest="validation", metavar="FILE",
                   help="validation configurations")
    v.add_argument("--validation-fraction", type=float, metavar="F",
                   help="hold back this fraction of TRAIN (random, from --seed) for validation")
    d.add_argument("--en-der-sign", type=int, choices=(1, -1), default=1,
                   help="sign of en_der_* columns in .cfg input (+1: +dE/dm as MLIP-3; -1: magnetic force)")
    d.add_argument("--virial-sign", type=int, choices=(1, -1), default=1,
                   help="sign of an explicit 'virial' in extended XYZ input (+1: PlusStress)")
    d.add_argument("--species", nargs="+", default=None, metavar="SYMBOL",
                   help="symbols of the data's types 0, 1, ... (.cfg, extended XYZ, .h5): the data are renumbered to "
                        "POT's species order, and .cfg output keeps the data's numbering (default: POT's order)")
    r = p.add_argument_group("output")
    r.add_argument("--report", metavar="FILE", help="write the error report (text) to FILE")
    r.add_argument("--parity-plot", metavar="PNG", help="write predicted-vs-reference plots to PNG")
    p.set_defaults(func=run)


MIN_VALIDATION = 5   # configurations; fewer give validation errors dominated by chance

# --------------------------------------------------------------------------- helpers
def _bool_value(text: str) -> bool:
    """MLIP-3's boolean option values: true/false (also 1/0, yes/no)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices), both sorted; deterministic for a seed."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"must be between 0 and 1 (exclusive), got {fraction}", field="validation-fraction")
    if n < 2:
        raise InputError(f"cannot split {n} configuration(s) into training and validation",
                         field="validation-fraction")
    n_valid = min(max(int(round(fraction * n)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def member_path(output: str | Path, index: int) -> Path:
    """OUT.almtp → OUT.<index>.almtp (the suffix selects the format, so it is kept)."""
    out = Path(output)
    return out.with_name(f"{out.stem}.{index}{out.suffix}")


def ensemble_summary_path(output: str | Path) -> Path:
    out = Path(output)
    return out.with_name(f"{out.stem}.ensemble.json")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_data(path: str, args: argparse.Namespace, species: list[str] | None,
              pot=None) -> tuple[list, list[str] | None]:
    """Configurations of ``path`` (with the sign options of ``args``) and the species found.

    With ``pot`` the types are checked against it and renumbered from the data's order (the
    symbols of ``--species``, or those stored in the file) to the potential's species order.
    """
    from mmtp_hpc.io.formats import read_configurations_and_species

    configs, found = read_configurations_and_species(path, en_der_sign=args.en_der_sign,
                                                     species=species, virial_sign=args.virial_sign)
    if not configs:
        raise InputError("no configurations in the file", path=path)
    if pot is not None:
        to_potential_types(pot, configs, found, path)
        check_species(pot, configs, path)
    return configs, found


def to_potential_types(pot, configs: list, found: list[str] | None, path: str) -> np.ndarray | None:
    """Renumber ``configs``' types in place from the data's species order to the potential's.

    ``found[t]`` is the symbol of the data's type t (``--species``, or stored in the file).
    Returns the map data type → potential type, or None when nothing changes (same order, or
    the potential has no symbols). A symbol the potential lacks is an error naming both lists.
    """
    names = pot.species_names
    if found is None or not names or list(found) == list(names)[:len(found)]:
        return None
    found = list(found)
    used = sorted({int(t) for c in configs for t in np.unique(c.types)})
    if used and used[-1] >= len(found):
        raise InputError(f"the data have type {used[-1]} but the species list {found} has only "
                         f"{len(found)} entries", path=path, field="species")
    missing = [found[t] for t in used if found[t] not in names]
    if missing:
        raise InputError(f"species {missing} of the data are not among the potential's {list(names)} "
                         f"(types of the data: {found})", path=path, field="species")
    mapping = np.array([names.index(s) if s in names else -1 for s in found], dtype=np.int64)
    for cfg in configs:
        cfg.types = mapping[cfg.types]
    return mapping


def from_potential_types(configs: list, mapping: np.ndarray | None, n_species: int) -> None:
    """Undo :func:`to_potential_types` (in place), e.g. before writing the data's own .cfg types."""
    if mapping is None:
        return
    inverse = np.full(max(n_species, int(mapping.max()) + 1), -1, dtype=np.int64)
    inverse[mapping[mapping >= 0]] = np.flatnonzero(mapping >= 0)
    for cfg in configs:
        cfg.types = inverse[cfg.types]


def check_species(pot, configs: list, path: str) -> None:
    """Types beyond the potential's species would index out of its coefficient tables."""
    for k, cfg in enumerate(configs):
        if len(cfg) and int(cfg.types.max()) >= pot.species_count:
            names = f" ({', '.join(pot.species_names)})" if pot.species_names else ""
            raise InputError(f"configuration {k} has type {int(cfg.types.max())} but the potential has "
                             f"{pot.species_count} species{names}; if the data number their types "
                             "differently, pass --species with the symbols of the data's types 0, 1, ...",
                             path=path)


def attach_active_set_if_available(pot, configs: list, log, mode: str = "nbh") -> None:
    """Add MLIP-3's active set (so that grades can be computed at once), if the module exists."""
    try:
        from mmtp_hpc.active.maxvol import attach_active_set
    except ImportError:
        log("note: active-set selection is not available; the .almtp file has no active set")
        return
    attach_active_set(pot, configs, mode=mode)


# --------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.parallel.comm import get_comm
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential, save_potential
    from mmtp_hpc.training.fit import TrainSettings, train
    from mmtp_hpc.training.report import error_report, format_report, parity_plot

    comm = get_comm()
    root = comm.Get_rank() == 0

    def log(msg: str) -> None:
        if root:
            print(msg, file=sys.stdout, flush=True)

    # --- check options before any work, so that mistakes cost nothing
    if args.ensemble is not None and args.ensemble < 2:
        raise InputError(f"needs at least 2 members, got {args.ensemble}", field="ensemble")
    if args.ensemble is not None and args.init != "random":
        # the members differ only through the random start
        raise InputError(f"needs --init random (got {args.init})", field="ensemble")
    if args.max_iter < 0:
        raise InputError(f"must be >= 0, got {args.max_iter}", field="max-iter")
    if args.linear_every < 1:
        raise InputError(f"must be >= 1, got {args.linear_every}", field="linear-every")
    if args.tolerance < 0:
        raise InputError(f"must be >= 0, got {args.tolerance}", field="tolerance")
    if args.validation_fraction is not None and not 0.0 < args.validation_fraction < 1.0:
        raise InputError(f"must be between 0 and 1 (exclusive), got {args.validation_fraction}",
                         field="validation-fraction")
    out_suffix = Path(args.output).suffix.lower()
    if out_suffix not in (".almtp", ".mtp", ".mtpr", ".h5", ".hdf5"):
        raise InputError(f"unknown potential extension {out_suffix or '(none)'!r}; use .almtp, .mtp or .h5",
                         path=args.output, field="output")
    settings = TrainSettings(
        energy_weight=args.energy_weight, force_weight=args.force_weight,
        stress_weight=args.stress_weight, magnetic_weight=args.magnetic_weight,
        weight_scaling=args.weight_scaling, max_iter=args.max_iter, tolerance=args.tolerance,
        linear_every=args.linear_every, symmetrize=args.symmetrize, seed=args.seed, init=args.init,
        min_dist=args.min_dist, magnetic_interval=args.magnetic_interval, num_threads=args.threads)
    _ = settings.weights  # validates the weights (non-negative) now, not after reading the data

    # --- inputs (every rank reads them: the files are small next to the training work)
    pot = load_potential(args.potential)
    if args.init_random is not None:
        # MLIP-3 starts from the file's coefficients when it has them; init_random only picks the
        # start of an untrained potential
        settings.init = "keep" if pot.trained else ("random" if args.init_random else "default")
    species = args.species or pot.species_names
    configs, found = read_data(args.train, args, species, pot)
    if found is not None and pot.species_names is not None and list(found) != list(pot.species_names):
        log(f"note: types of {args.train} ({', '.join(found)}) renumbered to the potential's order "
            f"({', '.join(pot.species_names)})")
    names = pot.species_names or found
    if args.validation:
        train_configs = configs
        valid_configs, _ = read_data(args.validation, args, species, pot)
        valid_from = args.validation
    elif args.validation_fraction is not None:
        it, iv = split_validation(len(configs), args.validation_fraction, args.seed)
        train_configs = [configs[i] for i in it]
        valid_configs = [configs[i] for i in iv]
        valid_from = f"{args.validation_fraction:g} of {args.train} (seed {args.seed})"
    else:
        train_configs, valid_configs, valid_from = configs, [], None

    n_atoms = sum(len(c) for c in train_configs)
    log(f"mmtp train: {args.potential} (level {pot.level}, {pot.species_count} species"
        f"{', magnetic' if pot.magnetic else ''}, {pot.n_basis} basis functions) on "
        f"{len(train_configs)} configurations ({n_atoms} atoms) from {args.train}; "
        f"{comm.Get_size()} rank(s)")
    if valid_from:
        log(f"validation: {len(valid_configs)} configurations from {valid_from}")
        if len(valid_configs) < MIN_VALIDATION:
            log(f"warning: a validation set of {len(valid_configs)} configuration(s) gives a rough guess of "
                f"the errors at best (its energy RMSE rests on {len(valid_configs)} number(s)); use "
                f"≥ {MIN_VALIDATION} configurations")
    else:
        log("note: the errors printed will be training errors only; hold back data for validation "
            "with --validation FILE or --validation-fraction 0.1")
    log("settings: " + ", ".join(f"{k}={v}" for k, v in asdict(settings).items()))

    # --- training
    if args.ensemble:
        from mmtp_hpc.training.ensemble import train_ensemble

        results = train_ensemble(pot, train_configs, settings, args.ensemble, comm=comm, log=log)
    else:
        results = [train(pot, train_configs, settings, comm=comm, log=log, validation=valid_configs or None)]

    # --- error reports (collective: every rank evaluates its share)
    sections: list[str] = []
    reports = []
    for i, result in enumerate(results):
        rep_train = error_report(result.potential, train_configs, species_names=names, comm=comm,
                                 num_threads=args.threads)
        rep_valid = (error_report(result.potential, valid_configs, species_names=names, comm=comm,
                                  num_threads=args.threads) if valid_configs else None)
        reports.append((rep_train, rep_valid))
        tag = f"member {i} " if args.ensemble else ""
        sections.append(format_report(rep_train, f"{tag}training set"))
        if rep_valid is not None:
            sections.append(format_report(rep_valid, f"{tag}validation set"))
    summary = None
    plot_reports = reports[0]
    if args.ensemble:
        from mmtp_hpc.training.ensemble import ensemble_summary, format_ensemble_summary

        files = [str(member_path(args.output, i)) for i in range(len(results))]
        summary, mean_reports = ensemble_summary(results, train_configs, valid_configs or None, names,
                                                 comm=comm, num_threads=args.threads, files=files,
                                                 member_reports=reports)
        # the ensemble mean is the prediction one would use: it is reported and plotted
        sections.append(format_report(mean_reports[0], "ensemble mean, training set"))
        if mean_reports[1] is not None:
            sections.append(format_report(mean_reports[1], "ensemble mean, validation set"))
        plot_reports = mean_reports
        summary["settings"] = asdict(settings)
        summary["train_file"] = args.train
        summary["validation"] = valid_from
        sections.append(format_ensemble_summary(summary))

    # --- output (rank 0 only)
    if not root:
        return 0
    for text in sections:
        print(text, flush=True)
    written = []
    for i, result in enumerate(results):
        path = member_path(args.output, i) if args.ensemble else Path(args.output)
        if out_suffix == ".almtp":
            attach_active_set_if_available(result.potential, train_configs, log, args.al_mode)
        save_potential(result.potential, path)
        written.append(str(path))
    if summary is not None:
        summary_path = ensemble_summary_path(args.output)
        text = json.dumps(summary, indent=2, default=_json_default, ensure_ascii=False)
        summary_path.write_text(text + "\n", encoding="utf-8")
        written.append(str(summary_path))
    if args.report:
        header = [f"# mmtp train {args.potential} {args.train} -> {', '.join(written)}",
                  "# settings: " + json.dumps(asdict(settings), default=_json_default)]
        for i, result in enumerate(results):
            header.extend(f"# {'member %d ' % i if args.ensemble else ''}{note}" for note in result.notes)
            if result.history:
                last = result.history[-1]
                header.append(f"# {'member %d ' % i if args.ensemble else ''}final loss {last['loss']:.6e} "
                              f"after {last['iteration']} iterations, {result.wall_time:.1f} s")
        Path(args.report).write_text("\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n",
                                     encoding="utf-8")
        written.append(args.report)
    if args.parity_plot:
        parity_plot(plot_reports[0], plot_reports[1], args.parity_plot)
        written.append(args.parity_plot)
    print(f"mmtp train: wrote {', '.join(written)}", flush=True)
    return 0
