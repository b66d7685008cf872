"""Shared-prefix scenario: TTFT with the prefix cache on vs off, same model, same run.

    python -m load_tests.benchmarks.prefix_cache --model packaged:smollm2-135m-instruct [--device cuda] [--json] [--quick]
        [--system-tokens 1000]

`num_requests` (32) requests share a `system_len`-token (1,000) system prompt, each followed by a
short distinct suffix (8..32 tokens), and arrive together; each generates 16 tokens, greedy. TTFT
= first token - arrival, so it includes the wait for earlier prefills. The two engines differ only
in `enable_prefix_caching`, and both start cold: the cache-on engine fills its cache from the first
request of the burst. Target: TTFT p50 >= 3x lower with the cache; outputs identical (greedy; a
divergence is reported, not hidden: in bf16 a reused block's KV may differ in its last bits from
one computed in another chunk, enough to flip a near-tie).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams

TARGET_TTFT_RATIO = 3.0


def shared_prefix_prompts(vocab: int, num_requests: int, system_len: int, seed: int = 5) -> list[list[int]]:
    rng = random.Random(seed)
    system = [rng.randrange(10, vocab) for _ in range(system_len)]
    return [system + [rng.randrange(10, vocab) for _ in range(rng.randint(8, 32))] for _ in range(num_requests)]


def burst_ttfts(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> tuple[list[float], list[list[int]]]:
    """Submit every prompt at once and run to the end: TTFT of each request (s) and its tokens."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    ttfts = [out.metrics.ttft_s for out in outs]
    assert all(t is not None for t in ttfts)
    return [float(t) for t in ttfts if t is not None], [list(out.outputs[0].token_ids) for out in outs]


def run_shared_prefix(config: EngineConfig, num_requests: int = 32, system_len: int = 1000, max_tokens: int = 16,
                      log: Callable[[str], None] = print) -> dict:  # type: ignore[type-arg]
    """The scenario on two engines built from `config`, cache on and off; returns the figures."""
    results: dict = {"num_requests": num_requests, "system_tokens": system_len}  # type: ignore[type-arg]
    ttfts: dict[str, list[float]] = {}
    tokens: dict[str, list[list[int]]] = {}
    for name, cache in (("cache_off", False), ("cache_on", True)):
        log(f"shared prefix: {num_requests} requests, {system_len}-token system prompt, prefix cache {name[6:]} ...")
        engine = LLMEngine(config.model_copy(update={"enable_prefix_caching": cache}))
        try:
            warm = shared_prefix_prompts(engine.info.vocab_size, 2, 64, seed=99)  # another prefix: stays cold
            engine.generate(warm, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
            prompts = shared_prefix_prompts(engine.info.vocab_size, num_requests, system_len)
            before = engine.stats()
            start = time.perf_counter()
            ttfts[name], tokens[name] = burst_ttfts(engine, prompts, max_tokens)
            wall = time.perf_counter() - start
            after = engine.stats()
            queried = after.prefix_cache_queried_tokens - before.prefix_cache_queried_tokens
            hits = after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens
            results[name] = {
                "ttft_p50_ms": round(1000 * statistics.median(ttfts[name]), 1),
                "ttft_max_ms": round(1000 * max(ttfts[name]), 1),
                "wall_s": round(wall, 2),
                "hit_ratio": round(hits / queried, 3) if queried else 0.0,
            }
        finally:
            engine.shutdown()
    off, on = results["cache_off"]["ttft_p50_ms"], results["cache_on"]["ttft_p50_ms"]
    results["ttft_p50_ratio"] = round(off / on, 2) if on else None
    same = [a == b for a, b in zip(tokens["cache_off"], tokens["cache_on"], strict=True)]
    results["outputs_identical"] = sum(same)
    results["target_met"] = bool(results["ttft_p50_ratio"] and results["ttft_p50_ratio"] >= TARGET_TTFT_RATIO)
    return results


def print_shared_prefix(r: dict) -> None:  # type: ignore[type-arg]
    print(f"shared prefix: {r['num_requests']} requests, {r['system_tokens']}-token system prompt, arriving together")
    print(f"{'prefix cache':<14}{'TTFT p50 ms':>12}{'TTFT max ms':>12}{'wall s':>9}{'hit ratio':>11}")
    for key in ("cache_off", "cache_on"):
        row = r[key]
        print(f"{key[6:]:<14}{row['ttft_p50_ms']:>12}{row['ttft_max_ms']:>12}{row['wall_s']:>9}{row['hit_ratio']:>11}")
    verdict = "met" if r["target_met"] else "NOT met"
    print(f"TTFT p50 {r['ttft_p50_ratio']}x lower with the cache (target >= {TARGET_TTFT_RATIO:g}x: {verdict}); "
          f"outputs identical: {r['outputs_identical']}/{r['num_requests']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.benchmarks.prefix_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="8 requests (a smoke run)")
    parser.add_argument("--system-tokens", type=int, default=1000, help="length of the shared system prompt")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    config = EngineConfig(model=args.model, dtype=args.dtype, device=args.device, kv_cache_tokens=40960,
                          max_num_seqs=64, max_num_batched_tokens=1024, num_threads=args.threads)
    results = run_shared_prefix(config, num_requests=8 if args.quick else 32, system_len=args.system_tokens,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(results))
    else:
        print_shared_prefix(results)
    return 0 if results["target_met"] and results["outputs_identical"] == results["num_requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
