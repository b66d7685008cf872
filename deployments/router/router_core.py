"""`RouterCore`: the router's handle API (`generate`, `stream`) and the decisions behind every request.

Order of decisions for each request: (1) admission: a bound on requests in flight, past it
`OverloadedError` (429 with Retry-After over HTTP), never an unbounded queue; (2) variant: the one
the request names (`model: name:variant` or `variant`), else weighted random by the weights from
the config or the SLO controller (`set_weights`), spilling over to a variant with a free batch
slot when the chosen one has none (`replica_choice.spill_over`; `router.spill_over`), picked
once per request (`_route`); (3) replica: affinity by session or prompt prefix, else the less
loaded of two (deployments/router/serve_request_router.py). Prompts are bounded in characters
here, before a replica tokenizes them. Timeouts raise `RequestTimeoutError` and abort at the
replica; a caller that goes away aborts its request. Latencies feed the windows the SLO
controller reads (`observe`). The HTTP routes are in deployments/router/router.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.http.errors import OverloadedError, RequestTimeoutError, UnknownModelError, status_label
from deployments.router.replica_choice import (
    affinity_key,
    chat_prefix_text,
    choose_variant,
    normalize_weights,
    spill_over,
)
from deployments.slo.decision import REASON_CODES
from deployments.slo.observation import Observation, RequestRecord, VariantLoad
from deployments.slo.windows import LatencyWindows
from deployments.telemetry.hop_trace import TRACE
from deployments.telemetry.metrics import REJECT_REASONS, RouterMetrics
from inference.schema.config import AppConfig
from inference.schema.errors import InvalidRequestError
from inference.schema.requests import GenerateRequest, GenerateResponse, ReplicaStats, StreamChunk

MANUAL_REASON = "manual"  # `set_weights` called by hand (a handle), not by the controller


class RouterCore:
    def __init__(self, config_json: str, servers: dict[str, DeploymentHandle],
                 slo_controller: DeploymentHandle | None = None) -> None:
        # `slo_controller` (the SLO controller, when enabled) is bound here only so that Serve deploys
        # it in this application; the router never calls it (the controller pushes weights here).
        self.config = AppConfig.model_validate_json(config_json)
        self.servers = servers
        self.model_name = self.config.model.name
        self.variants = [v.name for v in self.config.variants]
        self.weights = normalize_weights({v.name: v.weight for v in self.config.variants}, self.variants)
        self.rng = random.Random()
        self.in_flight = 0
        self.variant_in_flight = dict.fromkeys(self.variants, 0)
        # ready replicas per variant: the config's until the SLO controller reports Serve's (`observe`)
        self.ready_replicas = {v.name: v.num_replicas for v in self.config.variants}
        self.max_num_seqs = {v.name: v.engine.max_num_seqs for v in self.config.variants}
        self.block_size = {v.name: v.engine.block_size for v in self.config.variants}
        self.metrics = RouterMetrics()
        self.metrics.start_at_zero(self.variants, [*REASON_CODES, MANUAL_REASON])
        self._metrics_stop = self.metrics.keep_gauges_fresh()
        self.decisions: list[dict[str, Any]] = []
        self.controller_learned: dict[str, Any] | None = None
        controller = self.config.controller
        # observing since now: a rate right after the first request is not 1 / (a few milliseconds)
        self.windows = LatencyWindows(controller.window_s, controller.recent_window_s, start_s=time.monotonic())
        self.replica_load: dict[str, ReplicaStats] = {}
        for name, weight in self.weights.items():
            self.metrics.weight.labels(name).set(weight)

    def __del__(self) -> None:
        stop = getattr(self, "_metrics_stop", None)
        if stop is not None:
            stop.set()

    # ---- decisions ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _admitted(self, variant: str, seqs: int) -> Iterator[None]:
        bound = self.config.router.max_in_flight
        if self.in_flight >= bound:
            self.metrics.rejected.labels(REJECT_REASONS[0]).inc()
            raise OverloadedError(
                f"server is at its bound of {bound} requests in flight; retry later", self.config.router.retry_after_s
            )
        self.in_flight += 1
        self.variant_in_flight[variant] = self.variant_in_flight.get(variant, 0) + seqs  # batch slots: n each
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.variant_in_flight[variant] -= seqs
            self.metrics.in_flight.set(self.in_flight)

    def _variant_for(self, model: str | None, variant: str | None) -> str:
        if model is not None and model != self.model_name:
            name, _, forced = model.partition(":")
            if name != self.model_name or forced not in self.variants:
                served = [self.model_name] + [f"{self.model_name}:{v}" for v in self.variants]
                raise UnknownModelError(f"model '{model}' does not exist; served models: {served}")
            variant = forced
        if variant is not None:
            if variant not in self.variants:
                raise UnknownModelError(f"variant '{variant}' does not exist; variants: {self.variants}")
            return variant
        chosen = choose_variant(self.weights, self.rng)
        if not self.config.router.spill_over:
            return chosen
        share = self.config.router.num_replicas  # each router replica counts only its own requests
        slots = {n: -(-self.ready_replicas[n] * self.max_num_seqs[n] // share) for n in self.variants}
        target = spill_over(chosen, self.variant_in_flight, slots, self.weights)
        if target != chosen:
            self.metrics.spilled.labels(chosen, target).inc()
        return target

    def _check_size(self, request: GenerateRequest) -> None:
        """Bound the prompt before any replica tokenizes it (characters, or ids of a token prompt)."""
        bound = self.config.router.max_prompt_chars
        if request.messages is not None:
            size, param = sum(len(m.content) for m in request.messages), "messages"
        else:
            size, param = len(request.prompt or ""), "prompt"
        if size > bound:
            unit = "token ids" if isinstance(request.prompt, list) else "characters"
            raise InvalidRequestError(f"{param} has {size} {unit}; the limit is {bound}", param)

    def _bound_for(self, request: GenerateRequest, variant: str) -> GenerateRequest:
        """`request` for `variant`, with its replica-affinity key: the one copy routing makes."""
        prompt = request.prompt if request.prompt is not None else chat_prefix_text(
            [(m.role, m.content) for m in request.messages or []])
        router = self.config.router
        key = affinity_key(request.session_id, prompt, router.affinity, self.block_size[variant], router.prefix_blocks)
        return request.model_copy(update={"variant": variant, "affinity_key": key})

    def _route(self, request: GenerateRequest, model: str | None) -> GenerateRequest:
        self._check_size(request)
        return self._bound_for(request, self._variant_for(model, request.variant))

    def _timeout_s(self, request: GenerateRequest) -> float:
        return request.timeout_s or self.config.router.request_timeout_s

    def _slo_class(self, request: GenerateRequest) -> str:
        return request.slo_class or self.config.slo.default_class

    def _record_ok(self, request: GenerateRequest, arrival_s: float, e2e_s: float, ttft_s: float | None,
                   tpot_s: float | None, tokens: int, prompt_tokens: int, engine_e2e_s: float | None,
                   replica: ReplicaStats | None) -> None:
        variant = request.variant or ""
        self.windows.record(RequestRecord(variant, self._slo_class(request), arrival_s, ttft_s, tpot_s, e2e_s,
                                          True, prompt_tokens, tokens))
        m = self.metrics
        m.requests.labels(variant, "ok").inc()
        m.e2e.labels(variant).observe(e2e_s)
        if ttft_s is not None:
            m.ttft.labels(variant).observe(ttft_s)
        if tpot_s is not None:
            m.tpot.labels(variant).observe(tpot_s)
        m.tokens.labels(variant).inc(tokens)
        if engine_e2e_s is not None:
            m.router_overhead.observe(max(0.0, e2e_s - engine_e2e_s))
        if replica is not None:
            self.replica_load[variant] = replica
            m.queue_depth.labels(variant).set(replica.num_waiting)
            m.kv_used.labels(variant).set(replica.kv_used_ratio)

    def _record_failure(self, request: GenerateRequest, arrival_s: float, error: BaseException) -> None:
        variant = request.variant or ""
        self.metrics.requests.labels(variant, status_label(error)).inc()
        if status_label(error) != "bad_request":  # a client's mistake says nothing about the variant's latency
            e2e = time.monotonic() - arrival_s
            self.windows.record(RequestRecord(variant, self._slo_class(request), arrival_s, None, None, e2e, False))

    # ---- a routed request at its variant's replicas ------------------------------------------
    async def _generate(self, routed: GenerateRequest) -> GenerateResponse:
        variant = routed.variant or ""
        with self._admitted(variant, routed.sampling.n):
            start = time.monotonic()
            self.windows.record_arrival(variant, self._slo_class(routed), start)
            try:
                response: GenerateResponse = await asyncio.wait_for(
                    self.servers[variant].generate.remote(routed), self._timeout_s(routed)
                )
            except TimeoutError as e:
                error = RequestTimeoutError(f"request {routed.request_id} ran past {self._timeout_s(routed)} s and was aborted")
                self._record_failure(routed, start, error)
                raise error from e
            except Exception as e:
                self._record_failure(routed, start, e)
                raise
            e2e = time.monotonic() - start
            t = response.timing
            self._record_ok(routed, start, e2e, t.ttft_s, t.tpot_s, response.usage.completion_tokens,
                            response.usage.prompt_tokens, t.e2e_s, response.replica)
            return response

    async def _stream(self, routed: GenerateRequest) -> AsyncGenerator[StreamChunk, None]:
        variant = routed.variant or ""
        with self._admitted(variant, routed.sampling.n):
            start = time.monotonic()
            self.windows.record_arrival(variant, self._slo_class(routed), start)
            first_token_s: float | None = None
            TRACE.stamp(routed.request_id, "router.call")
            chunks: Any = self.servers[variant].options(stream=True).stream.remote(routed)
            finished = False
            try:
                async with asyncio.timeout(self._timeout_s(routed)):
                    async for chunk in chunks:
                        if first_token_s is None and chunk.delta_text and not chunk.is_prompt:
                            first_token_s = time.monotonic() - start
                            TRACE.stamp(routed.request_id, "router.first_chunk")
                        if chunk.finished:
                            finished = True
                            t, usage = chunk.timing, chunk.usage
                            tokens = usage.completion_tokens if usage else 0
                            e2e = time.monotonic() - start
                            tpot = (e2e - first_token_s) / (tokens - 1) if first_token_s and tokens > 1 else None
                            self._record_ok(routed, start, e2e, first_token_s, tpot, tokens,
                                            usage.prompt_tokens if usage else 0, t.e2e_s if t else None, chunk.replica)
                        yield chunk
            except TimeoutError as e:
                error = RequestTimeoutError(f"request {routed.request_id} ran past {self._timeout_s(routed)} s and was aborted")
                self._record_failure(routed, start, error)
                raise error from e
            except (Exception, asyncio.CancelledError) as e:
                self._record_failure(routed, start, e if isinstance(e, Exception) else RequestTimeoutError("cancelled"))
                raise
            finally:
                if not finished:
                    chunks.cancel()  # the caller left or failed: abort at the replica, free its KV

    # ---- handle API ----------------------------------------------------------------------------
    async def generate(self, request: GenerateRequest, model: str | None = None) -> GenerateResponse:
        return await self._generate(self._route(request, model))

    async def stream(self, request: GenerateRequest, model: str | None = None) -> AsyncGenerator[StreamChunk, None]:
        chunks = self._stream(self._route(request, model))
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # now, not at garbage collection: it aborts at the replica

    def set_weights(self, weights: dict[str, float], reason: str = MANUAL_REASON, details: dict[str, Any] | None = None) -> dict[str, float]:
        """Set traffic weights per variant (normalized); the controller calls this every interval."""
        self.weights = normalize_weights(weights, self.variants)
        for name, weight in self.weights.items():
            self.metrics.weight.labels(name).set(weight)
        self.metrics.decisions.labels(reason).inc()
        entry = {"time": time.time(), "weights": dict(self.weights), "reason": reason}
        entry.update(details or {})
        self.decisions.append(entry)
        del self.decisions[:-500]
        return dict(self.weights)

    def get_weights(self) -> dict[str, float]:
        return dict(self.weights)

    def remember(self, learned: dict[str, Any]) -> None:
        """Keep the SLO controller's learned state (`PolicyState.learned`) for a restarted one."""
        self.controller_learned = learned

    def recall(self) -> dict[str, Any] | None:
        return self.controller_learned

    def observe(self, replicas: dict[str, tuple[int, int]] | None = None) -> Observation:
        """The latency windows now, for the SLO controller. `replicas`: variant -> (running, ready)."""
        stats = {}
        if replicas is not None:  # Serve's count, for spilling over (`_variant_for`)
            self.ready_replicas.update({n: ready for n, (_, ready) in replicas.items() if n in self.ready_replicas})
        for name in self.variants:
            running, ready = (replicas or {}).get(name, (0, 0))
            load = self.replica_load.get(name)
            stats[name] = VariantLoad(
                num_replicas_running=running, num_replicas_ready=ready,
                queue_depth=load.num_waiting if load else 0,
                num_ongoing=load.num_running if load else 0,
            )
        return self.windows.snapshot(time.monotonic(), stats, self.variants)

    async def variant_stats(self) -> dict[str, ReplicaStats]:
        """Load of one replica per variant (exact with one replica each)."""
        names = list(self.servers)
        results = await asyncio.gather(*(self.servers[n].stats.remote() for n in names), return_exceptions=True)
        return {n: r for n, r in zip(names, results, strict=True) if isinstance(r, ReplicaStats)}
