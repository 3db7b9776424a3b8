"""Numba kernels, private to the package: plain numbers and arrays in and out.

Nothing here imports a module above it.  Each kernel has a short numpy twin used as its test
oracle (in the module that calls it, or in the tests).  ``bits``: binary16/float bit
manipulation and the target's features; ``rng``: the counter-based generator of stochastic
rounding; ``round``: rounding to a format; ``ops``: correctly rounded arithmetic; ``gemm``: dot
products and matrix products per profile; ``exact``: the Kulisch-style exact accumulator;
``stats``: per-layer statistics of the analysis.
"""
