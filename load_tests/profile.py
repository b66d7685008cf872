"""A variant's speed profile measured through the served stack, as the SLO controller sees it.

For each concurrency N: a closed loop of N in-flight requests (`3N + 4` of them, synthetic prompts
of `input_len` words, exactly `output_len` tokens each with ignore_eos), pinned to one variant by
the model name `<model>:<variant>`, after one untimed run at the largest N (first-use allocation,
kernel builds). Per N: median TTFT, median TPOT and output throughput (tokens / run time); `repeats`
runs, medians kept. Failed requests fail the profile: a number measured over errors is no number.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inference.schema.manifest import SpeedProfile
from load_tests.config import LoadTestError, RunConfig
from load_tests.gen.runner import run_load
from load_tests.results.records import ClientRecord


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    concurrency: int
    tok_s: float
    ttft_ms: float
    tpot_ms: float


def _point(n: int, records: Sequence[ClientRecord], duration_s: float) -> ProfilePoint:
    failed = [r for r in records if not r.is_ok]
    if failed or not records:
        raise LoadTestError(f"{len(failed)} of {len(records)} requests failed at concurrency {n}: "
                            f"{failed[0].error if failed else 'nothing was sent'}")
    tokens = sum(r.output_tokens for r in records)
    return ProfilePoint(
        n, tokens / duration_s,
        statistics.median(r.ttft_ms for r in records if r.ttft_ms is not None),
        statistics.median(r.tpot_ms for r in records if r.tpot_ms is not None),
    )


async def profile_variant(
    base_url: str,
    model: str,
    concurrencies: Sequence[int],
    input_len: int = 32,
    output_len: int = 32,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> SpeedProfile:
    """The served speed profile of `model` (e.g. 'smollm2-135m-instruct:int8') at each concurrency."""

    def config(n: int, seed: int) -> RunConfig:
        return RunConfig(base_url=base_url, model=model, max_concurrency=n, num_prompts=3 * n + 4,
                         input_len=input_len, output_len=output_len, ignore_eos=True, seed=seed,
                         plots=False, quiet=True)

    await run_load(config(max(concurrencies), seed=10_000))  # warm-up, untimed
    points: dict[int, ProfilePoint] = {}
    for n in concurrencies:
        runs = []
        for r in range(repeats):
            records, info = await run_load(config(n, seed=r))
            runs.append(_point(n, records, info.duration_s))
        points[n] = ProfilePoint(n, statistics.median(p.tok_s for p in runs),
                                 statistics.median(p.ttft_ms for p in runs),
                                 statistics.median(p.tpot_ms for p in runs))
        p = points[n]
        log(f"  {model} @{n:>3}: {p.tok_s:7.1f} tok/s  TTFT p50 {p.ttft_ms:7.1f} ms  TPOT p50 {p.tpot_ms:6.1f} ms")
    first = points[min(points)]
    return SpeedProfile(
        tok_s_bs1=round(first.tok_s, 2),
        tok_s_at={str(n): round(p.tok_s, 2) for n, p in points.items()},
        ttft_ms_p50=round(first.ttft_ms, 2),
        tpot_ms_at={str(n): round(p.tpot_ms, 3) for n, p in points.items()},
        ttft_ms_at={str(n): round(p.ttft_ms, 2) for n, p in points.items()},
    )
