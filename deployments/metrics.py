"""Prometheus metrics of the router (names from DESIGN.md), one registry per router replica.

Replica-side load (queue depth, KV use) arrives piggybacked on responses and is exported here
as gauges per variant, so one scrape of `/metrics` shows the whole path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TPOT_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sloserve_requests", "Requests by variant and final status.", ["variant", "status"], registry=r)
        self.ttft = Histogram("sloserve_ttft_seconds", "Time to first token.", ["variant"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.tpot = Histogram("sloserve_tpot_seconds", "Time per output token after the first.", ["variant"], buckets=TPOT_BUCKETS_S, registry=r)
        self.e2e = Histogram("sloserve_e2e_seconds", "End-to-end request latency.", ["variant"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("sloserve_queue_depth", "Requests waiting in a replica's engine.", ["variant"], registry=r)
        self.kv_used = Gauge("sloserve_kv_blocks_used_ratio", "Share of a replica's KV blocks in use.", ["variant"], registry=r)
        self.tokens = Counter("sloserve_tokens_generated", "Output tokens generated.", ["variant"], registry=r)
        self.weight = Gauge("sloserve_controller_weight", "Traffic weight per variant.", ["variant"], registry=r)
        self.decisions = Counter("sloserve_controller_decisions", "Controller decisions by reason.", ["reason"], registry=r)
        self.rejected = Counter("sloserve_rejected", "Requests refused before reaching a replica.", ["reason"], registry=r)
        self.in_flight = Gauge("sloserve_in_flight", "Requests admitted and not yet finished (this router).", registry=r)
        self.router_overhead = Histogram(
            "sloserve_router_overhead_seconds", "Router + Serve time of a request beyond the engine's own e2e.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25), registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
