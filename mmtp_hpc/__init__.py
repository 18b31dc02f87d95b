"""mmtp_hpc: magnetic Moment Tensor Potentials, fast and MPI-parallel.

Public API (small on purpose)::

    from mmtp_hpc import load_potential, read_configurations, write_configurations, MTPCalculator
"""

__version__ = "0.1.0"
