"""Parallel MC by sectors, kernels (incremental) vs the Python loop (full site energies per
trial), same random numbers: ``python -m mpi4py mc_sectors.py POT OUT.json [NX NY NZ]``.

A jittered bcc Fe cell (16 × 4 × 4 cells, 512 atoms, unless given) with mixed moments; after the list is built the atoms move by
up to 0.2 Å (less than half the skin: no rebuild, and on 2 ranks the sectors hold without a
migration, some atoms now outside their subdomain); two MC sweeps at 3000 K on the force
field's sector layout; then the atoms move again (still within half the skin of the build)
and two more sweeps run on the same list (the kernels' model of the first step kept), with the kernels (starting from the force evaluation's basic moments,
and from their own pass) and with the Python loop. Rank 0 writes whether the final moments
(gathered in id order) agree to 1e-12 μB (the same decisions), the accepted counts, the
energies, how far the energy the sweep reports is from a fresh evaluation, and the halo widths
in units of cutoff + skin (the kernels' sweeps run on the plain halo, the Python loop on two).
"""

import json
import sys

import numpy as np

from mmtp_hpc.dynamics.domain import DomainForceField
from mmtp_hpc.dynamics.moments import MonteCarloMoments, NativeMetropolis
from mmtp_hpc.dynamics.rng import Streams
from mmtp_hpc.dynamics.state import MDState
from mmtp_hpc.parallel.comm import allreduce_sum, get_comm, min_op
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import load_potential
from mmtp_hpc.system.lattice import bulk

pot_path, out_path = sys.argv[1], sys.argv[2]
repeat = tuple(int(x) for x in sys.argv[3:6]) if len(sys.argv) >= 6 else (16, 4, 4)
comm = get_comm()
pot = load_potential(pot_path)
runs = {}
for native, seeded in ((True, True), (True, False), (False, False)):
    NativeMetropolis.native = native
    cfg = bulk("bcc", 2.84, repeat=repeat)
    rng = np.random.default_rng(1)
    n = len(cfg)
    positions = cfg.positions + rng.normal(scale=0.06, size=(n, 3))
    magmoms = np.where(rng.uniform(size=n) < 0.3, -2.1, 2.1) + 0.1 * rng.normal(size=n)
    state = MDState(positions=positions, velocities=np.zeros((n, 3)), masses=np.ones(n),
                    types=np.zeros(n, dtype=np.int64), ids=np.arange(n), magmoms=magmoms, cell=cfg.cell,
                    pbc=cfg.pbc, species=["Fe"])
    ff = DomainForceField(MTPEngine(pot), comm, skin=0.5, monte_carlo=True)
    ff.setup(state)
    build = np.zeros((n, 3))
    build[state.ids] = state.positions            # where the list was built (ids: this rank's atoms)
    state.positions = state.positions + rng.uniform(-0.2, 0.2, size=(len(state.positions), 3)) / np.sqrt(3)
    assert not ff.update(state)                  # within half the skin: the list is kept
    ev = ff.evaluate(state, basic=seeded)
    mc = MonteCarloMoments(2, 0.3, 0.4, 3000.0, np.zeros(0), np.zeros(0), Streams(4))
    mc.type_bounds = (np.asarray(pot.mag_min, dtype=float), np.asarray(pot.mag_max, dtype=float))
    mc.set_types(state.types)
    state.step = 3
    migrated = mc.update(ff, state, ev)
    model = mc._model
    fresh = ff.evaluate(state, derivatives=False).energy
    gap = abs(ev.energy - fresh)
    # a second step on the same list: the atoms move again (still within half the skin of the
    # build, some pairs crossing the cutoff), the model of the first sweep is kept
    shift = rng.uniform(-0.06, 0.06, size=(len(state.positions), 3))
    state.positions = state.positions - 0.5 * (state.positions - build[state.ids]) + shift
    assert not ff.update(state)
    ev = ff.evaluate(state, basic=seeded)
    state.step = 4
    migrated |= mc.update(ff, state, ev)
    kept = mc._model is model
    table = ff.gather(state, {"m": state.magmoms, "e": ev.site_energies})
    accepted = int(allreduce_sum(comm, np.array([float(mc.accepted)]))[0])
    fresh = ff.evaluate(state, derivatives=False).energy
    gap = max(gap, abs(ev.energy - fresh))
    kept = bool(comm.allreduce(int(kept), op=min_op()))
    runs[(native, seeded)] = (table, accepted, ev.energy, gap, bool(migrated), kept,
                              ff.halo_width / (ff.cutoff + ff.skin))
if comm.Get_rank() == 0:
    (t1, a1, e1, d1, m1, k1, h1), (t3, a3, e3, d3, _, k3, h3), (t2, a2, e2, d2, _, _, h2) = runs.values()
    result = {"ranks": comm.Get_size(), "grid": ff.decomp.grid.tolist(), "accepted": [a1, a2, a3],
              # the same decisions; the proposals m + δ may round differently in the AVX2 build (FMA)
              "same_moments": bool(np.allclose(t1["m"], t2["m"], rtol=0.0, atol=1e-12)
                                   and np.allclose(t3["m"], t2["m"], rtol=0.0, atol=1e-12)),
              "max_site_diff": float(max(np.abs(t1["e"] - t2["e"]).max(), np.abs(t3["e"] - t2["e"]).max())),
              "energy": [e1, e2, e3], "energy_vs_fresh": max(d1, d2, d3) / abs(e2), "migrated": m1,
              "model_kept": bool(k1 and k3), "halo": [h1, h3, h2]}
    with open(out_path, "w") as f:
        json.dump(result, f)
