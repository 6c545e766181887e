"""Float tolerances for the suite, scaled to the values' magnitude and dtype.

An absolute tolerance alone fails on values far from 1: float32 values near 3.5 are 2.4e-7 apart, and the same
quantity reached through another kernel (AVX2 or AVX-512, another BLAS or FFT blocking, another batch shape) or
against a float64 reference differs by tens of those steps. A CPU of another make then fails a check that holds
here (it did: 1.2e-5 on values near 3.5 against ``atol=1e-5`` on an AMD EPYC). So every float32 comparison scales
with the value (``rtol``) and keeps a small ``atol`` for values near zero. The bounds stay far below the size of
any real fault these tests look for (a wrong formula, leaked padding, a dropped term: 1e-2 and up).
"""

# A float32 result against a float64 reference formula, or against float32 values reached by another kernel,
# reduction order or batch shape (torch's own float32 default is rtol=1.3e-6, atol=1e-5: too tight for the
# former, and its atol too loose for values near 1e-6).
F32 = {"rtol": 1e-4, "atol": 1e-5}

# Scalars (losses, norms, statistics) reduced in float32 over many terms in a different order, for pytest.approx.
F32_SCALAR = {"rel": 1e-5, "abs": 1e-7}

# A bfloat16 result against a float32 reference: bfloat16 keeps 8 significant bits (steps of 2^-8, 0.4%), and an
# input rounded to them moves a normalised output by a few such steps times the output's scale.
BF16 = {"rtol": 2e-2, "atol": 5e-2}
