"""`LLMServer`: the Serve deployment of one variant; a replica is one tensor-parallel engine group.

A shim between the router and the engine: it builds the `AsyncLLMEngine` (rank 0 here, ranks
1..N-1 as Ray actors in this replica's placement group), warms it up, has the engine turn the
prompt or chat into token ids (a long one in a thread, so it never stalls the streams on this
replica's event loop; a short one inline, INLINE_TOKENIZE_MAX_CHARS), turns engine outputs into
`GenerateResponse` / `StreamChunk`, and reports its load (in responses, and as Ray metrics,
deployments/telemetry/metrics.py). Engine errors pass through typed; the router maps them to
HTTP. Leaving a stream early (the caller cancelled or disconnected) aborts the request in the
engine and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve import Deployment

from deployments.replica.tp_group import RankPlacement, RayPeers, this_process_placement
from deployments.telemetry.hop_trace import TRACE
from deployments.telemetry.metrics import ReplicaMetrics
from inference.engine.async_engine import AsyncLLMEngine
from inference.engine.logs import show_engine_log
from inference.parallel.worker import DeviceUnavailableError, RendezvousInfo
from inference.schema.config.engine import EngineConfig
from inference.schema.errors import QualityCheckError
from inference.schema.outputs import RequestOutput, TokenLogprob
from inference.schema.requests import (
    Choice,
    GenerateRequest,
    GenerateResponse,
    ReplicaStats,
    RequestTiming,
    StreamChunk,
    TokenLogprobOut,
    Usage,
    template_messages,
)
from inference.schema.sampling import SamplingParams
from inference.schema.tools import ToolCallParser, parse_tool_calls, tool_grammar

log = logging.getLogger("ray.serve")
LOAD_REPORT_INTERVAL_S = 1.0
# Prompts up to this many characters are tokenized on the event loop (~0.1-0.7 ms of CPU with the
# chat template), longer ones in a thread: for a short prompt the two thread hand-offs cost more
# time to first token than the tokenizing, and under CPU contention each can take milliseconds.
INLINE_TOKENIZE_MAX_CHARS = 1024


class LLMServer:
    """One replica of one variant (deployed as `llm-<variant>`, deployments/replica/placement.py)."""

    async def __init__(self, variant: str, model_name: str, engine_config_json: str) -> None:  # type: ignore[misc]
        self.variant = variant
        self._peers: RayPeers | None = None  # ranks 1..N-1, when tp_size > 1
        self.model_name = f"{model_name}:{variant}"
        show_engine_log()  # the kernel build and compile steps of a first start
        config = EngineConfig.model_validate_json(engine_config_json)
        started = time.monotonic()
        try:
            self.engine = await asyncio.to_thread(self._build_engine, config)
        except (QualityCheckError, DeviceUnavailableError) as e:  # it does not serve; Serve's deploy error names it
            raise type(e)(f"variant {variant!r} refuses to start: {e}") from e
        await self._warm_up()
        self.metrics = ReplicaMetrics()
        self._series = (variant, serve.get_replica_context().replica_id.unique_id)
        self._reporter = asyncio.create_task(self._report_load())
        log.info("variant %s ready in %.1f s (pid %d)", variant, time.monotonic() - started, os.getpid())

    def _build_engine(self, config: EngineConfig) -> AsyncLLMEngine:
        if config.tp_size == 1:
            return AsyncLLMEngine(config)

        def ray_peers(config: EngineConfig, rendezvous: RendezvousInfo) -> RayPeers:
            self._peers = RayPeers(config, rendezvous)  # kept: `placement` asks them where they run
            return self._peers

        return AsyncLLMEngine(config, peers_factory=ray_peers)

    async def _warm_up(self) -> None:
        async for _ in self.engine.generate(self.engine.encode("Hello"), SamplingParams(max_tokens=2, temperature=0.0)):
            pass

    # ---- serving -------------------------------------------------------------------------------
    def _prompt_ids(self, request: GenerateRequest) -> list[int]:
        """The prompt as token ids (chat template applied). CPU-heavy for long prompts: run in a thread."""
        if request.messages is not None:
            tools = request.tools if request.calls_tools else None
            native = self.engine.renders_tools
            messages = template_messages(request.messages, tools, native)
            native_tools = [t.model_dump(exclude_none=True) for t in tools] if tools and native else None
            return self.engine.encode_chat(messages, native_tools)
        assert request.prompt is not None
        return self.engine.encode(request.prompt) if isinstance(request.prompt, str) else request.prompt

    async def _submit(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        TRACE.stamp(request.request_id, "replica.received")
        if _prompt_chars(request) <= INLINE_TOKENIZE_MAX_CHARS:
            prompt_ids = self._prompt_ids(request)
        else:
            prompt_ids = await asyncio.to_thread(self._prompt_ids, request)
        TRACE.stamp(request.request_id, "replica.tokenized")
        params = request.sampling
        if request.calls_tools:
            params = replace(params, guided=tool_grammar(request.tools, request.tool_choice, request.parallel_tool_calls))
        return self.engine.generate(prompt_ids, params, request.request_id)

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        final: RequestOutput | None = None
        prompt: str | list[int] = request.prompt if request.prompt is not None else []  # the echo's text
        async for out in await self._submit(request):
            final = out
        assert final is not None and final.finished
        echo_text, echo_logprobs = self._echo(request, prompt, final)
        choices = []
        for c in final.outputs:
            text, calls, finish_reason = c.text, None, c.finish_reason
            if request.calls_tools:
                text, found = parse_tool_calls(c.text)
                calls = found or None
                finish_reason = _tool_finish_reason(finish_reason, bool(found))
            choices.append(Choice(
                index=c.index, text=text, token_ids=c.token_ids, finish_reason=finish_reason,
                logprobs=self._logprobs(c.logprobs), prompt_text=echo_text, prompt_logprobs=echo_logprobs,
                tool_calls=calls,
            ))
        return GenerateResponse(
            request_id=final.request_id,
            variant=self.variant,
            model=self.model_name,
            prompt_token_ids_len=len(final.prompt_token_ids),
            choices=choices,
            usage=_usage(final),
            timing=_timing(final),
            replica=self.stats(),
        )

    async def stream(self, request: GenerateRequest) -> AsyncIterator[StreamChunk]:
        prompt: str | list[int] = request.prompt if request.prompt is not None else []  # the echo's text
        echoed: set[int] = set()
        parsers: dict[int, ToolCallParser] = {}  # with tools: one per output
        traced = not TRACE.enabled
        async for out in await self._submit(request):
            if not traced:
                traced = True
                _trace_engine(out)
            for c in out.outputs:
                if request.echo and c.index not in echoed:  # the prompt first, once per output
                    echoed.add(c.index)
                    text, logprobs = self._echo(request, prompt, out)
                    yield StreamChunk(
                        request_id=out.request_id, variant=self.variant, model=self.model_name, index=c.index,
                        delta_text=text or "", delta_token_ids=[], logprobs=logprobs, is_prompt=True,
                    )
                if not c.delta_text and not c.delta_token_ids and not (out.finished and c.finish_reason):
                    continue
                text, calls, finish_reason = c.delta_text, None, c.finish_reason
                if request.calls_tools:  # content and call pieces, split as they stream
                    parser = parsers.setdefault(c.index, ToolCallParser())
                    parsed = parser.feed(c.delta_text)
                    if c.finish_reason is not None:
                        parsed.content += parser.finish().content
                        finish_reason = _tool_finish_reason(finish_reason, bool(parser.calls))
                    text, calls = parsed.content, parsed.calls or None
                yield StreamChunk(
                    request_id=out.request_id, variant=self.variant, model=self.model_name, index=c.index,
                    delta_text=text, delta_token_ids=c.delta_token_ids, finish_reason=finish_reason,
                    logprobs=self._logprobs(c.delta_logprobs), usage=_usage(out) if request.continuous_usage else None,
                    tool_calls=calls,
                )
            if out.finished:
                yield StreamChunk(
                    request_id=out.request_id, variant=self.variant, model=self.model_name, index=-1,
                    delta_text="", delta_token_ids=[], finished=True, usage=_usage(out), timing=_timing(out),
                    replica=self.stats(),
                )

    def _echo(self, request: GenerateRequest, prompt: str | list[int],
              out: RequestOutput) -> tuple[str | None, list[TokenLogprobOut] | None]:
        """With echo: the prompt's text and (when asked) its tokens' logprobs, the first one None."""
        if not request.echo:
            return None, None
        tokenizer: Any = self.engine.tokenizer
        text = prompt if isinstance(prompt, str) else str(tokenizer.decode(prompt))
        if out.prompt_logprobs is None:
            return text, None
        decode = tokenizer.decode
        items = [
            TokenLogprobOut(
                token_id=token, token=decode([token]), logprob=None if lp is None else lp.logprob,
                top={} if lp is None else {decode([i]): v for i, v in lp.top.items()},
            )
            for token, lp in zip(out.prompt_token_ids, out.prompt_logprobs, strict=True)
        ]
        return text, items

    def _logprobs(self, items: list[TokenLogprob] | None) -> list[TokenLogprobOut] | None:
        if items is None:
            return None
        decode = self.engine.tokenizer.decode
        ranked = [[(decode([i]), lp) for i, lp in t.top.items()] for t in items]  # each top token decoded once
        return [
            TokenLogprobOut(token_id=t.token_id, token=decode([t.token_id]), logprob=t.logprob, top=dict(top),
                            top_ranked=top)
            for t, top in zip(items, ranked, strict=True)
        ]

    # ---- health and load -----------------------------------------------------------------------
    def stats(self) -> ReplicaStats:
        s = self.engine.stats()
        return ReplicaStats(
            variant=self.variant, num_waiting=s.num_waiting, num_running=s.num_running,
            num_open_requests=self.engine.num_open_requests, kv_used_ratio=s.kv_used_ratio,
            num_free_blocks=s.num_free_blocks, num_blocks=s.num_blocks, num_preemptions=s.num_preemptions,
        )

    async def _report_load(self) -> None:
        """Export this replica's load to Ray's metrics every LOAD_REPORT_INTERVAL_S, while it lives."""
        m, series = self.metrics, self._series
        queried = hits = 0  # the engine's prefix-cache totals at the previous report
        hit_ratio = 0.0
        while True:
            s = self.engine.stats()
            m.queue_depth.labels(*series).set(s.num_waiting)
            m.running.labels(*series).set(s.num_running)
            m.kv_used.labels(*series).set(s.kv_used_ratio)
            if s.prefix_cache_queried_tokens > queried:  # else no prompt was admitted: keep the last share
                hit_ratio = (s.prefix_cache_hit_tokens - hits) / (s.prefix_cache_queried_tokens - queried)
            queried, hits = s.prefix_cache_queried_tokens, s.prefix_cache_hit_tokens
            m.prefix_cache_hits.labels(*series).set(hit_ratio)
            await asyncio.sleep(LOAD_REPORT_INTERVAL_S)

    def check_health(self) -> None:
        self.engine.check_health()  # raises EngineDeadError: Serve replaces this replica

    def dtype(self) -> str:
        """The dtype this replica computes in and why (`dtype: auto` measures on CPU): for `sloserve status`."""
        return self.engine.info.dtype_choice.summary()

    def placement(self) -> list[RankPlacement]:
        """Where each rank of this replica runs: node, GPU ids Ray assigned, torch device."""
        mine = this_process_placement(0, self.engine.device)
        return [mine, *(self._peers.placements() if self._peers is not None else [])]

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def _prompt_chars(request: GenerateRequest) -> int:
    if request.messages is not None:
        return sum(len(m.content) for m in request.messages)
    return len(request.prompt) if isinstance(request.prompt, str) else 0  # token ids: nothing to tokenize


def _trace_engine(out: RequestOutput) -> None:
    """The engine's own timestamps of a request's first output, and when the replica got it."""
    m = out.metrics
    TRACE.stamp(out.request_id, "engine.arrival", m.arrival_s)
    for hop, t in (("engine.scheduled", m.scheduled_s), ("engine.first_token", m.first_token_s)):
        if t is not None:
            TRACE.stamp(out.request_id, hop, t)
    TRACE.stamp(out.request_id, "replica.first_output")


def _tool_finish_reason(finish_reason: str | None, called: bool) -> str | None:
    """OpenAI's "tool_calls" for an output that ended (not cut by max_tokens) after its calls."""
    return "tool_calls" if called and finish_reason == "stop" else finish_reason


def _usage(out: RequestOutput) -> Usage:
    completion = sum(c.num_tokens for c in out.outputs)
    return Usage(prompt_tokens=len(out.prompt_token_ids), completion_tokens=completion,
                 total_tokens=len(out.prompt_token_ids) + completion)


def _timing(out: RequestOutput) -> RequestTiming:
    m = out.metrics
    queue = None if m.scheduled_s is None else m.scheduled_s - m.arrival_s
    return RequestTiming(queue_s=queue, ttft_s=m.ttft_s, tpot_s=m.tpot_s, e2e_s=m.e2e_s)


LLMServerDeployment: Deployment = serve.deployment(
    health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=5
)(LLMServer)
