"""Load, latency and SLO attainment over time, in fixed windows: `windows(...) -> list[WindowRow]`.

A request belongs to the window it was sent in (offered load by its planned time, throughput by
the time it ended). There is one row per window for all requests (`variant="all"`) and one per
variant that answered during the run. `dominant_variant` is the variant that answered more than
half of the window's successful requests (None when none did); switch inference uses it.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from deployments.slo.percentiles import percentile_of
from load_tests.config import GoodputTargets
from load_tests.results.records import ClientRecord
from load_tests.results.slo import meets_all

ALL = "all"
_NICE_WINDOWS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True, slots=True)
class WindowRow:
    """One window of one variant (or of all requests)."""

    window_start_s: float
    window_end_s: float
    variant: str
    num_sent: int
    num_ok: int
    num_failed: int
    offered_rate: float
    request_throughput: float
    output_throughput: float
    share: float | None
    p50_ttft_ms: float | None
    p99_ttft_ms: float | None
    p50_tpot_ms: float | None
    p99_tpot_ms: float | None
    p50_e2el_ms: float | None
    slo_attainment: float | None
    goodput: float
    dominant_variant: str | None


def choose_window_s(duration_s: float, target_windows: int = 40) -> float:
    """A round window length giving about `target_windows` windows over the run."""
    wanted = duration_s / target_windows
    return next((w for w in _NICE_WINDOWS_S if w >= wanted), _NICE_WINDOWS_S[-1])


def dominant(records: Sequence[ClientRecord]) -> str | None:
    """The variant that answered more than half of the successful requests, if any."""
    counts = Counter(r.variant for r in records if r.is_ok)
    if not counts:
        return None
    variant, n = counts.most_common(1)[0]
    return variant if n * 2 > sum(counts.values()) else None


def window_index(t: float, window_s: float) -> int:
    return max(0, math.floor(t / window_s))


def _row(start: float, window_s: float, variant: str, sent: list[ClientRecord], planned: int,
         ended: list[ClientRecord], ok_in_window: int, slo: GoodputTargets) -> WindowRow:
    ok = [r for r in sent if r.is_ok]
    ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    tpot = [r.tpot_ms for r in ok if r.tpot_ms is not None]
    e2el = [r.e2el_ms for r in ok if r.e2el_ms is not None]
    good = sum(meets_all(r, slo) for r in sent)
    return WindowRow(
        window_start_s=start,
        window_end_s=start + window_s,
        variant=variant,
        num_sent=len(sent),
        num_ok=len(ok),
        num_failed=len(sent) - len(ok),
        offered_rate=planned / window_s,
        request_throughput=len(ended) / window_s,
        output_throughput=sum(r.output_tokens for r in ended) / window_s,
        share=len(ok) / ok_in_window if ok_in_window else None,
        p50_ttft_ms=percentile_of(ttft, 50),
        p99_ttft_ms=percentile_of(ttft, 99),
        p50_tpot_ms=percentile_of(tpot, 50),
        p99_tpot_ms=percentile_of(tpot, 99),
        p50_e2el_ms=percentile_of(e2el, 50),
        slo_attainment=good / len(sent) if sent else None,
        goodput=good / window_s,
        dominant_variant=dominant(sent),
    )


def windows(records: Sequence[ClientRecord], duration_s: float, window_s: float,
            slo: GoodputTargets) -> list[WindowRow]:
    """Rows for every window of the run: first the `all` row, then one per variant."""
    n = max(1, math.ceil(duration_s / window_s))
    variants = sorted({r.variant for r in records})
    by_sent: list[list[ClientRecord]] = [[] for _ in range(n)]
    by_end: list[list[ClientRecord]] = [[] for _ in range(n)]
    planned = [0] * n
    for r in records:
        by_sent[min(window_index(r.send_s, window_s), n - 1)].append(r)
        planned[min(window_index(r.planned_send_s, window_s), n - 1)] += 1
        if r.is_ok:
            by_end[min(window_index(r.end_s, window_s), n - 1)].append(r)
    rows = []
    for i in range(n):
        start = i * window_s
        ok_here = sum(r.is_ok for r in by_sent[i])
        rows.append(_row(start, window_s, ALL, by_sent[i], planned[i], by_end[i], ok_here, slo))
        for v in variants:
            sent_v = [r for r in by_sent[i] if r.variant == v]
            planned_v = len(sent_v)
            ended_v = [r for r in by_end[i] if r.variant == v]
            rows.append(_row(start, window_s, v, sent_v, planned_v, ended_v, ok_here, slo))
    return rows


def write_csv(path: Path, rows: Sequence[WindowRow]) -> None:
    names = [f.name for f in fields(WindowRow)]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
