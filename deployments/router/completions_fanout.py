"""Batched prompts on `/v1/completions`: one request per prompt, fanned out inside the router.

OpenAI and vLLM take `prompt` as a list and answer `n` choices per prompt, choice `i * n + j`
being the j-th output of prompt i; usage is summed. Each prompt is its own request to the
replicas (routed, admitted, timed and recorded like any other), all to the variant chosen for
the HTTP request. If one fails the others are cancelled (aborted at their replicas).

Ray Serve 2.60 gives every handle call made while serving one request the parent's internal
request id, and its request router keys pending requests by that id: concurrent calls of one
parent collide (one is never sent). Each fanned-out call runs in its own task with its own id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from inference.schema.requests import GenerateRequest, GenerateResponse, StreamChunk, Usage

Generate = Callable[[GenerateRequest], Awaitable[GenerateResponse]]
Stream = Callable[[GenerateRequest], AsyncGenerator[StreamChunk, None]]


def _own_serve_request_id() -> None:
    """In this task only: a fresh Serve internal request id for the handle calls it makes."""
    from ray.serve import context

    current = context._get_serve_request_context()
    if current._internal_request_id:
        fresh: Any = dataclasses.replace(current, _internal_request_id=uuid.uuid4().hex)
        context._serve_request_context.set(fresh)


async def _one(generate: Generate, request: GenerateRequest) -> GenerateResponse:
    _own_serve_request_id()
    return await generate(request)


def _sum_usage(usages: list[Usage]) -> Usage:
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def generate_all(generate: Generate, requests: list[GenerateRequest], n: int) -> GenerateResponse:
    """One response holding every prompt's choices, indexed as OpenAI does."""
    tasks = [asyncio.ensure_future(_one(generate, r)) for r in requests]
    try:
        responses = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    choices = [c.model_copy(update={"index": i * n + c.index}) for i, r in enumerate(responses) for c in r.choices]
    return responses[0].model_copy(update={
        "choices": choices,
        "usage": _sum_usage([r.usage for r in responses]),
        "prompt_token_ids_len": sum(r.prompt_token_ids_len for r in responses),
    })


async def stream_all(stream: Stream, requests: list[GenerateRequest], n: int) -> AsyncGenerator[StreamChunk, None]:
    """Every prompt's chunks as they come, re-indexed; one final chunk with the summed usage."""
    queue: asyncio.Queue[tuple[int, StreamChunk | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, request: GenerateRequest) -> None:
        _own_serve_request_id()
        try:
            async for chunk in stream(request):
                await queue.put((i, chunk))
            await queue.put((i, None))
        except Exception as e:
            await queue.put((i, e))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    finals: list[StreamChunk] = []
    latest: dict[int, Usage] = {}  # continuous usage: each prompt's usage so far, summed on every chunk
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            elif item.finished:
                finals.append(item)
            else:
                update: dict[str, object] = {"index": i * n + item.index}
                if item.usage is not None:
                    latest[i] = item.usage
                    update["usage"] = _sum_usage(list(latest.values()))
                yield item.model_copy(update=update)
        usages = [f.usage for f in finals if f.usage is not None]
        yield finals[-1].model_copy(update={"usage": _sum_usage(usages) if usages else None})
    finally:
        for task in tasks:
            task.cancel()  # a request still running is aborted at its replica
        await asyncio.gather(*tasks, return_exceptions=True)
