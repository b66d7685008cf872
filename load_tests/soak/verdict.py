"""The soak's verdict (pure): outcomes attributed to faults, RSS growth, the report and its failures.

An error is *attributed* to a kill when the request was in flight at that moment (sent before it,
ended after it), or was sent in the `KILL_DETECT_S` after it and failed because its replica had
failed (the router may pick a dead replica until Serve notices): those are the requests a killed
replica may fail. Any other error — and any error during a redeploy, whose graceful drain must let
in-flight requests finish — is a failure. A 429 is no error but load shed at admission (the router's
bound, with Retry-After): while a killed replica is being replaced the cluster has less capacity than
the soak's rate needs, and shedding, not queueing without bound, is the promised answer; the report
counts them. Targets: 0 lost, 0 hung, 0 unattributed errors, every KV pool whole at the end, and
every replica's RSS growth from its warm-up sample to its last below the limit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal

from deployments.slo.percentiles import percentile_of

OutcomeStatus = Literal["ok", "error", "hung", "lost"]


@dataclass(slots=True)
class Outcome:
    """How one request ended; times in seconds since the soak's start."""

    request_id: int
    send_s: float
    end_s: float | None
    status: OutcomeStatus
    error: str | None = None
    http_status: int | None = None
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    variant: str | None = None
    output_tokens: int = 0
    attributed_to: str | None = None  # "kill@<t>" for errors in flight at a kill

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault as it happened: a kill (start == end) or a redeploy (start .. end)."""

    kind: str
    start_s: float
    end_s: float
    target: str = ""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RssSample:
    t_s: float
    replica: str
    rss_bytes: int


KILL_DETECT_S = 10.0  # after a kill, how long the router may still send to the dead replica


def is_shed(o: Outcome) -> bool:
    return o.status == "error" and o.http_status == 429


def _replica_failed(o: Outcome) -> bool:
    return o.http_status == 503 or "replica" in (o.error or "")


def attribute(outcomes: list[Outcome], faults: list[Fault]) -> None:
    """Mark each error that was in flight at a kill, or sent just after one to the dead replica."""
    kills = [f for f in faults if f.kind == "kill" and f.error is None]
    for o in outcomes:
        if o.status != "error" or o.end_s is None or is_shed(o):
            continue
        for kill in kills:
            in_flight = o.send_s <= kill.start_s <= o.end_s
            routed_to_dead = kill.start_s < o.send_s <= kill.start_s + KILL_DETECT_S and _replica_failed(o)
            if in_flight or routed_to_dead:
                o.attributed_to = f"kill@{kill.start_s:.1f}s"
                break


def rss_growth(samples: list[RssSample], warmup_s: float) -> list[dict[str, Any]]:
    """Per replica: the first sample at least `warmup_s` after it was first seen, its last, growth %."""
    by_replica: dict[str, list[RssSample]] = {}
    for s in sorted(samples, key=lambda s: s.t_s):
        by_replica.setdefault(s.replica, []).append(s)
    rows = []
    for replica, seen in sorted(by_replica.items()):
        first_seen = seen[0].t_s
        warm = [s for s in seen if s.t_s - first_seen >= warmup_s]
        row: dict[str, Any] = {"replica": replica, "first_seen_s": round(first_seen, 1), "samples": len(seen),
                               "first_mb": round(seen[0].rss_bytes / 2**20, 1)}
        if len(warm) >= 2:
            base, last = warm[0], warm[-1]
            row.update(baseline_s=round(base.t_s, 1), baseline_mb=round(base.rss_bytes / 2**20, 1),
                       end_s=round(last.t_s, 1), end_mb=round(last.rss_bytes / 2**20, 1),
                       growth_pct=round(100.0 * (last.rss_bytes - base.rss_bytes) / base.rss_bytes, 2))
        rows.append(row)
    return rows


def build_report(outcomes: list[Outcome], faults: list[Fault], rss: list[RssSample], kv_reads: list[dict[str, Any]],
                 *, warmup_s: float, max_rss_growth_pct: float, duration_s: float) -> dict[str, Any]:
    """The report (JSON-ready) with `verdict.failures` naming every missed target."""
    attribute(outcomes, faults)
    counts = Counter(o.status for o in outcomes)
    shed = [o for o in outcomes if is_shed(o)]
    errors = [o for o in outcomes if o.status == "error" and not is_shed(o)]
    unattributed = [o for o in errors if o.attributed_to is None]
    ok = [o for o in outcomes if o.status == "ok"]
    kills = [f for f in faults if f.kind == "kill"]
    redeploys = [f for f in faults if f.kind == "redeploy"]
    growth = rss_growth(rss, warmup_s)
    measured = [r["growth_pct"] for r in growth if "growth_pct" in r]
    kv_whole = bool(kv_reads) and all(
        v["num_free_blocks"] == v["num_blocks"] for read in kv_reads for v in read.values()
    )
    failures = []
    if counts["lost"]:
        failures.append(f"{counts['lost']} requests lost (ended with neither a result nor an error)")
    if counts["hung"]:
        failures.append(f"{counts['hung']} requests hung past their deadline")
    if unattributed:
        kinds = Counter((o.error or "")[:80] for o in unattributed).most_common(3)
        failures.append(f"{len(unattributed)} errors not in flight on a killed replica: {kinds}")
    if not kv_whole:
        failures.append(f"KV pool not whole at the end: {kv_reads[-1] if kv_reads else 'no stats read'}")
    if measured and max(measured) >= max_rss_growth_pct:
        failures.append(f"replica RSS grew {max(measured):.1f}% after warm-up (limit {max_rss_growth_pct}%)")
    failures += [f"{f.kind} at {f.start_s:.1f} s failed: {f.error}" for f in faults if f.error]

    def per_fault(f: Fault) -> dict[str, Any]:
        in_flight = [o for o in outcomes if o.send_s <= f.start_s and (o.end_s is None or o.end_s >= f.start_s)]
        during = [o for o in outcomes if o.send_s <= f.end_s and (o.end_s is None or o.end_s >= f.start_s)]
        return {"kind": f.kind, "start_s": round(f.start_s, 2), "end_s": round(f.end_s, 2), "target": f.target,
                "error": f.error, "in_flight": len(in_flight),
                "errors": sum(o.status == "error" and not is_shed(o) for o in (in_flight if f.kind == "kill" else during)),
                "shed_429": sum(is_shed(o) for o in during), "requests_during": len(during)}

    e2e = [o.e2e_ms for o in ok if o.e2e_ms is not None]
    ttft = [o.ttft_ms for o in ok if o.ttft_ms is not None]
    return {
        "duration_s": round(duration_s, 1),
        "requests": {
            "sent": len(outcomes), "ok": counts["ok"], "shed_429": len(shed), "errors": len(errors),
            "errors_in_flight_on_kill": len(errors) - len(unattributed), "errors_unattributed": len(unattributed),
            "hung": counts["hung"], "lost": counts["lost"],
            "error_kinds": dict(Counter((o.error or "")[:120] for o in errors).most_common(10)),
            "output_tokens": sum(o.output_tokens for o in ok),
        },
        "latency_ms": {"e2e_p50": percentile_of(e2e, 50), "e2e_p99": percentile_of(e2e, 99), "e2e_max": max(e2e, default=None),
                       "ttft_p50": percentile_of(ttft, 50), "ttft_p99": percentile_of(ttft, 99)},
        "kills": [per_fault(f) for f in kills],
        "redeploys": [per_fault(f) for f in redeploys],
        "kv_pool": {"whole": kv_whole, "reads": kv_reads},
        "rss": {"warmup_s": warmup_s, "max_growth_pct": max(measured, default=None), "replicas": growth},
        "verdict": {"passed": not failures, "failures": failures},
    }
