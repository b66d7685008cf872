"""Serving-overhead benchmark: the same requests through HTTP, a Serve handle, and the bare engine.

    python -m load_tests.benchmarks.serving [--model packaged:smollm2-135m-instruct] [--requests 20] [--json]

One variant, one replica, tp_size 1, requests one at a time (so queueing does not blur the
layers), in rounds of engine, handle, HTTP (so a change of load hits every path alike). Every
path is timed by one rule: TTFT to the first chunk carrying output tokens; per-token latency =
(last such chunk - first) / (the engine's own count of output tokens - 1), the count taken from
the engine's output (engine), the final chunk's usage (handle) or the stream's usage event (HTTP;
`stream_options.include_usage`), and checked equal to --max-tokens on every path. The HTTP client
keeps one connection alive, as any client that cares about latency does. Prints what the handle
and HTTP add over the engine, with PASS/FAIL against TARGETS, and per-hop medians from the hop
trace (deployments/telemetry/hop_trace.py; docs/serving-path.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deployments.slo.percentiles import percentile
from deployments.telemetry.hop_trace import TRACE_ENV, HopTrace, engine_ttft_s, hop_breakdown, read_trace

PROMPT = "Explain in a few sentences why batching requests makes LLM serving cheaper."
PATHS = ("engine", "handle", "http")
# What each serving path may add over the in-process engine: p50 TTFT (ms) and p50 per-token latency (%).
TARGETS = {"handle": (3.0, 5.0), "http": (10.0, 5.0)}


class BenchError(RuntimeError):
    pass


@dataclass(slots=True)
class Sample:
    ttft_s: float
    tpot_s: float
    tokens: int
    engine_ttft_s: float | None  # the engine's own time from the request's arrival to its first token


class _Clock:
    """Times one request's stream by the same rule on every path (see the module docstring)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None

    def output(self) -> None:
        self.last = time.monotonic()
        if self.first is None:
            self.first = self.last

    def sample(self, path: str, tokens: int, expected: int, engine_ttft: float | None) -> Sample:
        if self.first is None or self.last is None or tokens != expected:
            raise BenchError(f"{path}: the engine counted {tokens} output tokens, expected --max-tokens={expected}")
        return Sample(self.first - self.start, (self.last - self.first) / (tokens - 1), tokens, engine_ttft)


def _pct(values: list[float], q: float) -> float:
    return percentile(sorted(values), 100.0 * q)


def _summary(samples: list[Sample]) -> dict[str, float]:
    ttft, tpot = [s.ttft_s for s in samples], [s.tpot_s for s in samples]
    added = [s.ttft_s - s.engine_ttft_s for s in samples if s.engine_ttft_s is not None]
    out = {
        "ttft_ms_p50": round(1e3 * _pct(ttft, 0.5), 2), "ttft_ms_p95": round(1e3 * _pct(ttft, 0.95), 2),
        "tpot_ms_p50": round(1e3 * _pct(tpot, 0.5), 3), "tpot_ms_p95": round(1e3 * _pct(tpot, 0.95), 3),
        "tokens": samples[0].tokens,
    }
    if len(added) == len(samples):
        out["outside_engine_ttft_ms_p50"] = round(1e3 * _pct(added, 0.5), 2)
    return out


def _overhead(results: dict[str, Any], path: str) -> dict[str, Any]:
    """What `path` adds over the engine: the difference of p50 TTFTs, and the same taken per request
    (client TTFT minus the engine's own TTFT: immune to prefill-time noise), which the target checks."""
    p, e = results[path], results["engine"]
    ttft_target_ms, tpot_target_pct = TARGETS[path]
    out: dict[str, Any] = {
        "ttft_added_ms_p50": round(p["ttft_ms_p50"] - e["ttft_ms_p50"], 2),
        "ttft_added_ms_p95": round(p["ttft_ms_p95"] - e["ttft_ms_p95"], 2),
        "tpot_added_pct_p50": round(100 * (p["tpot_ms_p50"] / e["tpot_ms_p50"] - 1), 1),
        "tpot_added_pct_p95": round(100 * (p["tpot_ms_p95"] / e["tpot_ms_p95"] - 1), 1),
    }
    paired = "outside_engine_ttft_ms_p50"
    checked = round(p[paired] - e[paired], 2) if paired in p and paired in e else out["ttft_added_ms_p50"]
    out["ttft_added_ms_p50_per_request"] = checked
    out["target"] = f"<= {ttft_target_ms} ms p50 TTFT, <= {tpot_target_pct}% p50 per-token latency"
    out["pass"] = checked <= ttft_target_ms and out["tpot_added_pct_p50"] <= tpot_target_pct
    return out


async def _run_paths(model_name: str, engine: Any, handle: Any, trace: HopTrace, requests: int, max_tokens: int,
                     port: int, log: Callable[[str], None]) -> dict[str, list[Sample]]:
    import httpx

    from inference.schema.requests import GenerateRequest
    from inference.schema.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    body = {"model": model_name, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}

    async def via_engine() -> Sample:
        clock, final = _Clock(), None
        async for out in engine.generate(engine.encode(PROMPT), params):
            if out.outputs[0].delta_token_ids:
                clock.output()
            final = out
        assert final is not None
        return clock.sample("engine", len(final.outputs[0].token_ids), max_tokens, final.metrics.ttft_s)

    async def via_handle() -> Sample:
        request = GenerateRequest(prompt=PROMPT, sampling=params)
        trace.stamp(request.request_id, "client.send")
        clock, final = _Clock(), None
        async for chunk in handle.options(stream=True).stream.remote(request):
            if chunk.delta_token_ids and not chunk.is_prompt:
                if clock.first is None:
                    trace.stamp(request.request_id, "client.first_token")
                clock.output()
            final = chunk if chunk.finished else final
        if final is None or final.usage is None or final.timing is None:
            raise BenchError("handle: the stream ended without a final chunk carrying usage and timing")
        return clock.sample("handle", final.usage.completion_tokens, max_tokens, final.timing.ttft_s)

    async def via_http(client: httpx.AsyncClient) -> tuple[str, Sample]:
        http_id = uuid.uuid4().hex  # Serve's proxy keeps a client's x-request-id: the trace joins on it
        trace.stamp(http_id, "client.send")
        clock, tokens = _Clock(), 0
        async with client.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body,
                                 headers={"x-request-id": http_id}) as response:
            if response.status_code != 200:
                raise BenchError(f"http: status {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event["choices"]:  # one event per engine chunk that carries output tokens
                    if clock.first is None:
                        trace.stamp(http_id, "client.first_token")
                    clock.output()
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        return http_id, clock.sample("http", tokens, max_tokens, None)

    samples: dict[str, list[Sample]] = {p: [] for p in PATHS}
    http_ids: list[str] = []
    async with httpx.AsyncClient(timeout=120) as client:  # made once: an httpx client costs ~30 ms to make
        for i in range(requests + 2):  # two warm-up rounds (they also open the HTTP connection)
            engine_sample, handle_sample = await via_engine(), await via_handle()
            http_id, http_sample = await via_http(client)
            if i >= 2:
                samples["engine"].append(engine_sample)
                samples["handle"].append(handle_sample)
                samples["http"].append(http_sample)
                http_ids.append(http_id)
            if (i + 1) % 10 == 0:
                log(f"  {i + 1}/{requests + 2} rounds")
    if trace.path is not None:
        engine_ttfts = engine_ttft_s(read_trace(trace.path))
        for http_id, s in zip(http_ids, samples["http"], strict=True):
            s.engine_ttft_s = engine_ttfts.get(http_id)
    return samples


def run(model: str, num_requests: int, max_tokens: int, threads: int, log: Callable[[str], None],
        serve_env: dict[str, str] | None = None, fast_path: bool = True) -> dict[str, Any]:
    """The Ray processes start with the config's `cluster.ray_env()` (Ray Serve's fast path, as `sloserve
    up` runs them; `fast_path=False`: Serve's defaults), updated by `serve_env` (other Serve settings, to
    compare). They are set in this process before Ray Serve is imported: Serve reads them once, at
    import, so the driver's own handle (the caller) follows them as well as the processes started below."""
    from inference.schema.config import parse_config

    if max_tokens < 2:
        raise BenchError(f"--max-tokens must be >= 2 (per-token latency needs two tokens), got {max_tokens}")
    config = parse_config({
        "model": {"source": model},
        "variants": [{"name": "full", "num_cpus_per_rank": threads}],
        "router": {"affinity": "none"},
        "cluster": {"serve_fast_path": fast_path},
    })
    serve_env = {**config.cluster.ray_env(), **(serve_env or {})}
    if serve_env and "ray.serve" in sys.modules:
        raise BenchError("Ray Serve was imported before the bench could set its settings; run it as `python -m load_tests.benchmarks.serving`")
    os.environ.update(serve_env)
    import ray
    from ray import serve

    from deployments.app import build_app, engine_config_for
    from inference.engine.async_engine import AsyncLLMEngine

    results: dict[str, Any] = {"model": model, "requests": num_requests, "max_tokens": max_tokens, "threads": threads,
                               "serve_env": serve_env, "load_average_1m_before": round(os.getloadavg()[0], 2)}
    trace_path = os.path.join(tempfile.mkdtemp(prefix="sloserve-bench-"), "hops.jsonl")
    env = {**serve_env, TRACE_ENV: trace_path}
    os.environ[TRACE_ENV] = trace_path  # the Serve processes started below inherit `env` (and get it from runtime_env)
    trace = HopTrace(trace_path)
    port = 8765

    log("in-process engine ...")
    engine = AsyncLLMEngine(engine_config_for(config, config.variants[0]))
    log("local Ray Serve ...")
    ray.init(address="local", num_cpus=threads + 1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    shut_down = False

    async def measure(handle: Any) -> dict[str, list[Sample]]:
        nonlocal shut_down
        try:
            return await _run_paths(config.model.name, engine, handle, trace, num_requests, max_tokens, port, log)
        finally:
            # On this loop: with RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 the handle's router lives on it.
            await serve.shutdown_async()
            shut_down = True

    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = serve.run(build_app(config), name="bench", route_prefix="/")
        log(f"{num_requests} rounds of engine, handle, HTTP ...")
        samples = asyncio.run(measure(handle))
    finally:
        if not shut_down:
            serve.shutdown()
        ray.shutdown()
        engine.shutdown()
        for key in env:
            os.environ.pop(key, None)
    results["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    for path in PATHS:
        results[path] = _summary(samples[path])
    for path in TARGETS:
        results[f"overhead_{path}_vs_engine"] = _overhead(results, path)
    records = read_trace(trace_path)
    results["hops_ms_p50"] = {"handle": hop_breakdown(records, http=False), "http": hop_breakdown(records, http=True)}
    return results


def print_table(r: dict[str, Any]) -> None:
    if r["serve_env"]:
        print(f"Ray processes' environment: {r['serve_env']}")
    print(f"model {r['model']}, {r['requests']} sequential rounds x {r['max_tokens']} tokens, {r['threads']} threads; "
          f"load average (1 min) {r['load_average_1m_before']} before, {r['load_average_1m_after']} after")
    print(f"{'path':<8}{'TTFT p50':>10}{'TTFT p95':>10}{'TPOT p50':>10}{'TPOT p95':>10}{'outside engine':>16}{'tokens':>8}   (ms)")
    for path in PATHS:
        s = r[path]
        print(f"{path:<8}{s['ttft_ms_p50']:>10}{s['ttft_ms_p95']:>10}{s['tpot_ms_p50']:>10}{s['tpot_ms_p95']:>10}"
              f"{s.get('outside_engine_ttft_ms_p50', '-'):>16}{s['tokens']:>8}")
    for path in TARGETS:
        o = r[f"overhead_{path}_vs_engine"]
        print(f"{path} over engine: TTFT +{o['ttft_added_ms_p50_per_request']} ms p50 per request "
              f"(difference of p50s: +{o['ttft_added_ms_p50']} ms; p95s: +{o['ttft_added_ms_p95']} ms), "
              f"TPOT {o['tpot_added_pct_p50']:+}% p50 / {o['tpot_added_pct_p95']:+}% p95; "
              f"target {o['target']}: {'PASS' if o['pass'] else 'FAIL'}")
    for kind, hops in r["hops_ms_p50"].items():
        print(f"hops of a {kind} request (p50 ms between stamps; engine.arrival -> engine.first_token is the prefill):")
        for name, ms in hops.items():
            print(f"  {name:<46}{ms:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.benchmarks.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine (and the replica's CPUs)")
    parser.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the Ray processes, e.g. RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0")
    parser.add_argument("--serve-defaults", action="store_true",
                        help="Ray Serve's default settings instead of cluster.serve_fast_path (what `sloserve up` runs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bad = [kv for kv in args.serve_env if "=" not in kv]
    if bad:
        parser.error(f"--serve-env takes KEY=VALUE, got {bad}")
    serve_env = dict(kv.split("=", 1) for kv in args.serve_env)
    results = run(args.model, args.requests, args.max_tokens, args.threads, lambda m: print(m, file=sys.stderr, flush=True),
                  serve_env, fast_path=not args.serve_defaults)
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
