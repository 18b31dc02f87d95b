# cython: language_level=3
"""Fast MTP kernels: site energies, per-pair derivatives and parameter gradients.

Same formulas as ``reference.py`` (spec §2). Layout: atoms 0..n_local-1 are the
centres; neighbour indices (CSR ``offsets``/``neighbors``) point into the
local+ghost arrays ``positions``/``types``/``magmoms``. Pairs at r ≥ cutoff
(the skin of a Verlet list) are skipped. Derivatives are written per pair
(∂E_i/∂r_ij and ∂E_i/∂m_j) and per centre (∂E_i/∂m_i), so the parallel loop
over centres has no write conflicts; :func:`scatter_pairs_grouped` folds them into
forces, ∂E/∂m and the virial.

All outputs are allocated by the caller. No Python objects in the loops.
"""

include "_kernels_body.pxi"
