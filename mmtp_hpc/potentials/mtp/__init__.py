"""MLIP-3 compatible Moment Tensor Potentials: parameters, basis generator, I/O, kernels."""
