"""``mmtp efs POT IN -o OUT``: energies, forces, stresses (and ∂E/∂m) like MLIP-3's calculate_efs."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mmtp_hpc.errors import InputError


SMALL_PER_RANK = 5000   # atoms per rank below which one distributed evaluation is mostly overhead


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("efs", aliases=["calculate_efs"],
                       help="evaluate energy, forces, PlusStress (and dE/dm) for every configuration",
                       description="Writes every configuration of IN with Energy, site_en, fx fy fz, "
                                   "PlusStress and, for magnetic potentials, en_der_mx (= +dE/dm, "
                                   "MLIP-3 sign) at full precision. 'mmtp calculate_efs POT IN OUT' "
                                   "(MLIP-3's spelling, also --output_filename=OUT) is the same command.")
    p.add_argument("potential", help="potential file (.mtp, .almtp, .mtpr, .h5)")
    p.add_argument("input", help="configurations (.cfg, .xyz/.extxyz, .h5)")
    p.add_argument("output_positional", nargs="?", metavar="OUT", help="output file (or -o OUT)")
    p.add_argument("-o", "--output", "--output_filename", dest="output",
                   help="output file (.cfg, .xyz/.extxyz, .h5)")
    p.add_argument("--symmetrize", action=argparse.BooleanOptionalAction, default=None,
                   help="use the spin-symmetrised energy ½[E(M)+E(−M)] (default: the potential's flag)")
    p.add_argument("--magmoms", type=float, default=None,
                   help="moment (μB) for configurations without moments (required for a magnetic "
                        "potential on non-magnetic data)")
    p.add_argument("--en-der-sign", type=int, choices=(1, -1), default=1,
                   help="sign of en_der_* columns in IN (+1: +dE/dm as MLIP-3; -1: magnetic force)")
    p.add_argument("--species", nargs="+", default=None, metavar="SYMBOL",
                   help="symbols of the data's types 0, 1, ... (.cfg, extended XYZ, .h5): evaluated in "
                        "POT's species order, written with the data's own numbering (default: POT's order)")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default OMP_NUM_THREADS or 1)")
    p.add_argument("--grid", type=int, nargs=3, default=None, metavar=("PX", "PY", "PZ"),
                   help="MPI rank grid for the domain decomposition (default: MPI.Compute_dims)")
    p.set_defaults(func=run)


def output_argument(args: argparse.Namespace, name: str = "OUT") -> str:
    """The output file given as -o/--output or as the last positional argument (MLIP-3 style)."""
    positional = getattr(args, "output_positional", None)
    if args.output and positional and args.output != positional:
        raise InputError(f"two outputs given ({positional} and -o {args.output})", field="output")
    out = args.output or positional
    if not out:
        raise InputError(f"no output file: pass {name} or -o {name}", field="output")
    return out


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.cli.train import check_species, from_potential_types, to_potential_types
    from mmtp_hpc.io.formats import read_configurations_and_species, write_configurations
    from mmtp_hpc.potentials.mtp.engine import MTPEngine
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    from mmtp_hpc.parallel.comm import get_comm

    comm = get_comm()
    root = comm.Get_rank() == 0
    args.output = output_argument(args)
    pot = load_potential(args.potential)
    species = args.species or pot.species_names
    configs, found = read_configurations_and_species(args.input, en_der_sign=args.en_der_sign,
                                                     species=species)
    type_map = to_potential_types(pot, configs, found, args.input)
    check_species(pot, configs, args.input)
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
        bad = [name for name in ("energy", "forces", "virial", "magnetic_gradient")
               if out.get(name) is not None and not np.all(np.isfinite(out[name]))]
        if bad:
            raise InputError(f"configuration {k}: the potential gives non-finite {', '.join(bad)} (its "
                             "coefficients or the configuration are outside what can be evaluated); nothing "
                             "was written", path=str(args.input))
        cfg.energy = out["energy"]
        cfg.site_energies = out["site_energies"]
        cfg.forces = out["forces"]
        cfg.virial = out["virial"] if cfg.pbc.all() else None
        cfg.magnetic_gradient = out["magnetic_gradient"] if pot.magnetic else None
    if not root:
        return 0
    if args.species:
        from_potential_types(configs, type_map, pot.species_count)
    write_configurations(args.output, configs, species=species)
    per_atom = 1e6 * elapsed / max(n_atoms, 1)
    ranks = f" on {comm.Get_size()} ranks ({layout} for the last)" if comm.Get_size() > 1 else ""
    print(f"mmtp efs: {len(configs)} configurations, {n_atoms} atoms, "
          f"{elapsed:.3f} s evaluation, {per_atom:.1f} µs/atom{ranks} -> {args.output}", file=sys.stdout)
    size = comm.Get_size()
    per_rank = n_atoms / max(len(configs), 1) / size
    if size > 1 and per_rank < SMALL_PER_RANK:
        print(f"mmtp efs: note: {per_rank:.0f} atoms per rank and configuration. One evaluation on "
              f"{size} ranks pays for setting up the decomposition (rank grid, ghost atoms within "
              "the cutoff from the neighbouring subdomains, their neighbour lists) and for gathering "
              "every result on rank 0, which a single evaluation cannot amortise: on small cells it "
              "is slower than one rank. Domain decomposition pays off in MD (one setup, many steps) "
              f"and for cells of ≳ {SMALL_PER_RANK} atoms per rank.", file=sys.stdout)
    return 0
