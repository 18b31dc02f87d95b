"""Run the ``mmtp`` command line under MPI: ``python -m mpi4py cli_main.py ARGS...``."""

import sys

from mmtp_hpc.cli import main

sys.exit(main(sys.argv[1:]))
