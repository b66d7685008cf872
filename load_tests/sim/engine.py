"""The simulator's event loop: replays requests against one policy and records what happened.

`simulate` merges three streams in time order: arrivals (routed at once), replica events (a
request's first token or last token, from `SimReplica`'s processor-sharing clock) and control
ticks every `policy.interval_s` (the policy reads an `Observation` built by the real
`LatencyWindows`, and its weights and replica targets are applied: new replicas serve after the
cold start, removed ones drain). Requests still queued when the drain time runs out, or waiting
longer than the router's timeout, fail. Replica-seconds count until the trace's end.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from deployments.slo.capacity import SpeedCurve
from deployments.slo.observation import Observation, RequestRecord, VariantObservation
from deployments.slo.plan import total_variation
from deployments.slo.windows import LatencyWindows
from inference.schema.config import AppConfig
from inference.schema.manifest import VariantManifest
from load_tests.sim.cluster import Outcome, SimReplica, SimRouter, variant_load
from load_tests.sim.policies import Control, SimPolicy, SloservePolicy, ThresholdPolicy
from load_tests.sim.requests import SimRequest

SAMPLE_EVERY_S = 10.0
MIX_CHANGE = 0.01  # a weights change above this share of traffic counts as a variant-mix change


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    replicas: dict[str, int]  # alive (starting, ready or draining) per variant
    weights: dict[str, float]


@dataclass
class SimRun:
    policy: str
    duration_s: float
    outcomes: list[Outcome]
    samples: list[Sample] = field(default_factory=list)
    decisions: list[tuple[float, str, str]] = field(default_factory=list)  # (t_s, reason_code, reason)
    mix_changes: int = 0
    mix_change_times: list[float] = field(default_factory=list)
    replica_seconds: float = 0.0


class _Loop:
    def __init__(self, config: AppConfig, manifest: VariantManifest, policy: SimPolicy, cold_start_s: float,
                 slowdown: float, seed: int) -> None:
        self.config, self.policy, self.cold_start_s, self.slowdown = config, policy, cold_start_s, slowdown
        self.curves = {v.name: SpeedCurve.from_profile(manifest.get(v.name).speed) for v in config.variants}
        self.max_num_seqs = {v.name: v.engine.max_num_seqs for v in config.variants}
        quality = {v.name: manifest.get(v.name).quality.agreement for v in config.variants}
        self.router = SimRouter(quality, seed, config.router.spill_over)
        ctl = config.controller
        self.windows = LatencyWindows(ctl.window_s, ctl.recent_window_s, start_s=0.0)
        self.needs_windows = isinstance(policy, (SloservePolicy, ThresholdPolicy))
        self.replicas: list[SimReplica] = []  # ever started
        self.outcomes: dict[int, Outcome] = {}
        self.events: list[tuple[float, int, int, int]] = []  # (t_s, seq, replica id, version)
        self.seq = 0

    def serving(self) -> list[SimReplica]:
        return [r for r in self.replicas if r.stop_s is None]

    def schedule(self, rep: SimReplica) -> None:
        rep.version += 1
        at_s = rep.next_event_s()
        if at_s is not None:
            self.seq += 1
            heapq.heappush(self.events, (at_s, self.seq, rep.rid, rep.version))

    def finish(self, out: Outcome, now_s: float, ok: bool) -> None:
        out.end_s, out.ok = (now_s if out.end_s is None else out.end_s), ok
        req = out.request
        self.windows.record(RequestRecord(
            out.variant, req.slo_class, req.arrival_s, out.ttft_s if ok else None, out.tpot_s if ok else None,
            out.end_s - req.arrival_s, ok, req.prompt_tokens, req.output_tokens,
        ))

    def admit_waiting(self, rep: SimReplica, now_s: float) -> None:
        timeout_s = self.config.router.request_timeout_s
        while rep.waiting and rep.num_running < rep.max_num_seqs:
            out = rep.waiting.popleft()
            if now_s - out.request.arrival_s > timeout_s:
                self.finish(out, now_s, ok=False)
            else:
                rep.admit(out)

    def arrive(self, req: SimRequest) -> None:
        now_s = req.arrival_s
        out = self.outcomes[req.id] = Outcome(req)
        rep = self.router.pick(self.serving(), now_s)
        if rep is None:
            out.variant = max(self.router.weights, key=lambda n: self.router.weights[n], default="")
            self.finish(out, now_s, ok=False)
            return
        out.variant = rep.variant
        self.windows.record_arrival(rep.variant, req.slo_class, now_s)
        rep.advance(now_s)
        rep.waiting.append(out)
        self.admit_waiting(rep, now_s)
        self.schedule(rep)

    def replica_event(self, rep: SimReplica, now_s: float) -> None:
        rep.advance(now_s)
        for kind, rid in rep.due():
            out = self.outcomes[rid]
            if kind == 0:
                out.first_token_s = now_s
            else:
                out.end_s = now_s
                rep.num_running -= 1
                self.finish(out, now_s, ok=True)
        self.admit_waiting(rep, now_s)
        if rep.draining and rep.load == 0:
            rep.stop_s = now_s
        self.schedule(rep)

    def apply(self, control: Control, now_s: float, warm: bool = False) -> None:
        self.router.weights = dict(control.weights)
        for name, target in control.targets.items():
            live = [r for r in self.serving() if r.variant == name and not r.draining]
            for _ in range(target - len(live)):
                ready_s = now_s if warm else now_s + self.cold_start_s
                self.replicas.append(SimReplica(len(self.replicas), name, self.curves[name],
                                                self.max_num_seqs[name], now_s, ready_s, self.slowdown))
            # remove starting replicas first (newest first), then the least loaded ready ones
            order = sorted(live, key=lambda r: (r.ready_s <= now_s, r.load, -r.start_s))
            for rep in order[: max(0, len(live) - target)]:
                rep.advance(now_s)
                rep.draining = True
                if rep.load == 0 or rep.ready_s > now_s:
                    rep.stop_s = now_s

    def observe(self, now_s: float) -> Observation:
        stats = variant_load(self.serving(), now_s)
        if self.needs_windows:
            return self.windows.snapshot(now_s, stats, variants=self.curves)
        ctl = self.config.controller
        return Observation(now_s, ctl.window_s, ctl.recent_window_s,
                           {n: VariantObservation(n, replicas=s) for n, s in stats.items()})


def simulate(requests: list[SimRequest], policy: SimPolicy, config: AppConfig, manifest: VariantManifest,
             duration_s: float, cold_start_s: float, slowdown: float = 1.0, seed: int = 0,
             drain_s: float = 600.0) -> SimRun:
    loop = _Loop(config, manifest, policy, cold_start_s, slowdown, seed)
    run = SimRun(policy.name, duration_s, [])
    loop.apply(policy.start(), 0.0, warm=True)
    next_tick_s, next_sample_s, i = policy.interval_s, 0.0, 0
    end_s = duration_s + drain_s
    while True:
        t_arrival = requests[i].arrival_s if i < len(requests) else float("inf")
        t_event = loop.events[0][0] if loop.events else float("inf")
        now_s = min(t_arrival, t_event, next_tick_s, next_sample_s)
        if now_s > end_s or (now_s > duration_s and t_event == float("inf") and i >= len(requests)):
            break
        if now_s == next_sample_s:
            alive = [r for r in loop.replicas if r.stop_s is None]
            run.samples.append(Sample(now_s, {n: sum(r.variant == n for r in alive) for n in loop.curves},
                                      dict(loop.router.weights)))
            next_sample_s += SAMPLE_EVERY_S
        elif now_s == next_tick_s:
            before = dict(loop.router.weights)
            control = policy.control(loop.observe(now_s))
            loop.apply(control, now_s)
            if total_variation(before, control.weights) > MIX_CHANGE and now_s <= duration_s:
                run.mix_changes += 1
                run.mix_change_times.append(now_s)
            if control.reason_code != "hold":
                run.decisions.append((now_s, control.reason_code, control.reason))
            next_tick_s += policy.interval_s
        elif now_s == t_arrival:
            loop.arrive(requests[i])
            i += 1
        else:
            _, _, rid, version = heapq.heappop(loop.events)
            rep = loop.replicas[rid]
            if version == rep.version:
                loop.replica_event(rep, now_s)
    for out in loop.outcomes.values():
        if out.end_s is None or (not out.ok and out.end_s is None):
            out.ok, out.end_s = False, end_s
    run.outcomes = [loop.outcomes[r.id] for r in requests[:i]]
    run.replica_seconds = sum(
        max(0.0, min(r.stop_s if r.stop_s is not None else duration_s, duration_s) - min(r.start_s, duration_s))
        for r in loop.replicas
    )
    return run
