"""The serving metrics (names from DESIGN.md, Metrics), each defined once, exported where dashboards look.

Every metric goes through Ray's metrics API (`ray.util.metrics`): Ray's metrics agent on each node
exports it with the `ray_` prefix on the node's metrics port (8080 in the pods), which the rendered
PodMonitor scrapes and the Grafana dashboard queries, one series per process (`WorkerId`), so sums
over router and LLMServer replicas are exact. The router also keeps its own Prometheus registry
for `GET /metrics` (that router replica's view; handy locally). Why Ray's API rather than a
PodMonitor on the router's `/metrics`: behind the Serve proxy a scrape of `/metrics` reaches one
router replica at random, and replica-side load (queue, KV) would only be seen second-hand.
Ray exports a gauge only in the report after it was set, so gauges are set again every second
(`keep_gauges_fresh`, and the LLMServer's load loop).
`RouterMetrics` is recorded by the router, `ReplicaMetrics` by each LLMServer replica.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from ray.util import metrics as ray_metrics

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TPOT_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
GAUGE_REFRESH_S = 1.0  # at most Ray's metrics report interval (10 s by default)
OVERHEAD_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
REJECT_REASONS = ("overloaded",)  # `sloserve_rejected_total{reason}`: refused before reaching a replica

Kind = Literal["counter", "gauge", "histogram"]


class _Series:
    """One label combination of a metric: records to the local registry and to Ray."""

    def __init__(self, metric: Metric, values: tuple[str, ...]) -> None:
        self._local = metric.local.labels(*values) if metric.local is not None and values else metric.local
        self._metric = metric
        self._ray = metric.ray
        self._tags = dict(zip(metric.label_names, values, strict=True))

    def inc(self, amount: float = 1.0) -> None:
        if amount <= 0:  # Ray's counters refuse 0
            return
        if self._local is not None:
            self._local.inc(amount)
        self._ray.inc(amount, self._tags)

    def start_at_zero(self) -> None:
        """Export this counter series at 0 before its first event, so a dashboard's rate() reads 0
        instead of "No data". Ray's `Counter.inc` refuses 0; `_record(0)` is what it calls inside
        (ray 2.60.0, pinned). The local registry's series exists at 0 once labelled."""
        self._ray._record(0, tags=self._tags)

    def set(self, value: float) -> None:
        if self._local is not None:
            self._local.set(value)
        self._ray.set(value, self._tags)
        self._metric.last[tuple(self._tags.values())] = value

    def observe(self, value: float) -> None:
        if self._local is not None:
            self._local.observe(value)
        self._ray.observe(value, self._tags)


class Metric:
    """A metric defined once: Ray's metric, plus the same one in `registry` when given."""

    def __init__(self, kind: Kind, name: str, description: str, label_names: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS_S, registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.label_names = label_names
        self.last: dict[tuple[str, ...], float] = {}  # gauges: the value of each series, to republish
        self.ray: Any
        self.local: Any = None
        if kind == "counter":
            self.ray = ray_metrics.Counter(name, description, tag_keys=label_names)
            if registry is not None:
                self.local = Counter(name, description, list(label_names), registry=registry)
        elif kind == "gauge":
            self.ray = ray_metrics.Gauge(name, description, tag_keys=label_names)
            if registry is not None:
                self.local = Gauge(name, description, list(label_names), registry=registry)
        else:
            self.ray = ray_metrics.Histogram(name, description, boundaries=list(buckets), tag_keys=label_names)
            if registry is not None:
                self.local = Histogram(name, description, list(label_names), buckets=buckets, registry=registry)

    def republish(self) -> None:
        """Set every series of a gauge again: Ray exports a gauge only in the report after it was set."""
        for values, value in list(self.last.items()):
            self.ray.set(value, dict(zip(self.label_names, values, strict=True)))

    def labels(self, *values: str) -> _Series:
        return _Series(self, values)

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def set(self, value: float) -> None:
        self.labels().set(value)

    def observe(self, value: float) -> None:
        self.labels().observe(value)


class RouterMetrics:
    """Per request, as the router sees it (Serve and engine time together), and the controller's choices."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        v = ("variant",)
        self.requests = Metric("counter", "sloserve_requests", "Requests by variant and final status.", ("variant", "status"), registry=r)
        self.ttft = Metric("histogram", "sloserve_ttft_seconds", "Time to first token.", v, registry=r)
        self.tpot = Metric("histogram", "sloserve_tpot_seconds", "Time per output token after the first.", v, TPOT_BUCKETS_S, registry=r)
        self.e2e = Metric("histogram", "sloserve_e2e_seconds", "End-to-end request latency.", v, registry=r)
        self.tokens = Metric("counter", "sloserve_tokens_generated", "Output tokens generated.", v, registry=r)
        self.weight = Metric("gauge", "sloserve_controller_weight", "Traffic weight per variant.", v, registry=r)
        self.decisions = Metric("counter", "sloserve_controller_decisions", "Controller decisions by reason.", ("reason",), registry=r)
        self.rejected = Metric("counter", "sloserve_rejected", "Requests refused before reaching a replica.", ("reason",), registry=r)
        self.spilled = Metric("counter", "sloserve_spilled", "Requests sent to another variant: every batch slot of "
                              "the one chosen by weight was taken.", ("variant", "to"), registry=r)
        self.in_flight = Metric("gauge", "sloserve_in_flight", "Requests admitted and not yet finished (per router).", registry=r)
        self.router_overhead = Metric(
            "histogram", "sloserve_router_overhead_seconds", "Router + Serve time of a request beyond the engine's own e2e.",
            buckets=OVERHEAD_BUCKETS_S, registry=r,
        )
        # the last replica load seen in a response: this router's /metrics only (replicas export their own to Ray)
        self.queue_depth = Gauge("sloserve_queue_depth", "Requests waiting in a replica's engine.", ["variant"], registry=r)
        self.kv_used = Gauge("sloserve_kv_blocks_used_ratio", "Share of a replica's KV blocks in use.", ["variant"], registry=r)

    def start_at_zero(self, variants: Iterable[str], decision_reasons: Iterable[str]) -> None:
        """Every counter series the dashboard queries, exported at 0 from the start."""
        for variant in variants:
            self.requests.labels(variant, "ok").start_at_zero()
            self.tokens.labels(variant).start_at_zero()
        for reason in decision_reasons:
            self.decisions.labels(reason).start_at_zero()
        for reason in REJECT_REASONS:
            self.rejected.labels(reason).start_at_zero()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def keep_gauges_fresh(self, interval_s: float = GAUGE_REFRESH_S) -> threading.Event:
        """Republish the gauges (weights, in flight) every interval from a daemon thread; set the
        returned event to stop it. The router sets them only when they change."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                for gauge in (self.weight, self.in_flight):
                    gauge.republish()

        threading.Thread(target=loop, name="sloserve-metrics", daemon=True).start()
        return stop


class ReplicaMetrics:
    """Load of one LLMServer replica, set every `LLMServer` report interval (Ray export only)."""

    def __init__(self) -> None:
        tags = ("variant", "replica")
        self.queue_depth = Metric("gauge", "sloserve_queue_depth", "Requests waiting in a replica's engine.", tags)
        self.running = Metric("gauge", "sloserve_running_seqs", "Sequences a replica's engine is decoding.", tags)
        self.kv_used = Metric("gauge", "sloserve_kv_blocks_used_ratio", "Share of a replica's KV blocks in use.", tags)
        self.prefix_cache_hits = Metric(
            "gauge", "sloserve_prefix_cache_hit_ratio",
            "Share of the prompt tokens admitted since the replica's previous report (every second) whose KV "
            "came from the engine's prefix cache (the last share while none are admitted).", tags,
        )
