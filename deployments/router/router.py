"""`Router`: the ingress — the OpenAI HTTP API over `RouterCore`'s handle API and decisions.

The routes build a `GenerateRequest` from the body and sloserve's headers (deployments/http/
headers.py), pick the variant once for the whole HTTP request (a batch of prompts on
`/v1/completions` all goes to it, deployments/router/completions_fanout.py), and answer in
OpenAI's shapes, streamed as server-sent events or whole. Every response names its variant
(`model` field and VARIANT_HEADER). Errors are mapped to HTTP once, in deployments/http/errors.py;
5xx bodies carry the request id and the details are logged under it. Before any route runs,
`HTTPGuard` checks API keys and the body limit (deployments/http/guard.py). Admission, variant
and replica choice, timeouts and the SLO windows are `RouterCore`'s (deployments/router/router_core.py).
"""

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle

from deployments.http.errors import (
    as_invalid,
    classify,
    failure_response,
    register_error_handlers,
    request_id_of,
)
from deployments.http.guard import GuardSettings, HTTPGuard
from deployments.http.headers import VARIANT_HEADER, request_fields
from deployments.http.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    SSEFormatter,
    chat_response,
    completion_response,
)
from deployments.router.completions_fanout import generate_all, stream_all
from deployments.router.router_core import RouterCore
from deployments.telemetry.hop_trace import TRACE
from inference.schema.errors import InvalidRequestError
from inference.schema.requests import GenerateRequest, StreamChunk

log = logging.getLogger("ray.serve")

app = FastAPI(
    title="sloserve",
    description="OpenAI-compatible LLM serving that meets a latency SLO by choosing compressed or full variants.",
    version="0.1.0",
)


app.add_middleware(HTTPGuard)  # type: ignore[arg-type]
register_error_handlers(app)


@serve.ingress(app)
class Router(RouterCore):
    def __init__(self, config_json: str, servers: dict[str, DeploymentHandle],
                 slo_controller: DeploymentHandle | None = None) -> None:
        super().__init__(config_json, servers, slo_controller)
        router = self.config.router
        keys = router.api_keys()
        app.state.guard = GuardSettings(keys, router.protect_ops_endpoints, router.max_body_bytes)
        log.info("router: API keys %s (%s); body limit %d bytes", "required" if keys else "not required",
                 router.api_keys_env or "no variable", router.max_body_bytes)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, http: Request) -> Response:
        TRACE.stamp(request_id_of(http), "router.route")
        try:
            request = GenerateRequest(messages=body.messages, sampling=body.to_sampling(),
                                      continuous_usage=body.continuous_usage, tools=body.tools,
                                      tool_choice=body.tool_choice, parallel_tool_calls=body.parallel_tool_calls,
                                      **self._header_fields(http))
        except Exception as e:
            return failure_response(as_invalid(e), self.config.router.retry_after_s, request_id_of(http))
        return await self._serve_http([request], body.model, body.stream, body.include_usage, "chat", request_id_of(http))

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest, http: Request) -> Response:
        TRACE.stamp(request_id_of(http), "router.route")
        try:
            requests = body.to_generate_requests(self._header_fields(http))  # one per prompt of a batch
            if len(requests) > self.config.router.max_in_flight:
                raise InvalidRequestError(f"prompt: a batch of {len(requests)} prompts is more than the "
                                          f"{self.config.router.max_in_flight} requests this server takes at once")
        except Exception as e:
            return failure_response(as_invalid(e), self.config.router.retry_after_s, request_id_of(http))
        return await self._serve_http(requests, body.model, body.stream, body.include_usage, "completion",
                                      request_id_of(http))

    def _header_fields(self, http: Request) -> dict[str, Any]:
        return request_fields(http.headers, self.config.slo, self.config.router.request_timeout_s)

    async def _serve_http(self, requests: list[GenerateRequest], model: str, stream: bool, include_usage: bool,
                          kind: str, http_id: str) -> Response:
        """Answer one HTTP request: `requests` holds one request, or one per prompt of a batch."""
        retry = self.config.router.retry_after_s
        engine_id = requests[0].request_id
        TRACE.stamp(http_id, "router.link", engine_id=engine_id)

        def failed(e: BaseException) -> JSONResponse:
            return failure_response(e, retry, http_id, engine_id)

        try:
            variant = self._variant_for(model, None)  # the one pick, for every prompt of a batch
            routed = []
            for request in requests:
                self._check_size(request)
                routed.append(self._bound_for(request, variant))
        except Exception as e:
            return failed(e)
        headers = {VARIANT_HEADER: variant}
        n = routed[0].sampling.n
        batched = len(routed) > 1
        if not stream:
            try:
                response = await (generate_all(self._generate, routed, n) if batched else self._generate(routed[0]))
            except Exception as e:
                return failed(e)
            build = chat_response if kind == "chat" else completion_response
            return JSONResponse(build(response, engine_id), headers=headers)

        chunks = stream_all(self._stream, routed, n) if batched else self._stream(routed[0])
        try:
            first = await chunks.__anext__()  # errors before the first token still get a proper status
        except Exception as e:
            await chunks.aclose()
            return failed(e)
        sse = SSEFormatter("chat" if kind == "chat" else "completion", engine_id, first.model)

        async def body() -> AsyncIterator[str]:
            try:
                chunk: StreamChunk | None = first
                TRACE.stamp(http_id, "router.first_sse")
                while chunk is not None:
                    if chunk.finished:
                        if include_usage and chunk.usage is not None:
                            yield sse.usage(chunk.usage)
                    else:
                        yield sse.delta(chunk.index, chunk.delta_text, chunk.finish_reason, chunk.logprobs, chunk.usage,
                                        chunk.tool_calls)
                    chunk = await anext(chunks, None)
                yield SSEFormatter.DONE
            except Exception as e:
                failure = classify(e, retry, http_id)
                if failure.status >= 500:
                    log.error("request %s (engine id %s) failed mid-stream with %d: %r", http_id, engine_id, failure.status, e)
                yield SSEFormatter.error(failure.message, failure.kind, failure.code)
            finally:
                await chunks.aclose()

        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        created = int(time.time())
        names = [self.model_name] + [f"{self.model_name}:{v}" for v in self.variants]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "sloserve"} for n in names]}

    @app.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "variants": self.variants, "in_flight": self.in_flight}

    @app.get("/metrics")
    async def prometheus(self) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/controller/decisions")
    async def controller_decisions(self) -> dict[str, Any]:
        return {"weights": self.weights, "decisions": self.decisions}

    @app.get("/v1/sloserve/stats")
    async def stats(self) -> dict[str, Any]:
        per_variant = await self.variant_stats()
        return {"in_flight": self.in_flight, "in_flight_by_variant": self.variant_in_flight, "weights": self.weights,
                "variants": {k: v.model_dump() for k, v in per_variant.items()}}


RouterDeployment: Deployment = serve.deployment(name="router")(Router)
