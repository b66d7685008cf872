"""Percentiles as the SLO policy defines them: linear interpolation between ranks.

The controller's latency windows, the load-test reports, the soak verdict and the serving
benchmark all compute their p50/p95/p99 here, so a report's p95 is the p95 the controller acts on.
`percentile` takes values sorted ascending (callers asking for several percentiles sort once);
`percentile_of` sorts them itself and gives None for no values. Pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ascending values, interpolating linearly between ranks."""
    assert sorted_values, "percentile of no values"
    rank = (len(sorted_values) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def percentile_of(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) of values in any order; None when there are none."""
    ordered = sorted(values)
    return percentile(ordered, q) if ordered else None
