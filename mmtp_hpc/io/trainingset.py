"""Store configurations with all their labels in an HDF5 training-set file.

Layout, names and units come from :mod:`mmtp_hpc.io.schema` (``TrainingSet``): per-atom
arrays are concatenated and addressed by per-configuration offsets, every optional
label has a presence mask, features are JSON strings, provenance is free text per
configuration. Floats are stored as float64, so a write/read round trip is bit-exact.

Writes (including appends) are atomic: the new file is built beside the target and
renamed over it, so an interrupted run never leaves a truncated training set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io import schema
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.io.schema import TrainingSet as TS
from mmtp_hpc.system.configuration import Configuration

_CHUNK_OPTS: dict[str, Any] = {"chunks": True, "compression": "gzip", "compression_opts": 4}
_STR = h5py.string_dtype()


def write_trainingset_h5(path: str | os.PathLike, configs: Configuration | Iterable[Configuration],
                         provenance: str | Sequence[str] | None = None, append: bool = False,
                         species: Sequence[str] | None = None,
                         settings: dict | None = None) -> int:
    """Write (or with ``append=True`` add) configurations; return how many were written.

    ``provenance``: one string for all configurations or one per configuration.
    ``species``: chemical symbols of types 0, 1, ... (stored, checked on append).
    ``settings``: JSON-able metadata stored as the root ``settings`` attribute
    (replaced on append when given).
    """
    if isinstance(configs, Configuration):
        configs = [configs]
    configs = list(configs)
    if provenance is None or isinstance(provenance, str):
        prov = [provenance or ""] * len(configs)
    else:
        prov = [str(p) for p in provenance]
        if len(prov) != len(configs):
            raise InputError(f"{len(prov)} provenance strings for {len(configs)} configurations",
                             field="provenance")
    species_list = None if species is None else [str(s) for s in species]
    existing = append and Path(path).exists()
    with atomic_path(path, copy_existing=existing) as tmp:
        with h5py.File(tmp, "a" if existing else "w") as f:
            if existing:
                schema.check_header(f, schema.KIND_TRAININGSET, str(path))
                stored = json.loads(_text(f.attrs.get(TS.SPECIES_ATTR, "null")))
                if species_list is not None and stored is not None and stored != species_list:
                    raise InputError(f"species {species_list} differ from the file's {stored}",
                                     path=str(path), field="species")
                if settings is not None:
                    schema.write_header(f, schema.KIND_TRAININGSET, settings)
            else:
                schema.write_header(f, schema.KIND_TRAININGSET, settings or {})
                stored = None
            if species_list is not None and stored is None:
                f.attrs[TS.SPECIES_ATTR] = json.dumps(species_list)
            elif not existing:
                f.attrs[TS.SPECIES_ATTR] = json.dumps(None)
            _append(f, configs, prov)
    return len(configs)


def _append(f: h5py.File, configs: list[Configuration], prov: list[str]) -> None:
    cgroup = f.require_group(TS.CONFIGS)
    agroup = f.require_group(TS.ATOMS)
    n_old = len(cgroup[TS.N_ATOMS]) if TS.N_ATOMS in cgroup else 0
    atoms_old = len(agroup[TS.POSITIONS]) if TS.POSITIONS in agroup else 0
    counts = np.array([len(c) for c in configs], dtype=np.int64)
    offsets = atoms_old + np.cumsum(counts) - counts

    def cat(values: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.empty((0,) + shape, dtype)

    _extend(cgroup, TS.N_ATOMS, counts, n_old, None)
    _extend(cgroup, TS.ATOM_OFFSET, offsets, n_old, None)
    _extend(cgroup, TS.CELL, cat([c.cell[None] for c in configs], (3, 3), np.float64), n_old, None)
    _extend(cgroup, TS.PBC, cat([c.pbc[None] for c in configs], (3,), bool), n_old, None)
    _extend(cgroup, TS.FEATURES, np.array([json.dumps(c.features) for c in configs], dtype=object),
            n_old, None)
    _extend(cgroup, TS.PROVENANCE, np.array(prov, dtype=object), n_old, None)
    _extend(agroup, TS.POSITIONS, cat([c.positions for c in configs], (3,), np.float64),
            atoms_old, None)
    _extend(agroup, TS.TYPES, cat([c.types for c in configs], (), np.int64), atoms_old, None)
    _extend(agroup, TS.IDS, cat([c.ids for c in configs], (), np.int64), atoms_old, None)

    for label, per_atom, shape in TS.OPTIONAL_LABELS:
        values = [getattr(c, label) for c in configs]
        mask = np.array([v is not None for v in values], dtype=bool)
        _extend(cgroup, TS.mask(label), mask, n_old, False)
        group, old = (agroup, atoms_old) if per_atom else (cgroup, n_old)
        if not mask.any() and label not in group:
            continue  # a label nobody has gets no dataset
        fill = False if label == "ghost" else np.nan
        dtype = bool if label == "ghost" else np.float64
        if per_atom:
            rows = [np.full((len(c),) + shape, fill, dtype) if v is None else np.asarray(v, dtype)
                    for c, v in zip(configs, values, strict=True)]
        else:
            rows = [np.full((1,) + shape, fill, dtype) if v is None else np.asarray(v, dtype)[None]
                    for v in values]
        _extend(group, label, cat(rows, shape, dtype), old, fill)


def _extend(group: h5py.Group, name: str, data: np.ndarray, n_before: int, fill: Any) -> None:
    """Append rows to an appendable dataset, creating it (back-filled with ``fill``) if needed."""
    if name not in group:
        dtype = _STR if data.dtype == object else data.dtype
        dset = group.create_dataset(name, shape=(n_before,) + data.shape[1:], dtype=dtype,
                                    maxshape=(None,) + data.shape[1:], **_CHUNK_OPTS)
        if n_before:
            dset[...] = fill
        schema.set_units(dset, name)
    dset = group[name]
    start = dset.shape[0]
    if start != n_before:
        raise InputError(f"dataset {dset.name} has {start} rows, expected {n_before} (corrupt file?)",
                         path=group.file.filename, field=name)
    dset.resize(start + len(data), axis=0)
    if len(data):
        dset[start:] = data


# ===================================================================== reading
def read_trainingset_h5(path: str | os.PathLike) -> list[Configuration]:
    """All configurations of a training-set file, with exactly the labels they were written with."""
    with schema.reading(path, "training-set"):
        configs = _read_trainingset_h5(path)
    for k, cfg in enumerate(configs):
        if not (np.all(np.isfinite(cfg.cell)) and np.all(np.isfinite(cfg.positions))):
            raise InputError(f"configuration {k}: non-finite cell or positions", path=str(path))
    return configs


def _read_trainingset_h5(path: str | os.PathLike) -> list[Configuration]:
    with _open(path) as f:
        c, a = f[TS.CONFIGS], f[TS.ATOMS]
        counts, offsets = c[TS.N_ATOMS][...], c[TS.ATOM_OFFSET][...]
        n_atoms_total = a[TS.POSITIONS].shape[0]
        if len(offsets) != len(counts) or (len(counts) and (np.any(offsets < 0) or np.any(counts < 0) or
                                           np.any(offsets + counts > n_atoms_total))):
            raise InputError("configuration offsets point outside /atoms (corrupt file)",
                             path=str(path), field=TS.ATOM_OFFSET)
        cell, pbc = c[TS.CELL][...], c[TS.PBC][...]
        features = c[TS.FEATURES].asstr()[...]
        positions, types, ids = a[TS.POSITIONS][...], a[TS.TYPES][...], a[TS.IDS][...]
        labels: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for label, per_atom, _shape in TS.OPTIONAL_LABELS:
            group = a if per_atom else c
            mask = c[TS.mask(label)][...]
            labels[label] = (mask, group[label][...] if label in group else None)
            if mask.any() and labels[label][1] is None:
                raise InputError(f"mask {TS.mask(label)} is set but there is no {label} dataset",
                                 path=str(path), field=label)

    configs = []
    for i, (n, off) in enumerate(zip(counts.tolist(), offsets.tolist(), strict=True)):
        sl = slice(off, off + n)
        kw: dict[str, Any] = {}
        for label, per_atom, _shape in TS.OPTIONAL_LABELS:
            mask, data = labels[label]
            if mask[i]:
                kw[label] = data[sl].copy() if per_atom else data[i].copy()
        if "energy" in kw:
            kw["energy"] = float(kw["energy"])
        configs.append(Configuration(cell=cell[i], positions=positions[sl], types=types[sl],
                                     pbc=pbc[i], ids=ids[sl], features=json.loads(features[i]),
                                     **kw))
    return configs


def read_trainingset_provenance(path: str | os.PathLike) -> list[str]:
    """The provenance string of each configuration, in file order."""
    with schema.reading(path, "training-set"), _open(path) as f:
        return list(f[TS.CONFIGS][TS.PROVENANCE].asstr()[...])


def read_trainingset_info(path: str | os.PathLike) -> dict:
    """File-level metadata: counts, species list, settings, schema version."""
    with schema.reading(path, "training-set"), _open(path) as f:
        counts = f[TS.CONFIGS][TS.N_ATOMS][...]
        return {
            "n_configurations": int(len(counts)),
            "n_atoms": int(counts.sum()),
            "species": json.loads(_text(f.attrs.get(TS.SPECIES_ATTR, "null"))),
            "settings": schema.read_settings(f),
            "schema_version": int(f.attrs[schema.SCHEMA_VERSION_ATTR]),
        }


def trainingset_species(path: str | os.PathLike) -> list[str] | None:
    """The species list stored in a training-set file, or None when none was given."""
    return read_trainingset_info(path)["species"]


def _open(path: str | os.PathLike) -> h5py.File:
    return schema.open_checked(path, schema.KIND_TRAININGSET, (TS.CONFIGS, TS.ATOMS))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
