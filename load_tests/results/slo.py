"""Per-request SLO checks, attainment and goodput; failed requests always count as misses.

A request meets a metric when it succeeded and its value is at or under the target (`<=`, as in
vLLM's goodput); TPOT is met by a successful one-token answer (it has no decode phase). Attainment
is the share of *all* requests (failed and cancelled included) that met the metric, or all set
metrics together; goodput is the number of requests meeting all of them per second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from load_tests.config import GoodputTargets
from load_tests.results.records import ClientRecord


def _value(record: ClientRecord, metric: str) -> float | None:
    return {"ttft": record.ttft_ms, "tpot": record.tpot_ms, "e2el": record.e2el_ms}[metric]


def meets(record: ClientRecord, metric: str, target_ms: float) -> bool:
    """Did this request meet `metric <= target_ms`? Failures never do."""
    if not record.is_ok:
        return False
    value = _value(record, metric)
    if value is None:
        return metric == "tpot"  # a one-token answer has no time per output token
    return value <= target_ms


def meets_all(record: ClientRecord, slo: GoodputTargets) -> bool:
    """Met every set target (a successful request meets an empty SLO)."""
    return record.is_ok and all(meets(record, m, t) for m, t in slo.targets().items())


@dataclass(frozen=True, slots=True)
class Attainment:
    """SLO outcome of a group of requests."""

    num_requests: int
    num_good: int
    per_metric: dict[str, float]
    duration_s: float

    @property
    def overall(self) -> float | None:
        return self.num_good / self.num_requests if self.num_requests else None

    @property
    def goodput(self) -> float:
        """Requests per second that met every target."""
        return self.num_good / self.duration_s if self.duration_s > 0 else 0.0


def attainment(records: Sequence[ClientRecord], slo: GoodputTargets, duration_s: float) -> Attainment:
    n = len(records)
    per_metric = {
        metric: (sum(meets(r, metric, target) for r in records) / n if n else 0.0)
        for metric, target in slo.targets().items()
    }
    num_good = sum(meets_all(r, slo) for r in records)
    return Attainment(n, num_good, per_metric, duration_s)


def slo_keys(result: Attainment, slo: GoodputTargets) -> dict[str, float | int | None]:
    """Summary keys: `request_goodput` (vLLM's name), `slo_attainment`, `slo_attainment_<metric>`."""
    if not slo.is_set:
        return {}
    keys: dict[str, float | int | None] = {
        "request_goodput": result.goodput,
        "num_good": result.num_good,
        "slo_attainment": result.overall,
    }
    keys.update({f"slo_attainment_{m}": v for m, v in result.per_metric.items()})
    return keys


def misses(records: Sequence[ClientRecord], slo: GoodputTargets) -> dict[str, int]:
    """How many requests missed each set target (failures included), for messages."""
    out = {m: sum(not meets(r, m, t) for r in records) for m, t in slo.targets().items()}
    out["failed"] = sum(not r.is_ok for r in records)
    return out
