"""``mmtp efs POT IN -o OUT``: energies, forces, stresses (and ∂E/∂m) like MLIP-3's calculate_efs."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mmtp_hpc.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("efs", help="evaluate energy, forces, PlusStress (and dE/dm) for every configuration",
                       description="Writes every configuration of IN with Energy, site_en, fx fy fz, "
                                   "PlusStress and, for magnetic potentials, en_der_mx (= +dE/dm, "
                                   "MLIP-3 sign) at full precision.")
    p.add_argument("potential", help="potential file (.mtp, .almtp, .mtpr, .h5)")
    p.add_argument("input", help="configurations (.cfg, .xyz/.extxyz, .h5)")
    p.add_argument("-o", "--output", required=True, help="output file (.cfg, .xyz/.extxyz, .h5)")
    p.add_argument("--symmetrize", action=argparse.BooleanOptionalAction, default=None,
                   help="use the spin-symmetrised energy ½[E(M)+E(−M)] (default: the potential's flag)")
    p.add_argument("--magmoms", type=float, default=None,
                   help="moment (μB) for configurations without moments (required for a magnetic "
                        "potential on non-magnetic data)")
    p.add_argument("--en-der-sign", type=int, choices=(1, -1), default=1,
                   help="sign of en_der_* columns in IN (+1: +dE/dm as MLIP-3; -1: magnetic force)")
    p.add_argument("--species", nargs="+", default=None,
                   help="chemical symbols of types 0, 1, ... (extended XYZ input/output)")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default OMP_NUM_THREADS or 1)")
    p.add_argument("--grid", type=int, nargs=3, default=None, metavar=("PX", "PY", "PZ"),
                   help="MPI rank grid for the domain decomposition (default: MPI.Compute_dims)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.io.formats import read_configurations, write_configurations
    from mmtp_hpc.potentials.mtp.engine import MTPEngine
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    from mmtp_hpc.parallel.comm import get_comm

    comm = get_comm()
    root = comm.Get_rank() == 0
    pot = load_potential(args.potential)
    species = args.species or pot.species_names
    configs = read_configurations(args.input, en_der_sign=args.en_der_sign, species=species)
    engine = MTPEngine(pot, num_threads=args.threads)
    n_atoms = 0
    elapsed = 0.0
    layout = ""
    for k, cfg in enumerate(configs):
        magmoms = None
        if pot.magnetic and cfg.magmoms is None:
            if args.magmoms is None:
                raise InputError(f"{args.input}: configuration {k} has no magnetic moments and the "
                                 "potential is magnetic; pass --magmoms VALUE")
            cfg.magmoms = np.full(len(cfg), args.magmoms)
        t0 = time.perf_counter()
        if comm.Get_size() > 1:
            # every configuration domain-decomposed over all ranks; results gathered on rank 0
            from mmtp_hpc.dynamics.domain import evaluate_distributed

            out = evaluate_distributed(engine, cfg, comm, magmoms, symmetric=args.symmetrize, grid=args.grid)
            elapsed += time.perf_counter() - t0
            n_atoms += len(cfg)
            if not root:
                continue
            layout = out["decomposition"]
        else:
            out = engine.evaluate(cfg, magmoms, symmetric=args.symmetrize)
            elapsed += time.perf_counter() - t0
            n_atoms += len(cfg)
        cfg.energy = out["energy"]
        cfg.site_energies = out["site_energies"]
        cfg.forces = out["forces"]
        cfg.virial = out["virial"] if cfg.pbc.all() else None
        cfg.magnetic_gradient = out["magnetic_gradient"] if pot.magnetic else None
    if not root:
        return 0
    write_configurations(args.output, configs, species=species)
    per_atom = 1e6 * elapsed / max(n_atoms, 1)
    ranks = f" on {comm.Get_size()} ranks ({layout} for the last)" if comm.Get_size() > 1 else ""
    print(f"mmtp efs: {len(configs)} configurations, {n_atoms} atoms, "
          f"{elapsed:.3f} s evaluation, {per_atom:.1f} µs/atom{ranks} -> {args.output}", file=sys.stdout)
    return 0
