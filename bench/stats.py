"""Small statistics for paired benchmark comparisons (seeds x tasks).

Kept dependency-free (no numpy/scipy) so any benchmark can import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Exact enumeration visits 2^n sign assignments; 16 pairs is 65,536, still instant.
MAX_EXACT_PAIRS = 16


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Return (mean, sample standard deviation) of ``values``.

    The standard deviation uses n - 1 (seeds are a sample of possible seeds);
    it is 0.0 for a single value. Raises ValueError on an empty sequence.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var)


def paired_permutation_p(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p-value for paired differences.

    Under the null hypothesis each paired difference is equally likely to have
    either sign. The statistic is |sum of diffs|; the p-value is the share of
    all 2^n sign assignments whose |sum| is at least the observed one (the
    observed assignment included, so p >= 2 / 2^n unless every diff is zero).
    Zero differences flip to themselves, so they leave p unchanged. An empty
    sequence, or all zeros, gives 1.0. Raises ValueError for more than
    MAX_EXACT_PAIRS differences, where exact enumeration gets too slow.
    """
    n = len(diffs)
    if n > MAX_EXACT_PAIRS:
        raise ValueError(f"exact permutation test supports at most {MAX_EXACT_PAIRS} pairs, got {n}")
    if n == 0:
        return 1.0
    observed = abs(math.fsum(diffs))
    # Accuracy differences are sums of 1/test_items steps; a tolerance keeps
    # ties that differ only by float rounding counted as ties.
    tol = 1e-9 * max(1.0, max(abs(d) for d in diffs))
    hits = 0
    total = 1 << n
    for mask in range(total):
        s = math.fsum(-d if (mask >> i) & 1 else d for i, d in enumerate(diffs))
        if abs(s) >= observed - tol:
            hits += 1
    return hits / total
