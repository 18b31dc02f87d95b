"""Constrained ABINIT E(m) of the 2-atom bcc Fe cell at a = 2.86 Å for uniform moments m
(the oracle of ../../input.toml), written to em_2.86.cfg beside this script.

    python extra/em_step/label_em.py 0.75 0.9 1.1 1.2      (from inputs/learn_fe_abinit)

Results are cached in extra/em_step/work/ (rerunning reads them back).
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from mmtp_hpc.active.oracles import label_batch, oracle_from_settings  # noqa: E402
from mmtp_hpc.active.validate import _with_moments  # noqa: E402
from mmtp_hpc.io.cfg import write_cfg  # noqa: E402
from mmtp_hpc.settings import read_toml  # noqa: E402
from mmtp_hpc.system.lattice import bulk  # noqa: E402

toml = HERE.parents[1] / "input.toml"
data, text = read_toml(toml)
oracle = oracle_from_settings(data["oracle"], toml.parent, ["Fe"], source=str(toml), text=text)
ms = [float(x) for x in sys.argv[1:]]
cfgs = [_with_moments(bulk("bcc", 2.86, 1, sublattice_types=(0, 0)), [m]) for m in ms]
batch = label_batch(oracle, cfgs, HERE / "work", log=print, skip_failures=True)
done = [c for c in batch.labelled if c is not None]
write_cfg(HERE / "em_2.86.cfg", done)
for c in done:
    print(f"m = {c.magmoms[0]:.4f} μB: E = {c.energy / 2:.6f} eV/atom, dE/dm = {c.magnetic_gradient[0]:+.4f} eV/μB")
