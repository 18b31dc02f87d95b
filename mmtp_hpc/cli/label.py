"""``mmtp label MODEL IN -o OUT``: label configurations with the built-in analytic magnetic model.

MODEL is ``builtin`` (the Fe–Al model of :mod:`mmtp_hpc.potentials.analytic`) or a JSON
parameter file in that format (e.g. ``inputs/models/fe_al_model.json``). Each
configuration gets Energy, site energies, forces, PlusStress (periodic cells only) and
``en_der_mx`` = +∂E/∂m at its moments, like constrained-moment DFT. With
``--relax-moments`` the moments are first relaxed (∂E/∂m = 0) at fixed positions and the
output carries the relaxed moments.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mmtp_hpc.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label configurations with the built-in analytic magnetic model",
                       description="Energy, forces, PlusStress and +dE/dm (MLIP-3 sign) from the "
                                   "analytic EAM + Heisenberg + Landau model, moments held at their "
                                   "given values (constrained-moment DFT stand-in) or relaxed.")
    p.add_argument("model", help="'builtin' or a JSON parameter file (see inputs/models/fe_al_model.json)")
    p.add_argument("input", help="configurations (.cfg, .xyz/.extxyz, .h5, or any ASE-readable file)")
    p.add_argument("-o", "--output", required=True, help="output file (.cfg, .xyz/.extxyz, .h5)")
    p.add_argument("--relax-moments", action="store_true",
                   help="relax the moments at fixed positions before labelling (starting from the "
                        "file's moments, --magmoms, or the single-site Landau minimum)")
    p.add_argument("--magmoms", type=float, nargs="+", default=None, metavar="VALUE",
                   help="moments (μB) for configurations without moments: one value for every atom, "
                        "or one per species in --species order")
    p.add_argument("--species", nargs="+", default=None,
                   help="chemical symbols of types 0, 1, ... (default: the model's, Fe Al)")
    p.add_argument("--en-der-sign", type=int, choices=(1, -1), default=1,
                   help="sign of en_der_* columns in a .cfg IN (+1: +dE/dm as MLIP-3; -1: magnetic force)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="moment relaxation tolerance on max |dE/dm| (eV/μB), default 1e-6")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.io.formats import read_configurations, write_configurations
    from mmtp_hpc.potentials.analytic import AnalyticMagneticModel

    model = AnalyticMagneticModel.load(args.model, species=args.species)
    species = model.species
    configs = read_configurations(args.input, en_der_sign=args.en_der_sign, species=species)
    fill = None
    if args.magmoms is not None:
        fill = np.asarray(args.magmoms, dtype=float)
        if fill.size not in (1, len(species)):
            raise InputError(f"give one moment or one per species ({len(species)}: {' '.join(species)}), "
                             f"got {fill.size}", field="--magmoms")
    labelled = []
    n_atoms = 0
    t0 = time.perf_counter()
    for k, cfg in enumerate(configs):
        if cfg.magmoms is None and fill is not None:
            model.check_configuration(cfg, None, required=False)  # types must be known first
            cfg.magmoms = np.full(len(cfg), fill[0]) if fill.size == 1 else fill[cfg.types]
        if cfg.magmoms is None and not args.relax_moments:
            raise InputError(f"{args.input}: configuration {k} has no magnetic moments; pass "
                             "--magmoms VALUE or --relax-moments")
        try:
            labelled.append(model.label(cfg, relax=args.relax_moments, tol=args.tol))
        except InputError as exc:
            raise InputError(f"{args.input}: configuration {k}: {exc}") from exc
        n_atoms += len(cfg)
    elapsed = time.perf_counter() - t0
    write_configurations(args.output, labelled, species=species)
    relaxed = ", moments relaxed" if args.relax_moments else ""
    print(f"mmtp label: {len(labelled)} configurations, {n_atoms} atoms{relaxed}, {elapsed:.3f} s "
          f"({1e6 * elapsed / max(n_atoms, 1):.1f} µs/atom) -> {args.output}", file=sys.stdout)
    return 0
