"""The OpenAI-compatible wire format: request models (validated, bounded) and response builders.

Requests become `GenerateRequest`s (one per prompt of a batched completion); engine results
become OpenAI response objects and SSE chunks. Every field is either implemented, or one of
IGNORED_FIELDS (OpenAI fields that ask nothing of generation), or refused with a 400 naming it
(`extra="forbid"`): a client never gets output that silently ignores what it asked for. An
unknown field sent as null asks for nothing and is dropped.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.http.errors import error_body
from deployments.http.structured_request import ResponseFormat, guided_options
from inference.schema.errors import InvalidRequestError
from inference.schema.requests import (
    ChatMessage,
    Choice,
    GenerateRequest,
    GenerateResponse,
    TokenId,
    TokenLogprobOut,
    Usage,
    check_batch_size,
    check_message_count,
)
from inference.schema.sampling import (
    CHAT_MAX_TOKENS_DEFAULT,
    COMPLETIONS_MAX_TOKENS_DEFAULT,
    MAX_LOGPROBS,
    SamplingParams,
)
from inference.schema.tools import MAX_TOOLS, Tool, ToolCallDelta, ToolChoice

# OpenAI fields accepted and ignored by design: none of them changes what is generated.
IGNORED_FIELDS = {
    "user": "an end-user id for OpenAI's abuse monitoring",
    "safety_identifier": "the same, under its newer name",
    "store": "OpenAI-side storage of the completion: nothing is stored here",
    "metadata": "tags for stored completions: nothing is stored here",
    "service_tier": "OpenAI's processing tiers: there is one here",
    "prompt_cache_key": "prefix reuse is routed by prompt prefix already",
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(default=False, description="A last chunk with the request's usage.")
    continuous_usage_stats: bool = Field(
        default=False, description="vLLM's extension: with include_usage, every chunk carries the usage so far.")


# Fields that mean on the wire what they mean to SamplingParams: passed through under the same
# name; left out (or null) they take its default, and it checks their bounds (a 400 naming the field).
SAME_AS_SAMPLING = ("n", "temperature", "top_p", "top_k", "seed", "min_tokens", "presence_penalty",
                    "frequency_penalty", "logit_bias", "stop_token_ids", "ignore_eos", "use_beam_search",
                    "length_penalty", "include_stop_str_in_output")


class _Common(BaseModel):
    """What chat and completions share; the sampling fields only as the wire spells and types them."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    n: int | None = None
    best_of: int | None = Field(default=None, description="Only best_of == n is supported.")
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None  # token id (a JSON key, so a string) -> bias
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    # extensions (as in vLLM)
    top_k: int | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    use_beam_search: bool | None = None
    length_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        """IGNORED_FIELDS and unknown fields sent as null go; any other unknown field is refused."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields or (k not in IGNORED_FIELDS and v is not None)}
        return data

    def sampling_params(self, max_tokens: int | None, logprobs: int | None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        """The one mapping of a request onto SamplingParams, which checks every bound."""
        same = {name: value for name in SAME_AS_SAMPLING if (value := getattr(self, name)) is not None}
        params = SamplingParams(
            **same, max_tokens=max_tokens, stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            guided=guided_options(self.response_format, self.guided_json, self.guided_regex, self.guided_choice),
        )
        if self.best_of is not None and self.best_of != params.n:
            raise InvalidRequestError(
                f"best_of: only best_of == n is supported (got best_of={self.best_of}, n={params.n})", "best_of")
        return params

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage on every chunk: both stream options set, as vLLM has it."""
        return bool(self.include_usage and self.stream_options and self.stream_options.continuous_usage_stats)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)  # chat has no echo: 0 tokens would answer nothing
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    @field_validator("messages", mode="before")
    @classmethod
    def _flatten_content(cls, value: Any) -> Any:
        """OpenAI allows content as a list of parts; we take the text parts (the count is bounded first)."""
        check_message_count(value)
        if isinstance(value, list):
            for message in value:
                if isinstance(message, dict) and isinstance(message.get("content"), list):
                    parts = message["content"]
                    if any(not isinstance(p, dict) or p.get("type") != "text" for p in parts):
                        raise ValueError("only text content parts are supported")
                    message["content"] = "".join(str(p.get("text", "")) for p in parts)
                elif isinstance(message, dict) and message.get("content") is None:
                    message["content"] = ""
        return value

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        return self

    def to_sampling(self) -> SamplingParams:
        max_tokens = next((m for m in (self.max_tokens, self.max_completion_tokens) if m is not None),
                          CHAT_MAX_TOKENS_DEFAULT)
        return self.sampling_params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


class CompletionRequest(_Common):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    max_tokens: int | None = None  # 0 with echo: score the prompt only
    logprobs: int | None = None  # the legacy shape: the top k alternatives of each token
    echo: bool = False

    _batch_size = field_validator("prompt", mode="before")(check_batch_size)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: Any) -> Any:
        batch = value if isinstance(value, list) and value and isinstance(value[0], (str, list)) else [value]
        if any(not p for p in batch):
            raise ValueError("prompt must not be empty (nor any prompt of a batch)")
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        """One prompt (text or token ids) per choice group: a batch fans out into several requests."""
        p: Any = self.prompt
        return list(p) if isinstance(p, list) and isinstance(p[0], (str, list)) else [p]

    def to_sampling(self) -> SamplingParams:
        max_tokens = COMPLETIONS_MAX_TOKENS_DEFAULT if self.max_tokens is None else self.max_tokens
        return self.sampling_params(max_tokens, self.logprobs, self.logprobs if self.echo else None)

    def to_generate_requests(self, headers: dict[str, Any]) -> list[GenerateRequest]:
        sampling = self.to_sampling()
        return [GenerateRequest(prompt=p, sampling=sampling, echo=self.echo, continuous_usage=self.continuous_usage,
                                **headers) for p in self.prompts]


def _chat_logprobs(items: list[TokenLogprobOut] | None) -> dict[str, Any] | None:
    if items is None:
        return None
    return {
        "content": [
            {
                "token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
                "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in t.top_ranked],
            }
            for t in items
        ]
    }


def _completion_logprobs(items: list[TokenLogprobOut] | None, text_offset: int = 0) -> dict[str, Any] | None:
    """The legacy shape (vLLM's too); text_offset: where each token starts in the choice's text."""
    if items is None:
        return None
    offsets = []
    for t in items:
        offsets.append(text_offset)
        text_offset += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [None if t.logprob is None else t.top for t in items],  # the first prompt token: null
        "text_offset": offsets,
    }


def _echoed(prompt: list[TokenLogprobOut] | None, output: list[TokenLogprobOut] | None) -> list[TokenLogprobOut] | None:
    return None if prompt is None and output is None else (prompt or []) + (output or [])


def _chat_message(choice: Choice) -> dict[str, Any]:
    """The assistant's message; with calls, `tool_calls` and the content beside them (null if none)."""
    if not choice.tool_calls:
        return {"role": "assistant", "content": choice.text}
    return {"role": "assistant", "content": choice.text.strip() or None,
            "tool_calls": [call.model_dump() for call in choice.tool_calls]}


def chat_response(resp: GenerateResponse, request_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": resp.model,
        "choices": [
            {
                "index": c.index,
                "message": _chat_message(c),
                "finish_reason": c.finish_reason,
                "logprobs": _chat_logprobs(c.logprobs),
            }
            for c in resp.choices
        ],
        "usage": resp.usage.model_dump(),
    }


def completion_response(resp: GenerateResponse, request_id: str) -> dict[str, Any]:
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": resp.model,
        "choices": [
            {
                "index": c.index, "text": (c.prompt_text or "") + c.text, "finish_reason": c.finish_reason,
                "logprobs": _completion_logprobs(_echoed(c.prompt_logprobs, c.logprobs)),
            }
            for c in resp.choices
        ],
        "usage": resp.usage.model_dump(),
    }


class SSEFormatter:
    """Builds the `data: ...` lines of one streamed response (chat or completions)."""

    def __init__(self, kind: Literal["chat", "completion"], request_id: str, model: str) -> None:
        self.kind = kind
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}"
        self.model = model
        self.created = int(time.time())
        self.started: set[int] = set()
        self.text_offsets: dict[int, int] = {}  # completions: characters sent so far per choice

    def _event(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> str:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage.model_dump()
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def delta(self, index: int, text: str, finish_reason: str | None, logprobs: list[TokenLogprobOut] | None,
              usage: Usage | None = None, tool_calls: list[ToolCallDelta] | None = None) -> str:
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text or None} if tool_calls else {"content": text}
            if tool_calls:  # the first piece of a call has its id, type and name; the rest argument text
                delta["tool_calls"] = [call.model_dump(exclude_none=True) for call in tool_calls]
            if index not in self.started:
                delta["role"] = "assistant"
                self.started.add(index)
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": _chat_logprobs(logprobs)}
        else:
            offset = self.text_offsets.get(index, 0)
            self.text_offsets[index] = offset + len(text)
            choice = {"index": index, "text": text, "finish_reason": finish_reason,
                      "logprobs": _completion_logprobs(logprobs, offset)}
        return self._event([choice], usage)

    def usage(self, usage: Usage) -> str:
        return self._event([], usage)

    @staticmethod
    def error(message: str, kind: str = "server_error", code: str | None = None) -> str:
        return f"data: {json.dumps(error_body(message, kind, None, code))}\n\n"

    DONE = "data: [DONE]\n\n"
