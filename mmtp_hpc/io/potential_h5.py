"""Compatibility: the HDF5 potential format lives with the other potential formats, in
:mod:`mmtp_hpc.potentials.mtp.hdf5_io`."""

from mmtp_hpc.potentials.mtp.hdf5_io import read_potential_h5, write_potential_h5

__all__ = ["read_potential_h5", "write_potential_h5"]
