"""potentials."""
