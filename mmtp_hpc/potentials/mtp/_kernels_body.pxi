# Body of the MTP kernel modules, included by `_kernels.pyx` (portable build) and
# `_kernels_avx2.pyx` (the same code compiled with AVX2 + FMA on x86-64); `kernels.py` picks
# one at import time. See the module docstring in `_kernels.pyx`.
#
# The code is split by job (issue 13): tables and small helpers, the column site kernel, the
# site terms, Monte Carlo, the parameter terms and basis Jacobian (all on the column layout).
# Cython includes them in this order.

include "_kern_tables.pxi"
include "_kern_columns.pxi"
include "_kern_site.pxi"
include "_kern_montecarlo.pxi"
include "_kern_paramcols.pxi"
