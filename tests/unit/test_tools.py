"""Tool calling without a model: the request rules, the generic prompt, and the parser from output
text to calls (streamed in any split, it gives what the whole text gives)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from inference.schema.errors import InvalidRequestError
from inference.schema.requests import ChatMessage, GenerateRequest, template_messages
from inference.schema.tools import (
    NamedToolChoice,
    Tool,
    ToolCallParser,
    parse_tool_calls,
    tool_grammar,
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
OUTPUT = ('Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa}\\"ris</tool_call>", '
          '"n": [1, {"a": 2}]}}\n</tool_call>\n<tool_call>\n{"name": "noop", "arguments": {}}\n</tool_call> done <tool')


def request_error(**fields: object) -> InvalidRequestError:
    with pytest.raises(ValidationError) as raised:
        GenerateRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **fields})
    error = raised.value.errors()[0].get("ctx", {}).get("error")
    assert isinstance(error, InvalidRequestError), raised.value
    return error


def test_the_whole_output_splits_into_content_and_calls() -> None:
    content, calls = parse_tool_calls(OUTPUT)
    assert content == "Let me look. done <tool"  # the separator after a call is not content
    assert [c.function.name for c in calls] == ["get_weather", "noop"]
    assert json.loads(calls[0].function.arguments) == {"city": 'Pa}"ris</tool_call>', "n": [1, {"a": 2}]}
    assert calls[1].function.arguments == "{}"
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 8, 13])
def test_streamed_in_any_split_the_name_comes_first_then_the_arguments(piece: int) -> None:
    parser = ToolCallParser()
    content, names, arguments = "", {}, {}
    for start in range(0, len(OUTPUT), piece):
        delta = parser.feed(OUTPUT[start : start + piece])
        content += delta.content
        for call in delta.calls:
            if call.function.name is not None:
                assert call.index not in names and call.id is not None and call.function.arguments == ""
                names[call.index] = call.function.name
            else:
                assert call.index in names and call.id is None  # pieces after the first carry only arguments
            arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
    content += parser.finish().content
    whole_content, calls = parse_tool_calls(OUTPUT)
    assert content == whole_content
    assert [names[i] for i in sorted(names)] == [c.function.name for c in calls]
    assert [arguments[i] for i in sorted(arguments)] == [c.function.arguments for c in calls]


def test_an_unfinished_call_is_never_returned() -> None:
    content, calls = parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')
    assert calls == [] and content == ""


def test_text_that_only_looks_like_a_call_stays_content() -> None:
    text = "<tool_call> is the tag " + "x" * 300
    assert parse_tool_calls(text) == (text, [])


def test_tool_choice_must_name_a_given_tool() -> None:
    error = request_error(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert error.param == "tool_choice" and "get_time" in str(error)
    assert request_error(tool_choice="required").param == "tool_choice"


def test_tool_schemas_must_be_object_json_schemas_with_unique_names() -> None:
    bad = {**WEATHER, "function": {**WEATHER["function"], "parameters": {"type": "object", "properties": 3}}}
    assert request_error(tools=[bad]).param == "tools[0].function.parameters"
    scalar = {**WEATHER, "function": {**WEATHER["function"], "name": "echo", "parameters": {"type": "string"}}}
    assert request_error(tools=[WEATHER, scalar]).param == "tools[1].function.parameters"
    assert "unique" in str(request_error(tools=[WEATHER, WEATHER]))


def test_a_tool_message_must_answer_an_earlier_call() -> None:
    with pytest.raises(ValidationError) as raised:
        GenerateRequest(messages=[ChatMessage(role="user", content="hi"),
                                  ChatMessage(role="tool", content="18 C", tool_call_id="call_1")])
    error = raised.value.errors()[0]["ctx"]["error"]
    assert error.param == "messages[1].tool_call_id"
    with pytest.raises(ValidationError, match="tool_call_id"):
        ChatMessage(role="tool", content="18 C")  # a tool message without the call it answers


def test_tools_cannot_be_combined_with_another_grammar() -> None:
    from inference.schema.guided import GuidedDecoding
    from inference.schema.sampling import SamplingParams

    sampling = SamplingParams(guided=GuidedDecoding("regex", "a+", "guided_regex"))
    assert request_error(tools=[WEATHER], sampling=sampling).param == "tools"


def test_the_generic_prompt_describes_the_tools_and_writes_the_history_as_the_model_would() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Weather?"),
                ChatMessage(role="assistant", content="", tool_calls=[call]),
                ChatMessage(role="tool", content="18 C", tool_call_id="call_1")]
    tools = [Tool.model_validate(WEATHER)]
    rendered = template_messages(messages, tools, native_tools=False)
    assert rendered[0]["role"] == "system" and rendered[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in rendered[0]["content"] and "<tool_call>" in rendered[0]["content"]
    assert rendered[2] == {"role": "assistant",
                           "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    assert rendered[3] == {"role": "user", "content": "<tool_response>\n18 C\n</tool_response>"}
    native = template_messages(messages, tools, native_tools=True)
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # as HF templates take them
    assert native[3] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}


def test_only_offered_tools_constrain_the_output() -> None:
    tools = [Tool.model_validate(WEATHER)]
    assert tool_grammar(tools, "none", True) is None and tool_grammar(None, "auto", True) is None
    named = tool_grammar(tools, NamedToolChoice.model_validate({"type": "function", "function": {"name": "get_weather"}}),
                         False)
    assert named is not None and named.kind == "tool_calls" and named.param == "tools"
    assert json.loads(named.spec)["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_a_schema_nested_past_the_limit_is_refused_before_any_parser_recurses() -> None:
    from inference.schema.tools import MAX_SCHEMA_DEPTH

    schema: dict = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH):
        schema = {"type": "object", "properties": {"a": schema}}
    deep = {"type": "function", "function": {"name": "deep", "parameters": schema}}
    assert request_error(tools=[deep]).param == "tools[0].function.parameters"
