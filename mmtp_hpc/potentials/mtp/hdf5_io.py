"""Store an ``MTPPotential`` in HDF5 and load it back field for field.

Every field survives bit for bit: scalars as attributes, tables and coefficients as
int64/float64 datasets, ``species_names`` and ``extra`` as JSON, the per-species
magnetic interval as two (C,) arrays, and the active set as raw bytes. Names and
units come from :mod:`mmtp_hpc.io.schema` (``Potential``).

The active set may be raw ``bytes`` (MLIP-3's ``#MVS`` block as read) or an object
with ``to_bytes()``. Raw bytes come back as the same bytes. For an object its bytes
and class name are stored; on reading, if ``mmtp_hpc.potentials.mtp.mlip_io`` offers
``parse_active_set(raw: bytes)`` that rebuilds the object, otherwise the bytes are
returned.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import h5py
import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io import schema
from mmtp_hpc.io.atomic import atomic_path
from mmtp_hpc.io.schema import Potential as P
from mmtp_hpc.potentials.mtp.parameters import MTPPotential

_MLIP_IO = "mmtp_hpc.potentials.mtp.mlip_io"


def write_potential_h5(pot: MTPPotential, path: str | os.PathLike,
                       settings: dict | None = None) -> None:
    """Write ``pot`` to ``path`` atomically (``settings``: JSON-able metadata to record)."""
    extra_json = _json_exact(pot.extra, "extra")
    raw, kind = _active_set_bytes(pot.active_set)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            schema.write_header(f, schema.KIND_POTENTIAL, settings or {})
            g = f.create_group(P.GROUP)
            for name in P.SCALAR_ATTRS:
                g.attrs[name] = getattr(pot, name)
            g.attrs[P.MLIP_VERSION_ATTR] = pot.version
            g.attrs[P.SPECIES_NAMES_ATTR] = json.dumps(pot.species_names)
            g.attrs[P.EXTRA_ATTR] = extra_json
            for name in P.INT_ARRAYS:
                g.create_dataset(name, data=np.asarray(getattr(pot, name), dtype=np.int64))
            for name in P.FLOAT_ARRAYS:
                value = getattr(pot, name)
                if value is not None:
                    dset = g.create_dataset(name, data=np.asarray(value, dtype=np.float64))
                    schema.set_units(dset, name)
            for name in ("min_dist", "max_dist"):
                g.attrs[P.units_attr(name)] = schema.UNITS[name]
            if raw is not None:
                dset = g.create_dataset(P.ACTIVE_SET, data=np.frombuffer(raw, dtype=np.uint8))
                dset.attrs[P.ACTIVE_SET_TYPE_ATTR] = kind


def read_potential_h5(path: str | os.PathLike, parse_active_set: bool = True) -> MTPPotential:
    """Load a potential written by :func:`write_potential_h5`.

    ``parse_active_set=False`` always returns the active set as raw bytes.
    """
    with schema.reading(path, "potential"):
        return _read_potential_h5(path, parse_active_set)


def _read_potential_h5(path: str | os.PathLike, parse_active_set: bool) -> MTPPotential:
    with schema.open_checked(path, schema.KIND_POTENTIAL, (P.GROUP,)) as f:
        g = f[P.GROUP]
        kwargs: dict[str, Any] = {}
        try:
            for name in P.SCALAR_ATTRS:
                kwargs[name] = _scalar(g.attrs[name])
            kwargs["version"] = _scalar(g.attrs[P.MLIP_VERSION_ATTR])
            kwargs["species_names"] = json.loads(_scalar(g.attrs[P.SPECIES_NAMES_ATTR]))
            kwargs["extra"] = json.loads(_scalar(g.attrs[P.EXTRA_ATTR]))
            for name in P.INT_ARRAYS:
                kwargs[name] = g[name][...]
        except KeyError as exc:
            raise InputError(f"missing entry {exc}", path=str(path), field=P.GROUP) from None
        for name in P.FLOAT_ARRAYS:
            kwargs[name] = g[name][...] if name in g else None
        active_set = None
        if P.ACTIVE_SET in g:
            dset = g[P.ACTIVE_SET]
            raw = dset[...].tobytes()
            kind = _scalar(dset.attrs.get(P.ACTIVE_SET_TYPE_ATTR, P.ACTIVE_SET_RAW))
            active_set = raw if kind == P.ACTIVE_SET_RAW or not parse_active_set else _parse(raw)
    for name, value in kwargs.items():
        if isinstance(value, (float, np.floating, np.ndarray)) and np.asarray(value).dtype.kind in "fc" \
                and not np.all(np.isfinite(value)):
            raise InputError(f"{name} holds non-finite values", path=str(path), field=f"{P.GROUP}/{name}")
    return MTPPotential(active_set=active_set, **kwargs)


def _active_set_bytes(active_set: object | None) -> tuple[bytes | None, str]:
    if active_set is None:
        return None, P.ACTIVE_SET_RAW
    if isinstance(active_set, (bytes, bytearray, memoryview)):
        return bytes(active_set), P.ACTIVE_SET_RAW
    to_bytes = getattr(active_set, "to_bytes", None)
    if to_bytes is None:
        raise InputError(f"active_set of type {type(active_set).__name__} is neither bytes nor "
                         "has to_bytes()", field="active_set")
    cls = type(active_set)
    return bytes(to_bytes()), f"{cls.__module__}.{cls.__qualname__}"


def _parse(raw: bytes) -> object:
    try:
        module = importlib.import_module(_MLIP_IO)
    except ModuleNotFoundError as exc:
        if exc.name != _MLIP_IO:  # mlip_io exists but one of its imports is missing
            raise
        return raw
    parse = getattr(module, "parse_active_set", None)
    return raw if parse is None else parse(raw)


def _json_exact(value: Any, field: str) -> str:
    """JSON text of ``value``, refusing anything JSON would silently change."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"must be JSON-serialisable to be stored in HDF5 ({exc})",
                         field=field) from None
    if json.loads(text) != value:
        raise InputError("would change in a JSON round trip (tuples, non-string keys?)",
                         field=field)
    return text


def _scalar(value: Any) -> Any:
    """Plain Python value of an HDF5 attribute (NumPy scalars and bytes unwrapped)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
