"""Under mpiexec: RowExchange hands every rank the rows of the atoms it wants from their owners
(sparse ids, owned rows in any order, a rank that owns none and one that wants none), twice on
one set-up; ``share_changed`` sends the rows a rank changed to every other copy (owner and
other wanters) and catches a row changed on two ranks; ``send_back`` hands a subset of
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
# changed rows straight to every other copy (the owner's and the other wanters'): each id is
# changed by at most one rank, its "changer" (when that rank holds it), in two arrays, one 1-D
local = np.concatenate([ids[mine], wanted])
changer = (local * 7919) % size
changed = changer == rank
rows2 = np.where(changed[:, None], np.stack([local * 3.0, np.full(len(local), float(rank))], axis=1), np.nan)
col = np.where(changed, np.sqrt(local), np.nan)
got = ex.share_changed(changed, [rows2, col])
holders = comm.allgather(local)                          # every rank's copies, by id
held_by_changer = np.array([np.isin(i, holders[c]) for i, c in zip(local, changer)], dtype=bool)
expect = held_by_changer                                  # rows that must hold the changer's values
result["share"] = bool(np.array_equal(rows2[expect, 0], local[expect] * 3.0)
                       and np.array_equal(rows2[expect, 1], changer[expect].astype(float))
                       and np.array_equal(col[expect], np.sqrt(local[expect]))
                       and np.isnan(rows2[~expect]).all() and np.isnan(col[~expect]).all()
                       and np.array_equal(np.sort(got), np.flatnonzero(expect & ~changed)))
result["shared_in"] = int(len(got))
# a row changed on two ranks at once is caught where it arrives
both = np.isin(local, np.concatenate(holders[:1] + holders[1:2])) & (rank < 2)
try:
    ex.share_changed(both, [np.zeros((len(local), 2))])
    result["twice"] = None
except ValueError as exc:
    result["twice"] = str(exc)
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
