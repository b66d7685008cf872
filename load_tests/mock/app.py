"""The mock's FastAPI app: `build_app(MockSettings) -> FastAPI`.

Per request: 429 past `max_inflight`; a variant drawn from the schedule's weights; HTTP 500 with
the variant's `error_rate`; else `max_tokens` tokens, the first content chunk at `ttft_ms` after
the request (an empty role chunk goes out at once, as real servers do), each later token
`tpot_ms` after the previous one (deadlines from the start, so sleeps do not drift), grouped
`tokens_per_chunk` a chunk; then a finish chunk, a usage chunk when asked, and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.http.headers import VARIANT_HEADER
from load_tests.mock.spec import Schedule, VariantProfile

_WORDS = ("alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel", "india", "juliet")


@dataclass(slots=True)
class MockSettings:
    """What the mock serves and its live state (in-flight count, random stream)."""

    model_name: str
    variants: dict[str, VariantProfile]
    schedule: Schedule
    anchor: Literal["first-request", "start"] = "first-request"
    controller: bool = True
    max_inflight: int | None = None
    retry_after_s: int = 1
    seed: int = 0
    inflight: int = 0
    rng: random.Random = field(default_factory=random.Random)


def error_body(message: str, type_: str, code: int | str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _prompt_tokens(body: dict[str, Any]) -> int:
    if isinstance(body.get("prompt"), str):
        return len(body["prompt"].split())
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [] if isinstance(m, dict))


def _chunk(chat: bool, model: str, rid: str, text: str | None, finish: str | None = None) -> str:
    if chat:
        delta = {"role": "assistant", "content": ""} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta if finish is None else {}, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
        obj = "text_completion"
    return "data: " + json.dumps({"id": rid, "object": obj, "created": int(time.time()), "model": model,
                                  "choices": [choice]}) + "\n\n"


async def _stream(s: MockSettings, profile: VariantProfile, body: dict[str, Any], chat: bool, model: str,
                  n_out: int, start: float) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    rid = f"mock-{s.rng.getrandbits(48):012x}"
    fail_at = n_out // 2 if s.rng.random() < profile.stream_error_rate else None
    try:
        if chat:
            yield _chunk(chat, model, rid, None)
        sent = 0
        while sent < n_out:
            if fail_at is not None and sent >= max(fail_at, 1):
                yield "data: " + json.dumps(error_body("mock failure mid-stream", "server_error", 500)) + "\n\n"
                return
            k = min(profile.tokens_per_chunk, n_out - sent)
            last = sent + k - 1  # the chunk goes out when its last token is due
            due = start + (profile.ttft_ms + last * profile.tpot_ms) / 1000.0
            await asyncio.sleep(max(0.0, due - loop.time()))
            yield _chunk(chat, model, rid, "".join(" " + _WORDS[(sent + i) % len(_WORDS)] for i in range(k)))
            sent += k
        yield _chunk(chat, model, rid, "", finish="length")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": _prompt_tokens(body), "completion_tokens": n_out,
                     "total_tokens": _prompt_tokens(body) + n_out}
            yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                                         "model": model, "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        s.inflight -= 1


async def _complete(s: MockSettings, request: Request, chat: bool) -> Response:
    start = asyncio.get_running_loop().time()
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSONResponse(error_body("body must be a JSON object", "invalid_request_error", 400), 400)
    if s.anchor == "first-request":
        s.schedule.anchor(time.time())
    if s.max_inflight is not None and s.inflight >= s.max_inflight:
        return JSONResponse(error_body("server overloaded, retry later", "rate_limit_error", 429), 429,
                            headers={"Retry-After": str(s.retry_after_s)})
    variant = s.schedule.choose(time.time())
    profile = s.variants[variant]
    headers = {VARIANT_HEADER: variant}
    if s.rng.random() < profile.error_rate:
        return JSONResponse(error_body(f"mock failure in variant {variant}", "server_error", 500), 500,
                            headers=headers)
    n_out = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    model = f"{s.model_name}:{variant}"
    s.inflight += 1
    if body.get("stream"):
        return StreamingResponse(_stream(s, profile, body, chat, model, n_out, start),
                                 media_type="text/event-stream", headers=headers)
    try:
        await asyncio.sleep((profile.ttft_ms + (n_out - 1) * profile.tpot_ms) / 1000.0)
    finally:
        s.inflight -= 1
    text = "".join(" " + _WORDS[i % len(_WORDS)] for i in range(n_out))
    choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                              if chat else {"index": 0, "text": text, "finish_reason": "length"})
    usage = {"prompt_tokens": _prompt_tokens(body), "completion_tokens": n_out,
             "total_tokens": _prompt_tokens(body) + n_out}
    return JSONResponse({"id": "mock", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": model, "choices": [choice], "usage": usage},
                        headers=headers)


def build_app(s: MockSettings) -> FastAPI:
    app = FastAPI(title="sloserve load-test mock")
    s.rng.seed(s.seed)
    if s.anchor == "start":
        s.schedule.anchor(time.time())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": s.model_name, "object": "model", "owned_by": "mock"}]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/controller/decisions")
    async def decisions() -> Response:
        if not s.controller:
            return JSONResponse(error_body("no controller running", "not_found_error", 404), 404)
        return JSONResponse({"decisions": s.schedule.decisions(time.time())})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(s, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(s, request, chat=False)

    return app
