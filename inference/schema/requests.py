"""The handle API: typed requests and responses between the router, the replicas and other services.

Other Ray Serve applications call the router's handle with these types:

    from inference.schema.requests import GenerateRequest, SamplingOptions
    handle = serve.get_app_handle("sloserve")
    response = await handle.generate.remote(GenerateRequest(prompt="Hello", sampling=SamplingOptions(max_tokens=16)))
    async for chunk in handle.options(stream=True).stream.remote(GenerateRequest(messages=[...])):
        print(chunk.delta_text, end="")

Pure pydantic (no Ray, no torch), so callers import it without the serving stack. The sampling
bounds are the engine's own (`inference/schema/sampling.py`), imported, never restated.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inference.schema.sampling import (
    LENGTH_PENALTY_RANGE,
    LOGIT_BIAS_RANGE,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_N,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOKEN_ID,
    MAX_TOKENS_LIMIT,
    PENALTY_RANGE,
    SEED_LIMIT,
    TEMPERATURE_RANGE,
    TOP_K_MIN,
)

TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Bias = Annotated[float, Field(ge=LOGIT_BIAS_RANGE[0], le=LOGIT_BIAS_RANGE[1])]

# Messages in one chat request. Checked before any message is validated: pydantic's own
# `max_length` counts after validating every item, and 60,000 one-character messages (2 MB of
# JSON) then held the router's event loop for ~0.5 s before the replica refused them.
MAX_MESSAGES = 2048
# Prompts in one batched completion, checked the same way: each of 400,000 one-id prompts failed
# three of the prompt's union members before matching the fourth (~4.8 s of the router's loop).
MAX_BATCH_PROMPTS = 2048


def check_message_count(value: object) -> object:
    """A `mode="before"` check for a `messages` field: refuse a list longer than MAX_MESSAGES."""
    if isinstance(value, list) and len(value) > MAX_MESSAGES:
        raise ValueError(f"at most {MAX_MESSAGES} messages are accepted, got {len(value)}")
    return value


def check_batch_size(value: object) -> object:
    """A `mode="before"` check for a completion's `prompt`: a batch (a list of prompts) of at most MAX_BATCH_PROMPTS."""
    if isinstance(value, list) and len(value) > MAX_BATCH_PROMPTS and isinstance(value[0], (str, list)):
        raise ValueError(f"a batch of at most {MAX_BATCH_PROMPTS} prompts is accepted, got {len(value)}")
    return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class GuidedOptions(BaseModel):
    """Structured output: the text must match a JSON schema, a regex or one of a list of choices."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["json", "regex", "choice"]
    spec: str = Field(description="The JSON schema (JSON text), the regex, or the choices as a JSON list.")
    param: str = Field(default="guided_json", description="The request field it came from (named in errors).")


class SamplingOptions(BaseModel):
    """Decoding options; the same bounds as the engine's SamplingParams (checked again there)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=256, ge=0, le=MAX_TOKENS_LIMIT)  # 0: prompt only (echo)
    min_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(default=1.0, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=TOP_K_MIN, le=MAX_TOKEN_ID)
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP)
    stop_token_ids: list[TokenId] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)
    ignore_eos: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    presence_penalty: float = Field(default=0.0, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    frequency_penalty: float = Field(default=0.0, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    use_beam_search: bool = False
    length_penalty: float = Field(default=1.0, ge=LENGTH_PENALTY_RANGE[0], le=LENGTH_PENALTY_RANGE[1])
    logit_bias: dict[TokenId, Bias] = Field(default_factory=dict, max_length=MAX_LOGIT_BIAS)
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    guided: GuidedOptions | None = None


class GenerateRequest(BaseModel):
    """One generation: a prompt (text or token ids) or chat messages (the model's template is applied)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[TokenId] | None = None
    messages: list[ChatMessage] | None = None
    sampling: SamplingOptions = Field(default_factory=SamplingOptions)
    request_id: str = Field(default_factory=lambda: f"req-{uuid.uuid4().hex}")
    variant: str | None = Field(default=None, description="Serve from this variant (default: router's choice).")
    slo_class: str | None = Field(default=None, description="SLO class (default: the config's default).")
    session_id: str | None = Field(default=None, description="Requests of one session go to one replica.")
    affinity_key: str | None = Field(default=None, description="Set by the router: replica affinity key.")
    timeout_s: float | None = Field(default=None, gt=0.0, description="Abort after this long (504 over HTTP).")
    echo: bool = Field(default=False, description="Return the prompt text (and its logprobs, if asked) with each output.")
    continuous_usage: bool = Field(
        default=False, description="stream(): every chunk carries the usage so far (vLLM's continuous_usage_stats).")

    _message_count = field_validator("messages", mode="before")(check_message_count)

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        if isinstance(self.prompt, str) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self


class TokenLogprobOut(BaseModel):
    token_id: int
    token: str
    logprob: float | None  # None only for the first prompt token (nothing before it)
    top: dict[str, float] = Field(default_factory=dict)
    top_ranked: list[tuple[str, float]] = Field(
        default_factory=list, description="The same alternatives in rank order; two tokens may decode to one text."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplicaStats(BaseModel):
    """A replica's load, piggybacked on responses and returned by `LLMServer.stats`."""

    variant: str
    num_waiting: int
    num_running: int
    num_open_requests: int
    kv_used_ratio: float
    num_free_blocks: int
    num_blocks: int
    num_preemptions: int


class RequestTiming(BaseModel):
    """Engine-side timing of one request, seconds."""

    queue_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None


class Choice(BaseModel):
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[TokenLogprobOut] | None = None
    prompt_text: str | None = None  # with echo
    prompt_logprobs: list[TokenLogprobOut] | None = None  # with echo and logprobs


class GenerateResponse(BaseModel):
    request_id: str
    variant: str
    model: str
    prompt_token_ids_len: int
    choices: list[Choice]
    usage: Usage
    timing: RequestTiming
    replica: ReplicaStats | None = None


class StreamChunk(BaseModel):
    """One step's progress of one output; the last chunk of a request has `finished=True` and `usage`
    (every chunk has the usage so far when the request asked for `continuous_usage`)."""

    request_id: str
    variant: str
    model: str
    index: int
    delta_text: str
    delta_token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[TokenLogprobOut] | None = None
    is_prompt: bool = False  # echo: this chunk carries the prompt (text and prompt logprobs), before any output
    finished: bool = False
    usage: Usage | None = None
    timing: RequestTiming | None = None
    replica: ReplicaStats | None = None
