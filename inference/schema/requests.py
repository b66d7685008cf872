"""The handle API: typed requests and responses between the router, the replicas and other services.

Other Ray Serve applications call the router's handle with these types:

    from inference.schema.requests import GenerateRequest
    from inference.schema.sampling import SamplingParams
    handle = serve.get_app_handle("sloserve")
    response = await handle.generate.remote(GenerateRequest(prompt="Hello", sampling=SamplingParams(max_tokens=16)))
    async for chunk in handle.options(stream=True).stream.remote(GenerateRequest(messages=[...])):
        print(chunk.delta_text, end="")

Pure pydantic and dataclasses (no Ray, no torch), so callers import it without the serving stack.
`GenerateRequest.sampling` is the engine's own `SamplingParams` (`inference/schema/sampling.py`):
its fields, bounds and defaults, checked when the request is built.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inference.schema.errors import InvalidRequestError
from inference.schema.sampling import MAX_TOKEN_ID, SamplingParams
from inference.schema.tools import (
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    check_tools,
    render_call,
    tools_system_prompt,
)

TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]

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
    content: str = ""
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant's calls (assistant only).")
    tool_call_id: str | None = Field(default=None, description="The call a `tool` message answers (tool only).")

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls: only an assistant message has them (role {self.role!r})")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("tool_call_id: a tool message needs one, and only a tool message has one")
        return self


def check_tool_history(messages: list[ChatMessage]) -> None:
    """Every `tool` message answers a call an earlier assistant message made, with arguments that parse."""
    called: set[str] = set()
    for i, message in enumerate(messages):
        for j, call in enumerate(message.tool_calls or []):
            param = f"messages[{i}].tool_calls[{j}].function.arguments"
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError as e:
                raise InvalidRequestError(f"{param}: not valid JSON: {e}", param) from e
            if not isinstance(arguments, dict):
                raise InvalidRequestError(f"{param}: must be a JSON object", param)
            called.add(call.id)
        if message.role == "tool" and message.tool_call_id not in called:
            raise InvalidRequestError(
                f"messages[{i}].tool_call_id: {message.tool_call_id!r} answers no earlier assistant tool call",
                f"messages[{i}].tool_call_id")


def template_messages(messages: list[ChatMessage], tools: list[Tool] | None,
                      native_tools: bool) -> list[dict[str, Any]]:
    """The messages as a chat template takes them.

    `native_tools`: the template renders tools and calls itself (Hugging Face's shapes: a call's
    arguments as an object). Otherwise the tools are described in the system message
    (`tools_system_prompt`), an assistant's calls are written into its text as the model writes
    them, and a tool's answer is a user message in <tool_response> tags (as Qwen's template does).
    """
    if native_tools:
        rendered = []
        for m in messages:
            message: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments or "{}")}}
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                message["tool_call_id"] = m.tool_call_id
            rendered.append(message)
        return rendered
    rendered = []
    for m in messages:
        if m.role == "tool":
            rendered.append({"role": "user", "content": f"{RESPONSE_OPEN}\n{m.content}\n{RESPONSE_CLOSE}"})
        elif m.tool_calls:
            text = "\n".join([*([m.content] if m.content else []), *(render_call(c) for c in m.tool_calls)])
            rendered.append({"role": m.role, "content": text})
        else:
            rendered.append({"role": m.role, "content": m.content})
    if tools:
        prompt = tools_system_prompt(tools)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {"role": "system", "content": f"{rendered[0]['content']}\n\n{prompt}"}
        else:
            rendered.insert(0, {"role": "system", "content": prompt})
    return rendered


class GenerateRequest(BaseModel):
    """One generation: a prompt (text or token ids) or chat messages (the model's template is applied)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[TokenId] | None = None
    messages: list[ChatMessage] | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    request_id: str = Field(default_factory=lambda: f"req-{uuid.uuid4().hex}")
    variant: str | None = Field(default=None, description="Serve from this variant (default: router's choice).")
    slo_class: str | None = Field(default=None, description="SLO class (default: the config's default).")
    session_id: str | None = Field(default=None, description="Requests of one session go to one replica.")
    affinity_key: str | None = Field(default=None, description="Set by the router: replica affinity key.")
    timeout_s: float | None = Field(default=None, gt=0.0, description="Abort after this long (504 over HTTP).")
    echo: bool = Field(default=False, description="Return the prompt text (and its logprobs, if asked) with each output.")
    continuous_usage: bool = Field(
        default=False, description="stream(): every chunk carries the usage so far (vLLM's continuous_usage_stats).")
    tools: list[Tool] | None = Field(default=None, description="Functions the model may call (chat only).")
    tool_choice: ToolChoice | None = Field(default=None, description="none, auto (the default), required, or a named function.")
    parallel_tool_calls: bool = Field(default=True, description="More than one call in one answer.")

    _message_count = field_validator("messages", mode="before")(check_message_count)

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        if isinstance(self.prompt, str) and not self.prompt:
            raise ValueError("prompt must not be empty")
        if self.tools is not None or self.tool_choice is not None:
            if self.messages is None:
                raise InvalidRequestError("tools: only chat requests (messages) take tools", "tools")
            check_tools(self.tools, self.tool_choice)
            if self.calls_tools and self.sampling.guided is not None:
                raise InvalidRequestError(
                    f"tools: a request with tools cannot also constrain its output ({self.sampling.guided.param})",
                    "tools")
            if self.calls_tools and self.sampling.use_beam_search:
                raise InvalidRequestError("tools: beam search does not support tool calls (their grammar)", "tools")
        if self.messages is not None:
            check_tool_history(self.messages)
        return self

    @property
    def calls_tools(self) -> bool:
        """Whether the model is offered tools: given, and tool_choice is not "none"."""
        return bool(self.tools) and self.tool_choice != "none"


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
    tool_calls: list[ToolCall] | None = None  # with tools: the calls, `text` is the content beside them


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
    tool_calls: list[ToolCallDelta] | None = None  # with tools: the calls' pieces, as OpenAI streams them
    is_prompt: bool = False  # echo: this chunk carries the prompt (text and prompt logprobs), before any output
    finished: bool = False
    usage: Usage | None = None
    timing: RequestTiming | None = None
    replica: ReplicaStats | None = None
