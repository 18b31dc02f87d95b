"""``mmtp new-potential``: write a new (untrained) potential of a given level."""

from __future__ import annotations

import argparse

from mmtp_hpc.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "new-potential", help="write a new untrained potential with MLIP-3's level-L basis",
        description="Generate the basis of MTP level L (the same basis functions as MLIP-3's "
                    "template L.mtp) and write a new potential. It is magnetic when "
                    "--magnetic-size > 1 or a magnetic interval is given.")
    p.add_argument("--level", type=int, default=16, help="MTP level, even, 2..28 (default 16)")
    p.add_argument("--species", type=int, default=1, help="number of species (default 1)")
    p.add_argument("--species-names", nargs="+", metavar="SYMBOL",
                   help="chemical symbols of types 0, 1, ... (stored as an extension key)")
    p.add_argument("--radial-size", type=int, default=8, help="radial basis size R (default 8)")
    p.add_argument("--rmin", type=float, default=2.0, help="min_dist in Å (default 2)")
    p.add_argument("--rcut", type=float, default=5.0, help="max_dist (cutoff) in Å (default 5)")
    p.add_argument("--magnetic-size", type=int, default=1,
                   help="magnetic basis size M (default 1: non-magnetic unless an interval is given)")
    p.add_argument("--magnetic-interval", nargs=2, type=float, metavar=("MIN", "MAX"),
                   help="magnetic interval in μB for all species (MLIP-3's single interval)")
    p.add_argument("--species-intervals", nargs="+", metavar="SPECIES:MIN:MAX",
                   help="per-species magnetic intervals in μB, SPECIES a type index or a name from "
                        "--species-names, e.g. Fe:-3:3 Al:-0.1:0.1; species not listed take "
                        "--magnetic-interval")
    p.add_argument("--init", choices=("default", "none", "random"), default="default",
                   help="coefficients: MLIP-3's untrained defaults (default), none (a bare "
                        "template), or random (for tests; see --seed)")
    p.add_argument("--seed", type=int, default=0, help="random seed for --init random (default 0)")
    p.add_argument("-o", "--output", required=True, help="output file (.mtp, .almtp or .h5)")
    p.set_defaults(func=run)


def _species_index(token: str, names: list[str] | None, count: int) -> int:
    if names and token in names:
        return names.index(token)
    try:
        index = int(token)
    except ValueError:
        raise InputError(f"unknown species {token!r} (give a type index 0..{count - 1} or a name "
                         f"from --species-names)", field="species-intervals") from None
    if not 0 <= index < count:
        raise InputError(f"species index {index} out of range 0..{count - 1}", field="species-intervals")
    return index


def magnetic_intervals(args: argparse.Namespace) -> list[tuple[float, float]] | tuple[float, float] | None:
    """The mag_interval argument of new_potential from the command-line options."""
    if not args.species_intervals:
        return tuple(args.magnetic_interval) if args.magnetic_interval else None
    count = args.species
    default = tuple(args.magnetic_interval) if args.magnetic_interval else None
    per: list[tuple[float, float] | None] = [default] * count
    for spec in args.species_intervals:
        parts = spec.rsplit(":", 2)
        if len(parts) != 3:
            raise InputError(f"{spec!r} is not SPECIES:MIN:MAX", field="species-intervals")
        try:
            lo, hi = float(parts[1]), float(parts[2])
        except ValueError:
            raise InputError(f"{spec!r}: MIN and MAX must be numbers", field="species-intervals") from None
        per[_species_index(parts[0], args.species_names, count)] = (lo, hi)
    missing = [i for i, iv in enumerate(per) if iv is None]
    if missing:
        raise InputError(f"no magnetic interval for species {missing} (list them in --species-intervals "
                         "or give --magnetic-interval)", field="species-intervals")
    return per


def run(args: argparse.Namespace) -> int:
    from mmtp_hpc.potentials.mtp.basis import new_potential
    from mmtp_hpc.potentials.mtp.mlip_io import save_potential

    pot = new_potential(args.level, species_count=args.species, radial_basis_size=args.radial_size,
                        mag_basis_size=args.magnetic_size, mag_interval=magnetic_intervals(args),
                        min_dist=args.rmin, max_dist=args.rcut, species_names=args.species_names,
                        init=args.init, seed=args.seed)
    save_potential(pot, args.output)
    mag = ""
    if pot.magnetic:
        if pot.global_interval:
            mag = f", magnetic basis {pot.mag_basis_size} on [{pot.mag_min[0]:g}, {pot.mag_max[0]:g}] μB"
        else:
            spans = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in zip(pot.mag_min, pot.mag_max, strict=True))
            mag = f", magnetic basis {pot.mag_basis_size} on {spans} μB"
    print(f"wrote {args.output}: level {args.level}, {pot.species_count} species, {pot.n_basis} basis "
          f"functions, {len(pot.alpha_index_times)} products, {pot.n_params} parameters{mag}")
    return 0
