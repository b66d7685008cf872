"""Controller switch events: from the controller's decisions when it has any, else inferred.

Inferred flips: the run is cut into windows; a window's dominant variant answered more than half
of its successful requests; a flip is a change of dominant variant between windows, placed at the
request where the answers changed over (the split that best separates old from new answers).
A decision event is a change of the controller's weights; its time to switch is the gap from the
decision to the first request answered by its favoured variant at the changeover (None when the
answers never flipped, or the favoured variant did not change). Failed requests "during" a switch are those sent from
the event until one window after the answers flipped (inferred: one window either side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from load_tests.results.records import ClientRecord, ControllerDecision
from load_tests.results.timeseries import dominant, window_index


@dataclass(frozen=True, slots=True)
class SwitchEvent:
    """One change of the controller's decision, or one observed change of the answering variant."""

    time_s: float
    source: Literal["controller", "inferred"]
    from_variant: str | None
    to_variant: str | None
    is_switch: bool
    observed_s: float | None
    time_to_switch_s: float | None
    requests_during: int
    failed_during: int
    weights: dict[str, float] | None = None
    replicas: dict[str, int] | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Flip:
    """The answering variant changed from `old` to `new` at about `time_s` (midway between the last
    `old` and the first `new` answer at the changeover); `first_new_s` is that first `new` one."""

    time_s: float
    old: str
    new: str
    first_new_s: float


def _favoured(weights: dict[str, float]) -> str | None:
    if not weights:
        return None
    best = max(weights.values())
    top = [v for v, w in weights.items() if w == best]
    return top[0] if len(top) == 1 else None


def _changeover(span: Sequence[ClientRecord], old: str, new: str) -> tuple[float, float]:
    """(estimated time, first `new` send time) where answers change from `old` to `new`: the split
    with the fewest out-of-place answers."""
    seq = [r for r in span if r.variant in (old, new)]
    best_i, best_cost = 0, len(seq) + 1
    cost = sum(r.variant == old for r in seq)  # split at 0: every `old` answer is out of place
    for i in range(len(seq) + 1):
        if cost < best_cost:
            best_i, best_cost = i, cost
        if i < len(seq):
            cost += 1 if seq[i].variant == new else -1
    if best_i == 0:
        return seq[0].send_s, seq[0].send_s
    if best_i == len(seq):
        return seq[-1].send_s, seq[-1].send_s
    return (seq[best_i - 1].send_s + seq[best_i].send_s) / 2.0, seq[best_i].send_s


def infer_flips(records: Sequence[ClientRecord], window_s: float) -> list[Flip]:
    """Changes of the dominant answering variant between windows, placed at the changeover."""
    ok = sorted((r for r in records if r.is_ok), key=lambda r: r.send_s)
    if not ok:
        return []
    n = window_index(ok[-1].send_s, window_s) + 1
    buckets: list[list[ClientRecord]] = [[] for _ in range(n)]
    for r in ok:
        buckets[window_index(r.send_s, window_s)].append(r)
    flips: list[Flip] = []
    current, current_k = None, 0
    for k, bucket in enumerate(buckets):
        d = dominant(bucket)
        if d is None:
            continue
        if current is not None and d != current:
            span = [r for b in buckets[current_k : k + 1] for r in b]
            at, first_new = _changeover(span, current, d)
            flips.append(Flip(at, current, d, first_new))
        current, current_k = d, k
    return flips


def _during(records: Sequence[ClientRecord], start: float, end: float) -> tuple[int, int]:
    inside = [r for r in records if start <= r.send_s <= end]
    return len(inside), sum(not r.is_ok for r in inside)


def inferred_events(records: Sequence[ClientRecord], window_s: float) -> list[SwitchEvent]:
    events = []
    for f in infer_flips(records, window_s):
        sent, failed = _during(records, f.time_s - window_s, f.time_s + window_s)
        events.append(SwitchEvent(f.time_s, "inferred", f.old, f.new, True, f.time_s, 0.0, sent, failed))
    return events


def decision_events(records: Sequence[ClientRecord], decisions: Sequence[ControllerDecision],
                    window_s: float, duration_s: float) -> list[SwitchEvent]:
    """One event per change of weights during the run, matched to the flips of the answers."""
    flips = infer_flips(records, window_s)
    events: list[SwitchEvent] = []
    previous: dict[str, float] | None = None
    for d in sorted(decisions, key=lambda d: d.time_s):
        before, previous = previous, d.weights
        if d.time_s < 0.0 or d.time_s > duration_s or d.weights == before:
            continue
        new = _favoured(d.weights)
        if before is not None:
            old = _favoured(before)
        else:  # the first decision we know of: compare with what answered before it
            old = dominant([r for r in records if r.send_s < d.time_s])
            if old is None or old == new:
                continue
        # a window of slack before the decision: the server's clock and queue run a little apart from ours
        flip = next((f for f in flips if f.new == new and f.first_new_s >= d.time_s - window_s), None)
        is_switch = new is not None and old != new
        observed = flip.first_new_s if flip is not None and is_switch else None
        to_switch = max(0.0, observed - d.time_s) if observed is not None else None
        sent, failed = _during(records, d.time_s, d.time_s + (to_switch or 0.0) + window_s)
        events.append(SwitchEvent(d.time_s, "controller", old, new, is_switch, observed, to_switch, sent,
                                  failed, dict(d.weights), dict(d.replicas), d.reason))
    return events


def switch_events(records: Sequence[ClientRecord], decisions: Sequence[ControllerDecision] | None,
                  window_s: float, duration_s: float) -> list[SwitchEvent]:
    """Decision events when the controller listed any decisions, else inferred flips."""
    if decisions:
        return decision_events(records, decisions, window_s, duration_s)
    return inferred_events(records, window_s)
