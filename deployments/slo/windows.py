"""Time-based sliding windows of request outcomes, per variant and SLO class.

The router calls `record_arrival(variant, slo_class, at_s)` when it routes a request and
`record(RequestRecord)` when the request ends; the controller calls `snapshot(now_s, replicas)`
to get an `Observation`: p50/p95/p99 of TTFT, TPOT and E2E over the finished requests that
*arrived* in the last `window_s` (so a window holds only requests routed under the conditions of
that window, and a change is fully visible `window_s` after it), mean prompt/output lengths over
the requests that *ended* in it (unbiased: short requests finish first), arrival rates over
`window_s` and `recent_window_s`, completion and error rates, plus the replica stats the router passes in. Time always comes from the
caller (a fake clock in tests). Memory is bounded: `max_samples` records per (variant, class),
`max_arrivals` arrival and end stamps per variant. Pure Python: no Ray, no torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from deployments.slo.observation import (
    LatencyStats,
    Observation,
    RequestRecord,
    VariantLoad,
    VariantObservation,
)
from deployments.slo.percentiles import percentile


def summarize(records: Iterable[RequestRecord], ended: Iterable[RequestRecord] | None = None) -> LatencyStats:
    """Percentiles over `records` (errors count, but have no latency of their own); mean lengths and
    the mean end-to-end time over `ended` (default: the same records). The window's percentiles keep
    only requests that also arrived in it, but Little's law needs every request that ended in it:
    those that arrived in the window too are the short ones, and where requests last half the
    window (10 s of 20) their mean e2e was ~25% short, the concurrency the controller reads its
    curve at too low and the learned correction 1.1-1.3 for a true 1.0 (simulator, 2026-12-01)."""
    records = list(records)
    done = [r for r in (records if ended is None else ended) if r.ok]
    if not records and not done:
        return LatencyStats()
    ok = [r for r in records if r.ok]
    ttft = sorted(r.ttft_s for r in ok if r.ttft_s is not None)
    tpot = sorted(r.tpot_s for r in ok if r.tpot_s is not None)
    e2e = sorted(r.e2e_s for r in ok)

    def p(values: list[float], q: float) -> float | None:
        return percentile(values, q) if values else None

    return LatencyStats(
        num_requests=len(records),
        num_errors=len(records) - len(ok),
        ttft_p50_s=p(ttft, 50),
        ttft_p95_s=p(ttft, 95),
        ttft_p99_s=p(ttft, 99),
        tpot_p50_s=p(tpot, 50),
        tpot_p95_s=p(tpot, 95),
        tpot_p99_s=p(tpot, 99),
        e2e_p50_s=p(e2e, 50),
        e2e_p95_s=p(e2e, 95),
        e2e_p99_s=p(e2e, 99),
        e2e_mean_s=sum(r.e2e_s for r in done) / len(done) if done else None,
        mean_prompt_tokens=sum(r.prompt_tokens for r in done) / len(done) if done else None,
        mean_output_tokens=sum(r.output_tokens for r in done) / len(done) if done else None,
    )


class LatencyWindows:
    """Sliding windows over the last `window_s` seconds; see the module docstring."""

    def __init__(
        self,
        window_s: float,
        recent_window_s: float | None = None,
        max_samples: int = 4096,
        max_arrivals: int = 65536,
        start_s: float | None = None,
    ) -> None:
        if window_s <= 0 or max_samples < 1 or max_arrivals < 1:
            raise ValueError(f"need window_s > 0 and bounds >= 1, got {window_s}, {max_samples}, {max_arrivals}")
        self.window_s = window_s
        self.recent_window_s = min(recent_window_s or window_s, window_s)
        self.max_samples = max_samples
        self._start_s = start_s
        self._records: dict[tuple[str, str], deque[RequestRecord]] = {}
        self._arrivals: dict[str, deque[float]] = {}
        self._ends: dict[str, deque[float]] = {}
        self._max_arrivals = max_arrivals
        self._tracks_arrivals = False

    def _seen(self, at_s: float) -> None:
        if self._start_s is None or at_s < self._start_s:
            self._start_s = at_s

    def record_arrival(self, variant: str, slo_class: str, at_s: float) -> None:
        """A request was routed to `variant` at `at_s` (its class is kept only on the record)."""
        self._tracks_arrivals = True
        self._seen(at_s)
        self._arrivals.setdefault(variant, deque(maxlen=self._max_arrivals)).append(at_s)

    def record(self, record: RequestRecord) -> None:
        """A request ended (ok or not)."""
        self._seen(record.arrival_s)
        key = (record.variant, record.slo_class)
        self._records.setdefault(key, deque(maxlen=self.max_samples)).append(record)
        self._ends.setdefault(record.variant, deque(maxlen=self._max_arrivals)).append(record.end_s)

    def _expire(self, now_s: float) -> None:
        horizon_s = now_s - self.window_s
        for records in self._records.values():  # in end order; arrivals are filtered in snapshot
            while records and records[0].end_s < horizon_s:
                records.popleft()
        for stamps in (*self._arrivals.values(), *self._ends.values()):
            while stamps and stamps[0] < horizon_s:
                stamps.popleft()

    def _span_s(self, now_s: float, length_s: float) -> float:
        """Seconds of history a rate over `length_s` may divide by (shorter right after start)."""
        observed_s = now_s - self._start_s if self._start_s is not None else 0.0
        return max(0.0, min(length_s, observed_s))

    def _rate(self, stamps: Sequence[float], now_s: float, length_s: float, capped: bool) -> float:
        span_s = self._span_s(now_s, length_s)
        in_window = [t for t in stamps if now_s - length_s <= t <= now_s]
        if capped and in_window:  # the deque overflowed: the oldest kept stamp bounds the span
            span_s = min(span_s, now_s - min(in_window))
        return len(in_window) / span_s if span_s > 0 else 0.0

    def snapshot(
        self,
        now_s: float,
        replicas: Mapping[str, VariantLoad] | None = None,
        variants: Iterable[str] = (),
    ) -> Observation:
        """The windows at `now_s`, for every variant seen, in `replicas`, or named in `variants`."""
        self._expire(now_s)
        replicas = replicas or {}
        names = sorted({v for v, _ in self._records} | set(self._arrivals) | set(replicas) | set(variants))
        observed: dict[str, VariantObservation] = {}
        for name in names:
            horizon_s = now_s - self.window_s
            ended = {c: list(rs) for (v, c), rs in self._records.items() if v == name and rs}
            by_class = {c: [r for r in rs if r.arrival_s >= horizon_s] for c, rs in ended.items()}
            finished = [r for rs in by_class.values() for r in rs]
            if self._tracks_arrivals:
                stamps: Sequence[float] = self._arrivals.get(name, ())
                capped = len(stamps) == self._max_arrivals
            else:  # the router does not report arrivals: count the finished requests' arrivals
                stamps, capped = sorted(r.arrival_s for r in finished), False
            ends = self._ends.get(name, deque())
            observed[name] = VariantObservation(
                name=name,
                latency=summarize(finished, [r for rs in ended.values() for r in rs]),
                by_class={c: summarize(by_class[c], ended[c]) for c in sorted(ended)},
                arrival_rate_rps=self._rate(stamps, now_s, self.window_s, capped),
                recent_arrival_rate_rps=self._rate(stamps, now_s, self.recent_window_s, capped),
                completion_rate_rps=self._rate(ends, now_s, self.window_s, len(ends) == self._max_arrivals),
                replicas=replicas.get(name, VariantLoad()),
            )
        return Observation(now_s, self.window_s, self.recent_window_s, observed)
