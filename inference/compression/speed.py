"""Speed and size of a variant, measured through the engine (`LLMEngine`) on this machine.

At each concurrency N (by default 1, 4, 8, 16, 32: the levels the controller plans with), N
requests with seeded random prompts (`prompt_len` tokens) are submitted at once and each decodes
exactly `max_tokens` tokens (ignore_eos), so every variant does the same work: aggregate tok/s =
all output tokens / wall time, TTFT and TPOT are per-request medians. Each level first runs once
untimed, then `repeats` times; the figures are the medians of the repeats. `load_average()` is
recorded beside them. Memory is the loaded weights' resident bytes.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.schema.manifest import SpeedProfile

DEFAULT_CONCURRENCIES = (1, 4, 8, 16, 32)


def load_average() -> float:
    """The 1-minute load average (a benchmark is trusted only below ~0.5 on this machine)."""
    return round(os.getloadavg()[0], 2)


@dataclass(slots=True)
class SpeedResult:
    tok_s_at: dict[int, float] = field(default_factory=dict)
    ttft_ms_at: dict[int, float] = field(default_factory=dict)
    tpot_ms_at: dict[int, float] = field(default_factory=dict)
    num_params: int = 0

    def profile(self) -> SpeedProfile:
        first = min(self.tok_s_at)
        return SpeedProfile(
            tok_s_bs1=self.tok_s_at.get(1, self.tok_s_at[first]),
            tok_s_at={str(n): round(v, 2) for n, v in self.tok_s_at.items()},
            ttft_ms_p50=round(self.ttft_ms_at.get(1, self.ttft_ms_at[first]), 2),
            tpot_ms_at={str(n): round(v, 3) for n, v in self.tpot_ms_at.items()},
            ttft_ms_at={str(n): round(v, 2) for n, v in self.ttft_ms_at.items()},
        )


def make_engine(model_dir: Path, quantization: str = "none", dtype: str = "auto", num_threads: int | None = None) -> Any:
    from inference.engine.llm_engine import LLMEngine
    from inference.schema.config.engine import EngineConfig

    config = EngineConfig(
        model=str(model_dir), dtype=dtype, quantization=quantization,  # type: ignore[arg-type]
        kv_cache_tokens=16384, max_num_seqs=64, num_threads=num_threads,
    )
    return LLMEngine(config)


def measure_speed(
    engine: Any,
    concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCIES,
    prompt_len: int = 64,
    max_tokens: int = 64,
    seed: int = 0,
    repeats: int = 3,
) -> SpeedResult:
    """Decode speed at each concurrency through a started engine: each level runs once untimed
    (first-use allocation, kernel builds), then `repeats` timed runs; figures are their medians."""
    from inference.schema.sampling import SamplingParams

    rng = random.Random(seed)
    vocab = int(engine.info.vocab_size)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    result = SpeedResult(num_params=int(engine.info.num_params))

    def prompts(n: int) -> list[list[int]]:
        return [[rng.randrange(10, vocab) for _ in range(prompt_len)] for _ in range(n)]

    for n in concurrencies:
        engine.generate(prompts(n), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up
        tok_s, ttft_ms, tpot_ms = [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            outs = engine.generate(prompts(n), params)
            wall = time.perf_counter() - start
            tok_s.append(sum(o.metrics.num_output_tokens for o in outs) / wall)
            ttft_ms.append(1000 * statistics.median(o.metrics.ttft_s or 0.0 for o in outs))
            tpot_ms.append(1000 * statistics.median(o.metrics.tpot_s or 0.0 for o in outs))
        result.tok_s_at[n] = statistics.median(tok_s)
        result.ttft_ms_at[n] = statistics.median(ttft_ms)
        result.tpot_ms_at[n] = statistics.median(tpot_ms)
    return result


def measure_variant_speed(
    model_dir: Path, quantization: str = "none", concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCIES,
    max_tokens: int = 64, num_threads: int | None = None, repeats: int = 3,
) -> SpeedResult:
    """Start an engine on `model_dir`, measure, shut it down."""
    engine = make_engine(model_dir, quantization, num_threads=num_threads)
    try:
        return measure_speed(engine, concurrencies, max_tokens=max_tokens, repeats=repeats)
    finally:
        engine.shutdown()


def measure_hf_speed(model: Any, vocab: int, concurrencies: tuple[int, ...] = (1, 32), prompt_len: int = 64,
                     max_tokens: int = 64, seed: int = 0) -> SpeedResult:
    """Fallback for variants the engine cannot load: static-batch HF `generate`, same workload shape."""
    import torch

    rng = random.Random(seed)
    result = SpeedResult()
    with torch.inference_mode():
        for n in concurrencies:
            ids = torch.tensor([[rng.randrange(10, vocab) for _ in range(prompt_len)] for _ in range(n)])
            kwargs = {"do_sample": False, "pad_token_id": 0}
            model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)  # warm-up
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
            ttft = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kwargs)
            wall = time.perf_counter() - start
            result.tok_s_at[n] = n * max_tokens / wall
            result.ttft_ms_at[n] = 1000 * ttft
            result.tpot_ms_at[n] = 1000 * max(1e-6, wall - ttft) / (max_tokens - 1)
    return result
