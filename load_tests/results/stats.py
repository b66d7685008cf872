"""Latency and throughput statistics of a group of requests, under vLLM's summary key names.

`latency_keys` gives `mean_/median_/std_/p<P>_<metric>_ms` for ttft, tpot, itl (per chunk),
itl_per_token and e2el; `throughput_keys` gives `completed`, `failed`, `request_throughput`,
`output_throughput`, `total_token_throughput` and friends. Empty groups give None, not NaN, so
summary.json stays valid JSON.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from deployments.slo.percentiles import percentile
from load_tests.results.records import ClientRecord

LATENCY_METRICS = ("ttft", "tpot", "itl", "itl_per_token", "e2el")


def percentile_name(p: float) -> str:
    """99 -> 'p99', 99.9 -> 'p99.9' (vLLM's spelling)."""
    return f"p{int(p)}" if float(p).is_integer() else f"p{p:g}"


def metric_values(records: Sequence[ClientRecord], metric: str) -> list[float]:
    """All values of `metric` (ms) over the successful requests; ITL metrics are flattened."""
    ok = [r for r in records if r.is_ok]
    if metric == "itl":
        return [v for r in ok for v in r.itl_ms]
    if metric == "itl_per_token":
        return [v for r in ok for v in r.itl_per_token_ms()]
    values = (getattr(r, f"{metric}_ms") for r in ok)
    return [v for v in values if v is not None]


def describe(values: Sequence[float], metric: str, percentiles: Sequence[float]) -> dict[str, float | None]:
    """mean/median/std/percentiles of `values` as `<stat>_<metric>_ms` keys."""
    keys = [f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms"]
    keys += [f"{percentile_name(p)}_{metric}_ms" for p in percentiles]
    if not values:
        return dict.fromkeys(keys)
    arr = np.asarray(values, dtype=float)
    stats = [float(arr.mean()), float(np.median(arr)), float(arr.std())]
    ordered = sorted(float(v) for v in values)
    stats += [percentile(ordered, p) for p in percentiles]
    return dict(zip(keys, stats, strict=True))


def latency_keys(records: Sequence[ClientRecord], percentiles: Sequence[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for metric in LATENCY_METRICS:
        out.update(describe(metric_values(records, metric), metric, percentiles))
    return out


def error_kinds(records: Sequence[ClientRecord]) -> dict[str, int]:
    """Failures by kind: 'HTTP 429', 'HTTP 500', 'timeout', 'cancelled', ..."""
    kinds: Counter[str] = Counter()
    for r in records:
        if r.is_ok:
            continue
        if r.status == "cancelled":
            kinds["cancelled"] += 1
        elif r.http_status is not None and r.http_status != 200:
            kinds[f"HTTP {r.http_status}"] += 1
        else:
            kinds[(r.error or "error").split(":", 1)[0]] += 1
    return dict(kinds.most_common())


def throughput_keys(records: Sequence[ClientRecord], duration_s: float) -> dict[str, float | int]:
    ok = [r for r in records if r.is_ok]
    input_tokens = sum(r.prompt_tokens or 0 for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    per = 1.0 / duration_s if duration_s > 0 else 0.0
    return {
        "num_requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "num_cancelled": sum(r.status == "cancelled" for r in records),
        "error_rate": (len(records) - len(ok)) / len(records) if records else 0.0,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(ok) * per,
        "output_throughput": output_tokens * per,
        "total_token_throughput": (input_tokens + output_tokens) * per,
    }


def peak_keys(records: Sequence[ClientRecord]) -> dict[str, float | int]:
    """vLLM's `max_output_tokens_per_s` (busiest whole second) and `max_concurrent_requests`."""
    ok = [r for r in records if r.is_ok]
    per_second: Counter[int] = Counter()
    for r in ok:  # token arrival times: first chunk at send + TTFT, then the per-token gaps
        t = r.send_s + (r.ttft_ms or 0.0) / 1000.0
        gaps = r.itl_per_token_ms()
        per_second[int(t)] += max(1, r.output_tokens - len(gaps))
        for gap in gaps:
            t += gap / 1000.0
            per_second[int(t)] += 1
    events = sorted([(r.send_s, 1) for r in records] + [(r.end_s, -1) for r in records])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return {"max_output_tokens_per_s": max(per_second.values(), default=0), "max_concurrent_requests": peak}


def send_lag_keys(records: Sequence[ClientRecord], late_ms: float = 10.0) -> dict[str, float | int]:
    """How far behind its plan the client itself sent (concurrency waits excluded)."""
    lags = np.asarray([r.send_lag_ms for r in records] or [0.0])
    return {
        "mean_send_lag_ms": float(lags.mean()),
        "p99_send_lag_ms": percentile(sorted(float(v) for v in lags), 99),
        "max_send_lag_ms": float(lags.max()),
        "num_late_sends": int((lags > late_ms).sum()),
    }
