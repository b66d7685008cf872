"""Serving-overhead benchmark: the same requests through HTTP, a Serve handle, and the bare engine.

    python -m deployments.bench [--model packaged:smollm2-135m-instruct] [--requests 20] [--json]

One variant, one replica, tp_size 1, requests one at a time (so queueing does not blur the
layers). For each path: TTFT (to the first streamed token) and per-token latency (mean gap
between streamed tokens after the first), p50 and p95; then what the router + Serve layers add
over the engine (handle) and what the HTTP proxy adds on top (HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from deployments.slo.windows import percentile

PROMPT = "Explain in a few sentences why batching requests makes LLM serving cheaper."


def _pct(values: list[float], q: float) -> float:
    return percentile(sorted(values), 100.0 * q)


def _summary(ttft: list[float], tpot: list[float]) -> dict[str, float]:
    return {
        "ttft_ms_p50": round(1e3 * _pct(ttft, 0.5), 2), "ttft_ms_p95": round(1e3 * _pct(ttft, 0.95), 2),
        "tpot_ms_p50": round(1e3 * _pct(tpot, 0.5), 3), "tpot_ms_p95": round(1e3 * _pct(tpot, 0.95), 3),
    }


async def _measure(stream: Callable[[], AsyncIterator[int]], n: int) -> dict[str, float]:
    """`stream()` yields the number of new tokens in each chunk as it arrives."""
    ttfts, tpots = [], []
    for _ in range(n):
        start = time.perf_counter()
        first = last = None
        tokens = 0
        async for count in stream():
            now = time.perf_counter()
            if count and first is None:
                first = now
            tokens += count
            last = now
        assert first is not None and last is not None and tokens > 1
        ttfts.append(first - start)
        tpots.append((last - first) / (tokens - 1))
    return _summary(ttfts, tpots)


def run(model: str, num_requests: int, max_tokens: int, threads: int, log: Callable[[str], None]) -> dict:  # type: ignore[type-arg]
    import httpx
    import ray
    from ray import serve

    from cluster.config import parse_config
    from deployments.app import build_app, engine_config_for
    from deployments.protocol import GenerateRequest, SamplingOptions
    from inference.async_engine import AsyncLLMEngine
    from inference.sampling_params import SamplingParams

    config = parse_config({
        "model": {"source": model},
        "variants": [{"name": "full", "num_cpus_per_rank": threads}],
        "router": {"affinity": "none"},
    })
    results: dict = {"model": model, "requests": num_requests, "max_tokens": max_tokens, "threads": threads}  # type: ignore[type-arg]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    log("in-process engine ...")
    engine = AsyncLLMEngine(engine_config_for(config, config.variants[0]))

    async def direct() -> AsyncIterator[int]:
        async for out in engine.generate(PROMPT, params):
            yield len(out.outputs[0].delta_token_ids)

    asyncio.run(_measure(direct, 2))  # warm-up
    results["engine"] = asyncio.run(_measure(direct, num_requests))
    engine.shutdown()

    log("local Ray Serve ...")
    ray.init(address="local", num_cpus=threads + 1, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8765})
        handle = serve.run(build_app(config), name="bench", route_prefix="/")
        sampling = SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

        async def via_handle() -> AsyncIterator[int]:
            request = GenerateRequest(prompt=PROMPT, sampling=sampling)
            chunks: Any = handle.options(stream=True).stream.remote(request)
            async for chunk in chunks:
                yield len(chunk.delta_token_ids)

        async def via_http() -> AsyncIterator[int]:
            body = {"model": config.model.name, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True}
            async with httpx.AsyncClient(timeout=120) as client, client.stream(
                "POST", "http://127.0.0.1:8765/v1/completions", json=body
            ) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        yield 1 if json.loads(line[6:])["choices"][0]["text"] else 0

        asyncio.run(_measure(via_handle, 2))
        results["handle"] = asyncio.run(_measure(via_handle, num_requests))
        log("HTTP ...")
        asyncio.run(_measure(via_http, 2))
        results["http"] = asyncio.run(_measure(via_http, num_requests))
    finally:
        serve.shutdown()
        ray.shutdown()

    def added(path: str, base: str) -> dict[str, float]:
        out = {k.replace("_p", "_added_p"): round(results[path][k] - results[base][k], 3) for k in results[base]}
        for q in ("p50", "p95"):
            out[f"tpot_added_pct_{q}"] = round(100 * (results[path][f"tpot_ms_{q}"] / results[base][f"tpot_ms_{q}"] - 1), 1)
        return out

    results["overhead_handle_vs_engine"] = added("handle", "engine")
    results["overhead_http_vs_engine"] = added("http", "engine")
    results["target"] = "router + Serve add <= 10 ms p50 TTFT and <= 5% per-token latency vs the in-process engine"
    return results


def print_table(r: dict) -> None:  # type: ignore[type-arg]
    print(f"model {r['model']}, {r['requests']} sequential requests x {r['max_tokens']} tokens, {r['threads']} threads")
    print(f"{'path':<10}{'TTFT p50':>11}{'TTFT p95':>11}{'TPOT p50':>11}{'TPOT p95':>11}   (ms)")
    for path in ("engine", "handle", "http"):
        s = r[path]
        print(f"{path:<10}{s['ttft_ms_p50']:>11}{s['ttft_ms_p95']:>11}{s['tpot_ms_p50']:>11}{s['tpot_ms_p95']:>11}")
    for name in ("overhead_handle_vs_engine", "overhead_http_vs_engine"):
        o = r[name]
        print(f"{name}: TTFT +{o['ttft_ms_added_p50']} ms p50 / +{o['ttft_ms_added_p95']} ms p95, "
              f"TPOT {o['tpot_added_pct_p50']:+}% p50 / {o['tpot_added_pct_p95']:+}% p95")
    print(f"target: {r['target']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine (and the replica's CPUs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.model, args.requests, args.max_tokens, args.threads, lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
