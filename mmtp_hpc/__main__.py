"""``python -m mmtp_hpc`` is the ``mmtp`` command."""

import sys

from mmtp_hpc.cli import main

sys.exit(main())
