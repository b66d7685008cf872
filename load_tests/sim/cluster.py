"""Replicas and the router of the controller simulator (the discrete-event model of the cluster).

A replica is a continuous-batching server: its running requests (at most `max_num_seqs`) share
it, each advancing one token every TPOT(c) seconds at concurrency c (processor sharing on the
manifest's `SpeedCurve`, times a `slowdown` to model a manifest that is off). Prefill costs the
variant's batch-1 TTFT in decode steps, so TTFT grows with load. Further requests wait FIFO at the
replica. The router picks a variant by weight among variants with a ready replica, spills over as
the real router does (`routing.spill_over`: every batch slot of the chosen variant's ready
replicas taken), then the less loaded of two random ready replicas. New replicas serve after the cold start; removed ones drain.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass

from deployments.router.replica_choice import spill_over
from deployments.slo.capacity import SpeedCurve
from deployments.slo.observation import VariantLoad
from load_tests.sim.requests import SimRequest


@dataclass(slots=True)
class Outcome:
    """What happened to one request."""

    request: SimRequest
    variant: str = ""
    first_token_s: float | None = None
    end_s: float | None = None
    ok: bool = False

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.request.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_s is None or self.end_s is None or self.request.output_tokens <= 1:
            return None
        return (self.end_s - self.first_token_s) / (self.request.output_tokens - 1)


class SimReplica:
    """One replica; `service` counts the tokens (decode steps) each running request got so far."""

    def __init__(self, rid: int, variant: str, curve: SpeedCurve, max_num_seqs: int, start_s: float, ready_s: float,
                 slowdown: float = 1.0) -> None:
        self.rid, self.variant, self.curve, self.max_num_seqs = rid, variant, curve, max_num_seqs
        self.start_s, self.ready_s = start_s, ready_s
        self.stop_s: float | None = None
        self.slowdown = slowdown
        self.draining = False
        self.service = 0.0
        self.updated_s = start_s
        self.num_running = 0
        self.marks: list[tuple[float, int, int]] = []  # (service mark, 0 first token | 1 finish, request id)
        self.waiting: deque[Outcome] = deque()
        self.version = 0

    @property
    def load(self) -> int:
        return self.num_running + len(self.waiting)

    def _tokens_per_s(self) -> float:
        return 1.0 / (self.curve.tpot_s(self.num_running) * self.slowdown) if self.num_running else 0.0

    def advance(self, now_s: float) -> None:
        self.service += (now_s - self.updated_s) * self._tokens_per_s()
        self.updated_s = now_s

    def admit(self, outcome: Outcome) -> None:
        """Start a request now (call `advance` first)."""
        joined = self.num_running + 1  # prefill costs the curve's TTFT at the concurrency it joins
        prefill_end = self.service + self.curve.ttft_s(joined) / self.curve.tpot_s(joined)
        rid = outcome.request.id
        heapq.heappush(self.marks, (prefill_end, 0, rid))
        heapq.heappush(self.marks, (prefill_end + max(0, outcome.request.output_tokens - 1), 1, rid))
        self.num_running += 1

    def next_event_s(self) -> float | None:
        if not self.marks:
            return None
        return self.updated_s + max(0.0, self.marks[0][0] - self.service) / self._tokens_per_s()

    def due(self) -> list[tuple[int, int]]:
        """Pop the (kind, request id) marks reached by now."""
        out = []
        while self.marks and self.marks[0][0] <= self.service + 1e-9:
            _, kind, rid = heapq.heappop(self.marks)
            out.append((kind, rid))
        return out


class SimRouter:
    """Variant by weight among those with a ready replica, spilled over as the real router does;
    replica by the less loaded of two."""

    def __init__(self, quality: dict[str, float], seed: int, spill: bool = True) -> None:
        self.quality = quality
        self.weights: dict[str, float] = {}
        self.rng = random.Random(seed)
        self.spill = spill

    def pick(self, replicas: list[SimReplica], now_s: float) -> SimReplica | None:
        ready: dict[str, list[SimReplica]] = {}
        for r in replicas:
            if not r.draining and r.ready_s <= now_s:
                ready.setdefault(r.variant, []).append(r)
        if not ready:
            return None
        names = sorted(ready)
        shares = [self.weights.get(n, 0.0) for n in names]
        if sum(shares) > 0:
            variant = self.rng.choices(names, shares)[0]
        else:  # the weighted variants have no ready replica: the best one that does
            variant = max(names, key=lambda n: (self.quality.get(n, 0.0), n))
        if self.spill:
            in_flight: dict[str, int] = {}
            for r in replicas:  # the router counts what it sent, draining replicas too
                in_flight[r.variant] = in_flight.get(r.variant, 0) + r.load
            slots = {n: sum(r.max_num_seqs for r in pool) for n, pool in ready.items()}
            variant = spill_over(variant, in_flight, slots, self.weights)
        pool = ready[variant]
        if len(pool) == 1:
            return pool[0]
        a, b = self.rng.sample(pool, 2)
        return a if a.load <= b.load else b


def variant_load(replicas: list[SimReplica], now_s: float) -> dict[str, VariantLoad]:
    """What the router reports per variant (draining replicas still count for queue and load)."""
    out: dict[str, VariantLoad] = {}
    for r in replicas:
        s = out.get(r.variant, VariantLoad())
        serving = not r.draining
        out[r.variant] = VariantLoad(
            num_replicas_running=s.num_replicas_running + serving,
            num_replicas_ready=s.num_replicas_ready + (serving and r.ready_s <= now_s),
            queue_depth=s.queue_depth + len(r.waiting),
            num_ongoing=s.num_ongoing + r.num_running,
        )
    return out
