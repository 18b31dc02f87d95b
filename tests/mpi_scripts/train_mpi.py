"""Train the known problem under MPI and save θ (rank 0): compared with a serial run."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training_data import known_problem  # noqa: E402

from mmtp_hpc.parallel.comm import get_comm  # noqa: E402
from mmtp_hpc.training.fit import TrainSettings, train  # noqa: E402

template, configs, _ = known_problem(n_configs=int(sys.argv[2]))
result = train(template, configs, TrainSettings(max_iter=int(sys.argv[3]), seed=0, log_every=1000),
               log=lambda m: None)
comm = get_comm()
assert comm.Get_size() > 1
if comm.Get_rank() == 0:
    np.save(sys.argv[1], result.potential.get_params())
