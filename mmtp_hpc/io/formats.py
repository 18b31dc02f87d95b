"""Pick the reader/writer for a configuration file from its name (or an explicit format).

``.cfg`` → MLIP-3 (:mod:`.cfg`), ``.xyz``/``.extxyz`` → extended XYZ (:mod:`.extxyz`),
``.h5``/``.hdf5`` → HDF5 training set (:mod:`.trainingset`); any other file that ASE
recognises (POSCAR, OUTCAR, ...) goes through ASE.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmtp_hpc.errors import InputError
from mmtp_hpc.system.configuration import Configuration

EXTENSIONS = {".cfg": "cfg", ".xyz": "extxyz", ".extxyz": "extxyz", ".h5": "h5", ".hdf5": "h5"}
_ALIASES = {"cfg": "cfg", "mlip": "cfg", "xyz": "extxyz", "extxyz": "extxyz", "h5": "h5",
            "hdf5": "h5", "trainingset": "h5"}
_ASE_PREFIX = "ase:"


def detect_format(path: str | os.PathLike, fmt: str | None = None, reading: bool = True) -> str:
    """``"cfg"``, ``"extxyz"``, ``"h5"`` or ``"ase:<ASE format name>"``."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    if fmt is not None:
        if fmt in _ALIASES:
            return _ALIASES[fmt]
        name = fmt[len(_ASE_PREFIX):] if fmt.startswith(_ASE_PREFIX) else fmt
        if name not in ioformats:
            raise InputError(f"unknown format {fmt!r}; known: {', '.join(sorted(_ALIASES))} or an "
                             "ASE format name", field="format")
        return _ASE_PREFIX + name
    suffix = Path(path).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    known = " ".join(EXTENSIONS)
    try:
        name = filetype(str(path), read=reading and Path(path).is_file())
    except UnknownFileTypeError:
        name = None
    io_format = ioformats.get(name) if name else None
    if io_format is None or not (io_format.can_read if reading else io_format.can_write):
        raise InputError(f"cannot tell the file format from the name (known extensions: {known}; "
                         "or a file ASE recognises, such as POSCAR or OUTCAR); pass a format",
                         path=str(path), field="format")
    return _ASE_PREFIX + io_format.name


def read_configurations_and_species(
        path: str | os.PathLike, fmt: str | None = None, en_der_sign: int = +1,
        species: Sequence[str] | None = None,
        virial_sign: int = +1) -> tuple[list[Configuration], list[str] | None]:
    """Configurations of a file and the species list that maps its types (None if unknown).

    ``en_der_sign`` applies to ``.cfg`` files only and ``virial_sign`` to an explicit
    ``virial`` in extended XYZ; neither is ever guessed.
    """
    kind = detect_format(path, fmt, reading=True)
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: {path}")
    if en_der_sign != 1 and kind != "cfg":
        raise InputError("en_der_sign only applies to .cfg input", path=str(path),
                         field="en_der_sign")
    if kind == "cfg":
        from mmtp_hpc.io.cfg import read_cfg

        return read_cfg(path, en_der_sign=en_der_sign), None if species is None else list(species)
    if kind == "h5":
        from mmtp_hpc.io.trainingset import read_trainingset_h5, trainingset_species

        stored = trainingset_species(path)
        return read_trainingset_h5(path), stored if stored is not None else (
            None if species is None else list(species))
    from mmtp_hpc.io.extxyz import read_ase

    ase_format = "extxyz" if kind == "extxyz" else kind[len(_ASE_PREFIX):]
    return read_ase(path, species=species, format=ase_format, virial_sign=virial_sign)


def read_configurations(path: str | os.PathLike, fmt: str | None = None, en_der_sign: int = +1,
                        species: Sequence[str] | None = None,
                        virial_sign: int = +1) -> list[Configuration]:
    """Configurations of any supported file (see :func:`read_configurations_and_species`)."""
    return read_configurations_and_species(path, fmt, en_der_sign, species, virial_sign)[0]


def write_configurations(path: str | os.PathLike, configs: Configuration | Iterable[Configuration],
                         fmt: str | None = None, species: Sequence[str] | None = None,
                         provenance: str | Sequence[str] | None = None,
                         append: bool = False) -> int:
    """Write configurations in the format the name (or ``fmt``) says; return the count.

    ``species`` is needed for formats with chemical symbols (extended XYZ, ASE) and is
    recorded in HDF5; ``.cfg`` has types only. ``provenance`` is kept by HDF5 only.
    """
    if isinstance(configs, Configuration):
        configs = [configs]
    kind = detect_format(path, fmt, reading=False)
    if kind == "cfg":
        from mmtp_hpc.io.cfg import write_cfg

        return write_cfg(path, configs, append=append)
    if kind == "h5":
        from mmtp_hpc.io.trainingset import write_trainingset_h5

        return write_trainingset_h5(path, configs, provenance=provenance, append=append,
                                    species=species)
    if kind == "extxyz":
        from mmtp_hpc.io.extxyz import write_extxyz

        return write_extxyz(path, configs, species, append=append)
    from ase.io import write

    from mmtp_hpc.io.atomic import atomic_path
    from mmtp_hpc.io.extxyz import configuration_to_atoms

    images = [configuration_to_atoms(c, species) for c in configs]
    ase_format = kind[len(_ASE_PREFIX):]
    with atomic_path(path, copy_existing=append) as tmp:
        try:
            write(str(tmp), images if len(images) != 1 else images[0], format=ase_format,
                  append=append)
        except (ValueError, TypeError, NotImplementedError) as exc:
            # e.g. POSCAR holds one structure only
            raise InputError(f"ASE cannot write this as {ase_format!r}: {exc}",
                             path=str(path)) from exc
    return len(images)
