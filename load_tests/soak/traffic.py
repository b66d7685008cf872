"""The soak's requests: a closed-loop capacity ramp, then Poisson load; each request bounded.

Every request runs in its own task under a deadline. It ends as `ok` (the stream reached its usage
chunk or `[DONE]`; content may be empty, e.g. a random test model emitting special tokens),
`error` (an HTTP error, an error event in the stream, a dropped connection), `lost` (the stream
ended with neither) or `hung` (still open at the deadline: it is cancelled then). `Load` keeps
every task, so nothing sent goes unaccounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from dataclasses import dataclass, field

import httpx

from load_tests.gen.arrivals import planned_offsets
from load_tests.gen.client import RequestSpec, Target, build_payload, variant_of
from load_tests.gen.prompts import Prompt, synthetic_prompts
from load_tests.soak.verdict import Outcome


async def _read_stream(client: httpx.AsyncClient, target: Target, spec: RequestSpec, start_perf: float,
                       outcome: Outcome) -> None:
    """Send one streaming request and fill `outcome`: what ended it, and when."""
    payload = build_payload(target, spec)
    saw_end = False
    try:
        async with client.stream("POST", target.url, json=payload, headers=target.headers) as resp:
            outcome.http_status = resp.status_code
            outcome.variant = variant_of(resp.headers, None)
            if resp.status_code != 200:
                body = (await resp.aread())[:200].decode(errors="replace")
                outcome.status, outcome.error = "error", f"HTTP {resp.status_code}: {body}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    saw_end = True
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    error = chunk["error"]
                    message = error.get("message", error) if isinstance(error, dict) else error
                    outcome.status, outcome.error = "error", f"stream error: {message}"[:300]
                    return
                if chunk.get("usage"):
                    saw_end = True  # the usage chunk comes once the request finished
                    outcome.output_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                elif outcome.ttft_ms is None and chunk.get("choices"):
                    outcome.ttft_ms = (time.perf_counter() - start_perf - outcome.send_s) * 1000.0
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        outcome.status, outcome.error = "error", f"{type(e).__name__}: {e}"[:300]
        return
    if saw_end:
        outcome.status = "ok"
    else:
        outcome.status, outcome.error = "lost", "the stream ended with neither its end nor an error"


async def send_bounded(client: httpx.AsyncClient, target: Target, spec: RequestSpec, start_perf: float,
                       deadline_s: float) -> Outcome:
    """One request under a deadline; never raises."""
    outcome = Outcome(spec.request_id, time.perf_counter() - start_perf, None, "lost")
    task = asyncio.ensure_future(_read_stream(client, target, spec, start_perf, outcome))
    done, _ = await asyncio.wait({task}, timeout=deadline_s)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        outcome.status, outcome.error = "hung", f"no end within {deadline_s} s"
        return outcome
    outcome.end_s = time.perf_counter() - start_perf
    outcome.e2e_ms = (outcome.end_s - outcome.send_s) * 1000.0
    if task.exception() is not None:  # a bug here, not the server: counted as lost
        outcome.status, outcome.error = "lost", f"{type(task.exception()).__name__}: {task.exception()}"
    return outcome


@dataclass
class Load:
    """The requests of one phase: their tasks, in the order sent."""

    tasks: list[asyncio.Task[Outcome]] = field(default_factory=list)

    @property
    def in_flight(self) -> int:
        return sum(not t.done() for t in self.tasks)

    async def outcomes(self) -> list[Outcome]:
        """Wait for every request (each ends by its deadline) and return their outcomes."""
        if self.tasks:
            await asyncio.wait(self.tasks)
        return [t.result() for t in self.tasks]


def _prompts(input_len: int, seed: int) -> list[Prompt]:
    return synthetic_prompts(200, input_len, seed)


async def poisson_load(client: httpx.AsyncClient, target: Target, *, rate: float, duration_s: float,
                       output_len: int, input_len: int, seed: int, deadline_s: float, start_perf: float,
                       load: Load, max_requests: int = 1_000_000) -> None:
    """Send at Poisson times for `duration_s` (seconds since `start_perf`); tasks go into `load`."""
    prompts = _prompts(input_len, seed)
    offsets = planned_offsets(rate, 1.0, None, seed)
    for i, offset in enumerate(itertools.islice(offsets, max_requests)):
        if offset >= duration_s:
            break
        delay = offset - (time.perf_counter() - start_perf)
        if delay > 0:
            await asyncio.sleep(delay)
        spec = RequestSpec(i, offset, prompts[i % len(prompts)], output_len)
        load.tasks.append(asyncio.create_task(send_bounded(client, target, spec, start_perf, deadline_s)))
        await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class CapacityStep:
    concurrency: int
    ok: int
    failed: int
    seconds: float

    @property
    def req_s(self) -> float:
        return self.ok / self.seconds


async def _closed_loop(client: httpx.AsyncClient, target: Target, concurrency: int, step_s: float, output_len: int,
                       prompts: list[Prompt], deadline_s: float) -> CapacityStep:
    start = time.perf_counter()
    counter = itertools.count()
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while time.perf_counter() - start < step_s:
            i = next(counter)
            spec = RequestSpec(i, 0.0, prompts[i % len(prompts)], output_len)
            outcomes.append(await send_bounded(client, target, spec, start, deadline_s))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    ok = sum(o.status == "ok" for o in outcomes)
    return CapacityStep(concurrency, ok, len(outcomes) - ok, seconds)


async def measure_capacity(client: httpx.AsyncClient, target: Target, *, step_s: float, max_concurrency: int,
                           output_len: int, input_len: int, seed: int, deadline_s: float,
                           quiet: bool = False) -> tuple[float, list[CapacityStep]]:
    """Closed loop at concurrency 1, 2, 4, ... until throughput stops rising by 10% or requests
    fail; capacity = the best completed requests/s seen."""
    prompts = _prompts(input_len, seed + 1)
    steps: list[CapacityStep] = []
    concurrency = 1
    while concurrency <= max_concurrency:
        step = await _closed_loop(client, target, concurrency, step_s, output_len, prompts, deadline_s)
        steps.append(step)
        if not quiet:
            print(f"capacity: concurrency {concurrency}: {step.req_s:.2f} req/s ({step.failed} failed)",
                  file=sys.stderr, flush=True)
        best_before = max((s.req_s for s in steps[:-1]), default=0.0)
        if step.failed or (best_before and step.req_s < 1.1 * best_before):
            break
        concurrency *= 2
    return max(s.req_s for s in steps), steps
