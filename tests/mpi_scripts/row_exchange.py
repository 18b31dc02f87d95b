"""Under mpiexec: RowExchange hands every rank the rows of the atoms it wants from their owners
(sparse ids, owned rows in any order, a rank that owns none and one that wants none), twice on
one set-up, and only the changed rows of several arrays (``fetch_changed``); ``send_back`` hands a subset of
wanted rows back to their owners, who receive each at its owned index; an id no other rank
owns is an error naming it. Writes a JSON verdict per rank."""

import json
import sys

import numpy as np

from mmtp_hpc.parallel.comm import get_comm
from mmtp_hpc.parallel.halo import RowExchange

comm = get_comm()
rank, size = comm.Get_rank(), comm.Get_size()
rng = np.random.default_rng(11)
n = 400
ids = rng.choice(10 ** 6, size=n, replace=False)                  # sparse, distinct, unsorted
owner = rng.integers(0, size - 1 if size > 2 else size, n)         # with 3+ ranks the last owns none
mine = rng.permutation(np.flatnonzero(owner == rank))              # any local order
others = np.flatnonzero(owner != rank)
wanted = ids[rng.permutation(others)[:n // 3]] if rank != 1 else ids[:0]   # rank 1 wants none
ex = RowExchange(comm, ids[mine], wanted)
result = {"rank": rank}
for k, f in ((3, lambda i: np.stack([i * 1.5, -i.astype(float), np.sin(i)], axis=1)),
             (260, lambda i: np.cos(np.outer(i, np.arange(260)) * 1e-3))):
    got = ex.fetch(f(ids[mine]))
    result[f"exact_{k}"] = bool(got.shape == (len(wanted), k) and np.array_equal(got, f(wanted)))
out = np.full((len(wanted), 3), np.nan)
ex.fetch(np.stack([ids[mine] * 1.5, -ids[mine].astype(float), np.sin(ids[mine])], axis=1), out=out)
result["into_out"] = bool(np.array_equal(out[:, 0], wanted * 1.5))
# the changed rows (odd ids) of several arrays at once, one of them 1-D; the others stay
rows2, col = np.full((len(wanted), 2), np.nan), np.full(len(wanted), np.nan)
ex.fetch_changed(ids[mine] % 2 == 1, [np.stack([ids[mine] * 2.0, ids[mine] + 0.5], axis=1), np.sqrt(ids[mine])],
                 [rows2, col])
odd = wanted % 2 == 1
result["many"] = bool(np.array_equal(rows2[odd, 0], wanted[odd] * 2.0)
                      and np.array_equal(rows2[odd, 1], wanted[odd] + 0.5)
                      and np.array_equal(col[odd], np.sqrt(wanted[odd]))
                      and np.isnan(rows2[~odd]).all() and np.isnan(col[~odd]).all())
# back to the owners: every other wanted row, as (id, −id, rank)
pick = np.arange(0, len(wanted), 2)
at, back = ex.send_back(pick, np.stack([wanted[pick].astype(float), -wanted[pick].astype(float),
                                        np.full(len(pick), float(rank))], axis=1))
counts = comm.allgather(len(pick))
got_ids = ids[mine][at] if len(at) else np.zeros(0, dtype=np.int64)
sent = comm.allgather(wanted[pick])
expect = np.sort(np.concatenate([w[np.isin(w, ids[mine])] for w in sent]))
result["back"] = bool(np.array_equal(back[:, 0], got_ids) and np.array_equal(back[:, 1], -got_ids)
                      and np.array_equal(np.sort(got_ids), expect) and len(at) == len(expect)
                      and np.all(np.diff(back[:, 2]) >= 0))          # by source rank
result["back_count"] = int(len(at))
# an id nobody else owns (this rank's own, or none at all)
bad = np.concatenate([wanted, ids[mine][:1]]) if len(mine) else np.array([-5])
try:
    RowExchange(comm, ids[mine], bad)
    result["error"] = None
except ValueError as exc:
    result["error"] = str(exc)
comm.Barrier()
with open(f"{sys.argv[1]}.{rank}", "w") as fh:
    json.dump(result, fh)
