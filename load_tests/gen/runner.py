"""Drive one bounded run: `run_load(config) -> (records, RunInfo)`.

Requests are sent at their planned times (arrivals.py), each in its own task, limited by
`max_concurrency`; sending stops at `num_prompts` or when the send window (`--duration`, else the
trace length) ends, whichever comes first. Requests still in flight `drain_timeout_s` after that
are cancelled and recorded as `cancelled` (default 30 s; the request timeout when only
`num_prompts` bounds the run), so every run stops by itself. Ctrl-C stops it early the same way
(what was measured is kept; a second Ctrl-C aborts). Controller decisions are read once at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import signal
import sys
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import httpx

from load_tests.config import LoadTestError, RunConfig
from load_tests.gen.arrivals import planned_offsets
from load_tests.gen.client import SLO_CLASS_HEADER, RequestSpec, Target, send_request
from load_tests.gen.progress import RunProgress, report_every
from load_tests.gen.prompts import Prompt, load_prompt_file, synthetic_prompts
from load_tests.gen.server_api import fetch_decisions, wait_ready
from load_tests.results.records import ClientRecord, RunInfo


def _log(config: RunConfig, message: str) -> None:
    if not config.quiet:
        print(message, file=sys.stderr, flush=True)


def _prompts(config: RunConfig) -> list[Prompt]:
    if config.prompt_file is not None:
        try:
            return load_prompt_file(config.prompt_file)
        except ValueError as e:
            raise LoadTestError(str(e)) from e
    return synthetic_prompts(min(config.num_prompts or 1000, 1000), config.input_len, config.seed)


def _target(config: RunConfig, model: str) -> Target:
    headers = dict(config.headers)
    if config.slo_class is not None:
        headers[SLO_CLASS_HEADER] = config.slo_class
    if config.api_key_or_env:
        headers.setdefault("Authorization", f"Bearer {config.api_key_or_env}")
    return Target(config.root_url, config.endpoint, model, headers, config.temperature, config.ignore_eos)


async def _choose_model(client: httpx.AsyncClient, config: RunConfig) -> str:
    models = await wait_ready(client, config.root_url, config.ready_check_timeout_s)
    if config.model is not None:
        return config.model
    if not models:
        raise LoadTestError(f"{config.root_url}/v1/models lists no model; pass --model")
    return models[0]


class _Slots:
    """The concurrency limit; it remembers since when a slot has been free, so a request that had
    to wait for one counts as ready from then on (that wait is not the client falling behind)."""

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self._free = limit
        self.free_since_s = 0.0

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self._free -= 1

    def release(self, now_s: float) -> None:
        self._free += 1
        if self._free == 1:
            self.free_since_s = now_s
        self._semaphore.release()


Sent = list[tuple[RequestSpec, asyncio.Task[ClientRecord]]]


async def _send_all(client: httpx.AsyncClient, config: RunConfig, target: Target, progress: RunProgress,
                    start_perf: float, sent: Sent) -> None:
    """Create one task per request at its planned time, appended to `sent`, until sending stops."""
    prompts = _prompts(config)
    window = config.send_window_s
    slots = _Slots(config.max_concurrency) if config.max_concurrency else None

    async def one(spec: RequestSpec) -> ClientRecord:
        try:
            record = await send_request(client, target, spec, start_perf)
        finally:
            if slots is not None:
                slots.release(time.perf_counter() - start_perf)
        progress.on_done(record)
        return record

    offsets = planned_offsets(config.request_rate, config.burstiness, config.trace, config.seed)
    for i, offset in enumerate(itertools.islice(offsets, config.num_prompts)):
        if window is not None and offset >= window:
            break
        delay = offset - (time.perf_counter() - start_perf)
        if delay > 0:
            await asyncio.sleep(delay)
        slot_wait_ms, ready_s = 0.0, offset
        if slots is not None:
            waited_from = time.perf_counter()
            left = math.inf if window is None else window - (waited_from - start_perf)
            try:
                await asyncio.wait_for(slots.acquire(), timeout=None if math.isinf(left) else max(left, 0.0))
            except TimeoutError:
                break
            slot_wait_ms = (time.perf_counter() - waited_from) * 1000.0
            ready_s = max(offset, slots.free_since_s)
        prompt = prompts[i % len(prompts)]
        session = f"session-{i % config.num_sessions}" if config.num_sessions else None
        spec = RequestSpec(i, offset, prompt, prompt.output_len or config.output_len, session, ready_s,
                           slot_wait_ms)
        sent.append((spec, asyncio.create_task(one(spec))))
        progress.on_sent()
        await asyncio.sleep(0)  # let the new request start before planning the next one


async def _unless_stopped(work: Awaitable[Any], stop: asyncio.Event) -> bool:
    """Await `work` unless `stop` is set first, then cancel it; True when stopped."""
    main, stopper = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if main.done():
        main.result()
        return False
    main.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await main
    return True


@contextlib.contextmanager
def _ctrl_c_sets(stop: asyncio.Event) -> Iterator[None]:
    """While inside, Ctrl-C sets `stop` (stop sending, keep what was measured) instead of raising."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _record_of(spec: RequestSpec, task: asyncio.Task[ClientRecord]) -> ClientRecord:
    """The task's record; a task cancelled before it could send still yields a `cancelled` record."""
    try:
        return await task
    except asyncio.CancelledError:
        return ClientRecord(spec.request_id, spec.planned_send_s, spec.planned_send_s, spec.ready_s,
                             spec.slot_wait_ms, status="cancelled", error="cancelled: the run ended before it was sent",
                             session_id=spec.session_id)


async def run_load(config: RunConfig) -> tuple[list[ClientRecord], RunInfo]:
    """Run the load described by `config` against its server; bounded in count and time."""
    limits = httpx.Limits(max_connections=config.max_concurrency or 1000, max_keepalive_connections=1000)
    timeout = httpx.Timeout(config.request_timeout_s, connect=min(config.request_timeout_s, 30.0))
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        model = await _choose_model(client, config)
        target = _target(config, model)
        window = config.send_window_s
        _log(config, f"load test: {target.url} model={model} "
                     f"num_prompts={config.num_prompts} send_window_s={window}")
        progress = RunProgress(total=config.num_prompts, window_s=window)
        ticker = None if config.quiet else asyncio.create_task(report_every(progress, config.progress_interval_s))
        start_unix, start_perf = time.time(), time.perf_counter()
        sent: Sent = []
        stop = asyncio.Event()
        try:
            with _ctrl_c_sets(stop):
                interrupted = await _unless_stopped(
                    _send_all(client, config, target, progress, start_perf, sent), stop)
                if sent and not interrupted:
                    interrupted = await _unless_stopped(
                        asyncio.wait([t for _, t in sent], timeout=config.drain_s), stop)
            pending = [task for _, task in sent if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                why = "interrupted" if interrupted else "drain timeout"
                _log(config, f"{why}: cancelled {len(pending)} requests still in flight")
            records = [await _record_of(spec, task) for spec, task in sent]
        finally:
            if ticker is not None:
                ticker.cancel()
        duration_s = time.perf_counter() - start_perf
        decisions, note = await fetch_decisions(client, config.root_url, start_unix)
        _log(config, f"done: {len(records)} requests in {duration_s:.1f} s; {note}")
    info = RunInfo(start_unix, duration_s, config.public_dict(), model, decisions, interrupted)
    return records, info
