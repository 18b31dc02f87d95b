"""Write an analysis table (a dict of equal-length columns, units in the names) as CSV."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from mmtp_hpc.errors import InputError
from mmtp_hpc.io.atomic import atomic_path


def write_csv(path: str | os.PathLike, table: Mapping[str, np.ndarray], comment: str | None = None) -> int:
    """Write the columns of ``table`` (header line of names; ``%.10g`` numbers; NaN as ``nan``)
    atomically, after ``# comment`` lines when given; return the number of rows."""
    names = list(table)
    columns = [np.asarray(table[k]).reshape(-1) for k in names]
    rows = {len(c) for c in columns}
    if len(rows) > 1:
        raise InputError(f"columns have different lengths {sorted(rows)}", path=str(path))
    n = rows.pop() if rows else 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        if comment:
            for line in comment.splitlines():
                f.write(f"# {line}\n")
        f.write(",".join(names) + "\n")
        for k in range(n):
            f.write(",".join(_fmt(c[k]) for c in columns) + "\n")
    return n


def read_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a file written by :func:`write_csv` (float arrays)."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    names = lines[0].strip().split(",")
    rows = [[float(x) for x in line.strip().split(",")] for line in lines[1:]]
    data = np.array(rows).reshape(-1, len(names))
    return {name: data[:, k] for k, name in enumerate(names)}


def _fmt(value: object) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.10g}"
