"""Send one streaming OpenAI request and time it: `send_request(client, target, spec, clock)`.

Timing rules (the reason this file exists): TTFT is taken at the first chunk with non-empty
content, never at a role-only or empty chunk; ITL is the gap between consecutive content chunks
after that one, so it never includes the TTFT; E2E ends when the stream ends; TPOT is
(E2E - TTFT) / (output_tokens - 1). Token counts come from the streamed `usage`
(`stream_options.include_usage`), falling back to the number of content chunks. The variant is
the `x-sloserve-variant` header, else the suffix of the `model` field after ':'.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from deployments.http.headers import SESSION_HEADER, VARIANT_HEADER
from load_tests.config import ENDPOINT_PATHS, EndpointKind
from load_tests.gen.prompts import Prompt
from load_tests.results.records import UNKNOWN_VARIANT, ClientRecord

SLO_CLASS_HEADER = "x-sloserve-slo-class"


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to send: fixed for a run."""

    root_url: str
    endpoint: EndpointKind
    model: str
    headers: dict[str, str]
    temperature: float = 0.0
    ignore_eos: bool = False

    @property
    def url(self) -> str:
        return self.root_url + ENDPOINT_PATHS[self.endpoint]


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One planned request."""

    request_id: int
    planned_send_s: float
    prompt: Prompt
    max_tokens: int
    session_id: str | None = None
    ready_s: float | None = None
    slot_wait_ms: float = 0.0


@dataclass(slots=True)
class _Stream:
    """Mutable timing state while one stream is read (perf_counter seconds)."""

    start: float
    first_content: float | None = None
    last_content: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    per_chunk_usage: bool = True
    last_completion_tokens: int = 0
    usage: dict[str, Any] | None = None
    model: str | None = None
    error: str | None = None


def build_payload(target: Target, spec: RequestSpec) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": target.model,
        "max_tokens": spec.max_tokens,
        "temperature": target.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if target.endpoint == "chat":
        payload["messages"] = list(spec.prompt.messages)
    else:
        payload["prompt"] = spec.prompt.text
    if target.ignore_eos:
        payload["ignore_eos"] = True
    return payload


def variant_of(headers: httpx.Headers, model: str | None) -> str:
    if headers.get(VARIANT_HEADER):
        return headers[VARIANT_HEADER]
    if model and ":" in model:
        return model.rsplit(":", 1)[1]
    return "default" if model else UNKNOWN_VARIANT


def _content_of(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""


def _on_chunk(state: _Stream, chunk: dict[str, Any], now: float) -> None:
    state.model = state.model or chunk.get("model")
    if chunk.get("error"):
        err = chunk["error"]
        state.error = f"stream error: {err.get('message', err) if isinstance(err, dict) else err}"
        return
    usage = chunk.get("usage")
    if usage:
        state.usage = usage
    if not _content_of(chunk):
        return
    if state.first_content is None:
        state.first_content = now
    else:
        assert state.last_content is not None
        state.itl_ms.append((now - state.last_content) * 1000.0)
    state.last_content = now
    done = int(usage.get("completion_tokens", 0)) if usage else None
    if done is None or done <= state.last_completion_tokens:
        state.per_chunk_usage = False
    else:
        state.chunk_tokens.append(done - state.last_completion_tokens)
        state.last_completion_tokens = done


def _error_message(status: int, body: bytes) -> str:
    try:
        error = json.loads(body).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (json.JSONDecodeError, AttributeError):
        message = body[:200].decode(errors="replace")
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return float(headers["retry-after"]) if "retry-after" in headers else None
    except ValueError:
        return None


def _finish(record: ClientRecord, state: _Stream, end: float) -> ClientRecord:
    record.e2el_ms = (end - state.start) * 1000.0
    record.model = state.model or record.model
    if state.error is None and state.first_content is None:
        state.error = "no content in the response"
    if state.error is not None:
        record.status, record.error = "error", state.error
        return record
    assert state.first_content is not None
    record.ttft_ms = (state.first_content - state.start) * 1000.0
    record.itl_ms = state.itl_ms
    usage = state.usage or {}
    if usage.get("completion_tokens"):
        record.output_tokens, record.token_source = int(usage["completion_tokens"]), "usage"
    else:
        record.output_tokens = len(state.itl_ms) + 1
    record.prompt_tokens = usage.get("prompt_tokens")
    if state.per_chunk_usage and len(state.chunk_tokens) == len(state.itl_ms) + 1:
        record.chunk_tokens = state.chunk_tokens
    if record.output_tokens > 1:
        record.tpot_ms = (record.e2el_ms - record.ttft_ms) / (record.output_tokens - 1)
    return record


async def send_request(client: httpx.AsyncClient, target: Target, spec: RequestSpec, start_perf: float) -> ClientRecord:
    """Send `spec` and return its record; never raises for server or network trouble."""
    headers = dict(target.headers)
    if spec.session_id is not None:
        headers[SESSION_HEADER] = spec.session_id
    state = _Stream(start=time.perf_counter())
    record = ClientRecord(
        request_id=spec.request_id,
        planned_send_s=spec.planned_send_s,
        send_s=state.start - start_perf,
        ready_s=spec.ready_s,
        slot_wait_ms=spec.slot_wait_ms,
        session_id=spec.session_id,
    )
    try:
        async with client.stream("POST", target.url, json=build_payload(target, spec), headers=headers) as resp:
            record.http_status = resp.status_code
            record.variant = variant_of(resp.headers, None)
            if resp.status_code != 200:
                state.error = _error_message(resp.status_code, await resp.aread())
                record.retry_after_s = _retry_after(resp.headers)
            else:
                async for line in resp.aiter_lines():
                    now = time.perf_counter()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if not isinstance(chunk, dict):
                        state.error = f"not an SSE chunk object: {data[:100]!r}"
                        break
                    _on_chunk(state, chunk, now)
                    if state.error is not None:
                        break
            record.variant = variant_of(resp.headers, state.model)
    except asyncio.CancelledError:
        record.status, record.error = "cancelled", "cancelled: the run ended before the response"
        record.e2el_ms = (time.perf_counter() - state.start) * 1000.0
        return record
    except httpx.TimeoutException:
        state.error = "timeout"
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        state.error = f"{type(e).__name__}: {e}"[:300]
    return _finish(record, state, time.perf_counter())
