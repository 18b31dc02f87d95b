"""Under mpiexec: gather_chunks streams every rank's rows to rank 0 in id order, in chunks of at
most the given number of atoms, for sparse ids and ranks without atoms; writes a JSON verdict."""

import json
import sys

import numpy as np

from mmtp_hpc.parallel.comm import get_comm
from mmtp_hpc.parallel.halo import gather_chunks, gather_column_chunks, gather_rows

comm = get_comm()
rank, size = comm.Get_rank(), comm.Get_size()
rng = np.random.default_rng(7)
n = 300
ids = np.sort(rng.choice(10 ** 6, size=n, replace=False))       # sparse, distinct
rows = np.stack([ids * 1.5, -ids.astype(float), np.sin(ids)], axis=1)
owner = rng.integers(0, size - 1 if size > 2 else size, n)   # with 3+ ranks the last owns none
mine = rng.permutation(np.flatnonzero(owner == rank))                   # any local order
result = {}
for chunk in (50, 5000):
    parts = list(gather_chunks(comm, ids[mine], rows[mine], chunk_atoms=chunk))
    if rank == 0:
        starts = [s for s, _ in parts]
        table = np.concatenate([t for _, t in parts])
        result[str(chunk)] = {
            "exact": bool(np.array_equal(table, rows)),
            "max_chunk": max(len(t) for _, t in parts),
            "starts_ok": starts == list(np.cumsum([0] + [len(t) for _, t in parts])[:-1]),
        }
    else:
        assert parts == []
cols = list(gather_column_chunks(comm, ids[mine], {"ids": ids[mine], "pos": rows[mine]}, chunk_atoms=100))
full = gather_rows(comm, ids[mine], rows[mine])
if rank == 0:
    result["columns_int"] = all(block["ids"].dtype == np.int64 for _, block in cols)
    result["columns_exact"] = bool(np.array_equal(np.concatenate([b["ids"] for _, b in cols]), ids))
    result["gather_rows_exact"] = bool(np.array_equal(full, rows))
    with open(sys.argv[1], "w") as fh:
        json.dump(result, fh)
