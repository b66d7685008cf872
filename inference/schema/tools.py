"""Tool calling: OpenAI's `tools` / `tool_choice` types, the tools prompt for chat templates that
cannot render tools, the grammar a request asks for, and the parser from output text to calls.

Calls are written, and constrained by the grammar, in the Hermes format (Qwen2.5/3, Hermes,
SmolLM3 and most open models' templates use it):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

`tool_choice` "required" and a named function force one call (or more, with
`parallel_tool_calls`) whose arguments match the function's schema; "auto" lets the model write
text, and a call it opens with `<tool_call>` is held to the same grammar; "none" renders no tools
and constrains nothing. `ToolCallParser` splits the output into content and calls, streamed (the
name first, then argument deltas, as OpenAI streams them) or whole; a call the output did not
finish (max_tokens) is never returned.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.schema.errors import InvalidRequestError
from inference.schema.guided import GuidedDecoding, check_json_schema

MAX_TOOLS = 128
MAX_SCHEMA_DEPTH = 32  # nesting of a tool's parameters schema: deeper ones only stress the parsers
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
# what the grammar writes between `<tool_call>` and the arguments; parsed loosely, in case a
# caller feeds text no grammar constrained
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_MAX_HEADER_CHARS = 256  # a function name is at most 64 characters: past this, it is not a call

FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionDefinition(_Strict):
    name: FunctionName
    description: str | None = Field(default=None, max_length=16_384)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="A JSON schema of the arguments (an object); calls always match it here.")
    strict: bool | None = Field(default=None, description="Accepted: arguments always follow the schema here.")


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str = ""


class ToolCallDelta(BaseModel):
    """One streamed piece of a call: the first has `id`, `type` and the name, the rest argument text."""

    index: int  # which call of this output
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def check_tools(tools: Sequence[Tool] | None, tool_choice: ToolChoice | None) -> None:
    """The request-level rules: unique names, object schemas, a tool_choice that names a given tool."""
    tools = tools or []
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"tools: at most {MAX_TOOLS} tools, got {len(tools)}", "tools")
    names = [t.function.name for t in tools]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidRequestError(f"tools: function names must be unique, repeated: {repeated}", "tools")
    for i, tool in enumerate(tools):
        param = f"tools[{i}].function.parameters"
        if _depth(tool.function.parameters) > MAX_SCHEMA_DEPTH:
            raise InvalidRequestError(f"{param}: nested more than {MAX_SCHEMA_DEPTH} levels deep", param)
        kind = tool.function.parameters.get("type", "object")
        if kind != "object":
            raise InvalidRequestError(f"{param}: the arguments must be an object (type 'object'), got type {kind!r}",
                                      param)
        check_json_schema(tool.function.parameters, param)
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise InvalidRequestError(
            f"tool_choice: no tool named {tool_choice.function.name!r}; tools: {names}", "tool_choice")
    if tool_choice == "required" and not tools:
        raise InvalidRequestError("tool_choice: 'required' needs tools", "tool_choice")


def tool_grammar(tools: Sequence[Tool] | None, tool_choice: ToolChoice | None,
                 parallel_tool_calls: bool) -> GuidedDecoding | None:
    """The grammar of a request's output (None: unconstrained). `tool_choice` None means "auto"."""
    choice = "auto" if tool_choice is None else tool_choice
    if not tools or choice == "none":
        return None
    spec = {
        "tools": [t.model_dump(exclude_none=True) for t in tools],
        "tool_choice": choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
        "parallel_tool_calls": parallel_tool_calls,
    }
    return GuidedDecoding("tool_calls", json.dumps(spec, sort_keys=True), "tools")


def tools_system_prompt(tools: Sequence[Tool]) -> str:
    """The generic description of the tools, for chat templates that do not render `tools` (the
    wording of Qwen2.5's template, which teaches the Hermes format)."""
    listed = "\n".join(json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        f"{CALL_OPEN}{CALL_CLOSE} XML tags:\n{CALL_OPEN}\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n' + CALL_CLOSE
    )


def render_call(call: ToolCall) -> str:
    """A call as the model writes it (for assistant messages in the history)."""
    arguments = json.loads(call.function.arguments or "{}")
    body = json.dumps({"name": call.function.name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


@dataclass
class _OpenCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass
class ParsedDelta:
    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)


class ToolCallParser:
    """Splits one output's text into content and calls, fed in pieces (`feed`) or whole.

    Text outside `<tool_call>` blocks is content; text that may still become `<tool_call>` is held
    back until it cannot. Inside a block the name is streamed once complete, then the arguments as
    they come (the end of the arguments object is found by scanning the JSON, so no string inside
    it can end the call early).
    """

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []  # the complete ones
        self._buf = ""
        self._state: Literal["text", "header", "arguments", "tail"] = "text"
        self._open: _OpenCall | None = None
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._args_done = False
        self._after_call = False

    def feed(self, text: str) -> ParsedDelta:
        self._buf += text
        out = ParsedDelta()
        while self._buf:
            if self._state == "text":
                if self._after_call:  # the separator after a call is no content
                    self._buf = self._buf.lstrip()
                    self._after_call = not self._buf
                    continue
                start = self._buf.find(CALL_OPEN)
                if start < 0:
                    keep = _partial_suffix(self._buf, CALL_OPEN)
                    out.content += self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep :]
                    break
                out.content += self._buf[:start]
                self._buf = self._buf[start + len(CALL_OPEN) :]
                self._state = "header"
            elif self._state == "header":
                match = _HEADER.match(self._buf)
                if match is None:
                    if len(self._buf) > _MAX_HEADER_CHARS:  # not a call after all
                        out.content += CALL_OPEN + self._buf
                        self._buf, self._state = "", "text"
                    break
                self._open = _OpenCall(new_call_id(), json.loads(f'"{match.group(1)}"'))
                self._buf = self._buf[match.end() :]
                self._state, self._depth, self._in_string, self._escaped = "arguments", 0, False, False
                self._args_done = False
                out.calls.append(ToolCallDelta(index=len(self.calls), id=self._open.id, type="function",
                                               function=FunctionCallDelta(name=self._open.name)))
            elif self._state == "arguments":
                if self._depth == 0:  # not begun: the whitespace before the object is the header's
                    self._buf = self._buf.lstrip()
                    if not self._buf:
                        break
                end = self._scan_arguments()
                piece = self._buf[:end]
                self._buf = self._buf[end:]
                assert self._open is not None
                if piece:
                    self._open.arguments.append(piece)
                    out.calls.append(ToolCallDelta(index=len(self.calls), function=FunctionCallDelta(arguments=piece)))
                if not self._args_done:
                    break
                self._state = "tail"
            else:  # "tail": the object's closing brace and </tool_call>
                close = self._buf.find(CALL_CLOSE)
                if close < 0:
                    break
                assert self._open is not None
                arguments = "".join(self._open.arguments)
                try:
                    json.loads(arguments)
                except json.JSONDecodeError:
                    pass  # never returned: only a grammar-free caller can get here
                else:
                    self.calls.append(ToolCall(id=self._open.id, function=FunctionCall(name=self._open.name,
                                                                                        arguments=arguments)))
                self._buf = self._buf[close + len(CALL_CLOSE) :]
                self._open, self._state, self._after_call = None, "text", True
        return out

    def finish(self) -> ParsedDelta:
        """The held-back text, once the output has ended (an unfinished call is dropped)."""
        out = ParsedDelta()
        if self._state == "text":
            out.content, self._buf = self._buf, ""
        return out

    def _scan_arguments(self) -> int:
        """How much of the buffer belongs to the arguments object (all of it, until it closes)."""
        for i, ch in enumerate(self._buf):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._args_done = True
                    return i + 1
        return len(self._buf)


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """A whole output: its content (outside calls) and its complete calls."""
    parser = ToolCallParser()
    content = parser.feed(text).content + parser.finish().content
    return content, parser.calls


def _depth(value: Any) -> int:
    """How deeply a JSON value nests (without recursion: the value may be deep on purpose)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_SCHEMA_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _partial_suffix(text: str, token: str) -> int:
    """The length of the longest suffix of `text` that is a proper prefix of `token`."""
    for n in range(min(len(text), len(token) - 1), 0, -1):
        if token.startswith(text[-n:]):
            return n
    return 0
