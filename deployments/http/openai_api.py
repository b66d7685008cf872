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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from deployments.http.errors import error_body
from deployments.http.structured_request import ResponseFormat, guided_options
from inference.schema.requests import (
    Bias,
    ChatMessage,
    GenerateRequest,
    GenerateResponse,
    SamplingOptions,
    StopString,
    TokenId,
    TokenLogprobOut,
    Usage,
    check_batch_size,
    check_message_count,
)
from inference.schema.sampling import (
    LENGTH_PENALTY_RANGE,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_N,
    MAX_STOP,
    MAX_STOP_TOKEN_IDS,
    MAX_TOKEN_ID,
    MAX_TOKENS_LIMIT,
    PENALTY_RANGE,
    SEED_LIMIT,
    TEMPERATURE_RANGE,
    TOP_K_MIN,
)

# OpenAI fields accepted and ignored by design: none of them changes what is generated.
IGNORED_FIELDS = {
    "user": "an end-user id for OpenAI's abuse monitoring",
    "safety_identifier": "the same, under its newer name",
    "store": "OpenAI-side storage of the completion: nothing is stored here",
    "metadata": "tags for stored completions: nothing is stored here",
    "service_tier": "OpenAI's processing tiers: there is one here",
    "parallel_tool_calls": "only means something with tools, which are refused",
    "prompt_cache_key": "prefix reuse is routed by prompt prefix already",
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(default=False, description="A last chunk with the request's usage.")
    continuous_usage_stats: bool = Field(
        default=False, description="vLLM's extension: with include_usage, every chunk carries the usage so far.")


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    best_of: int | None = Field(default=None, ge=1, le=MAX_N, description="Only best_of == n is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    presence_penalty: float = Field(default=0.0, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    frequency_penalty: float = Field(default=0.0, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    logit_bias: dict[TokenId, Bias] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    user: str | None = Field(default=None, max_length=256)
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    # extensions (as in vLLM)
    top_k: int = Field(default=0, ge=TOP_K_MIN, le=MAX_TOKEN_ID)
    min_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool = False
    use_beam_search: bool = False
    length_penalty: float = Field(default=1.0, ge=LENGTH_PENALTY_RANGE[0], le=LENGTH_PENALTY_RANGE[1])
    stop_token_ids: list[TokenId] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)
    include_stop_str_in_output: bool = False

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n", 1)  # `n` is declared before `best_of`, so it is validated first
        if value is not None and value != n:
            raise ValueError(f"only best_of == n is supported (got best_of={value}, n={n})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        """IGNORED_FIELDS and unknown fields sent as null go; any other unknown field is refused."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields or (k not in IGNORED_FIELDS and v is not None)}
        return data

    def sampling(self, logprobs: int | None, default_max_tokens: int | None) -> SamplingOptions:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingOptions(
            max_tokens=self.max_tokens if self.max_tokens is not None else default_max_tokens,
            min_tokens=self.min_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            n=self.n,
            stop=stops,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            use_beam_search=self.use_beam_search,
            length_penalty=self.length_penalty,
            include_stop_str_in_output=self.include_stop_str_in_output,
            logit_bias=dict(self.logit_bias or {}),
            guided=guided_options(self.response_format, self.guided_json, self.guided_regex, self.guided_choice),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage on every chunk: both stream options set, as vLLM has it."""
        return bool(self.include_usage and self.stream_options and self.stream_options.continuous_usage_stats)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

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

    def to_sampling(self) -> SamplingOptions:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self.sampling((self.top_logprobs or 0) if self.logprobs else None, default_max_tokens=None)


class CompletionRequest(_Common):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    max_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS_LIMIT)  # 0 with echo: score the prompt only
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
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

    def to_sampling(self) -> SamplingOptions:
        options = self.sampling(self.logprobs, default_max_tokens=16)  # OpenAI's completions default
        if self.echo and self.logprobs is not None:
            options.prompt_logprobs = self.logprobs
        return options

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


def chat_response(resp: GenerateResponse, request_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": resp.model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
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
              usage: Usage | None = None) -> str:
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text}
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
