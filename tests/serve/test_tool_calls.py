"""Tool calling through the real router and replicas, with the official `openai` client.

The tiny random model cannot choose well, so the tests check what the grammar guarantees: a call
whose arguments parse and validate (`required`, a named function), streamed name first and then
argument deltas, text or a valid call (`auto`), a two-turn exchange, and 400s naming the field.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from openai import BadRequestError, OpenAI

from tests.serve.conftest import ServeApp

NESTED = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "options": {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}, "hourly": {"type": "boolean"}},
                    "required": ["unit", "hourly"], "additionalProperties": False},
        "fields": {"type": "array", "items": {"enum": ["temp", "wind", "rain"]}, "minItems": 1, "maxItems": 2},
    },
    "required": ["city", "days", "options", "fields"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "forecast", "description": "The weather forecast", "parameters": NESTED}},
    {"type": "function", "function": {"name": "local_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What will the weather be in Paris this week?"}]


@pytest.fixture(scope="module")
def client(serve_app: ServeApp) -> OpenAI:
    return OpenAI(base_url=f"{serve_app.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def check_call(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_a_required_call_on_a_nested_schema_parses_and_validates(client: OpenAI) -> None:
    response = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                              parallel_tool_calls=False, max_tokens=200, temperature=1.0, seed=3, n=2)
    for choice in response.choices:
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None and len(choice.message.tool_calls or []) == 1
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        check_call(call.function.name, call.function.arguments)
    # parallel calls (the default): as many as the model writes, every one of them valid
    parallel = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                              max_tokens=200, temperature=1.0, seed=4)
    calls = parallel.choices[0].message.tool_calls or []
    assert calls and len({c.id for c in calls}) == len(calls)
    for call in calls:
        check_call(call.function.name, call.function.arguments)


def test_a_named_call_streams_its_name_first_then_argument_deltas(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=200, temperature=1.0,
                                            seed=5, stream=True,
                                            tool_choice={"type": "function", "function": {"name": "forecast"}})
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            pieces += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
            assert not choice.delta.content
    assert finish == "tool_calls"
    first, rest = pieces[0], pieces[1:]
    assert first.id and first.function.name == "forecast" and first.type == "function"
    assert rest and all(p.id is None and p.function.name is None and p.index == 0 for p in rest)
    check_call("forecast", "".join(p.function.arguments or "" for p in pieces))


def test_auto_answers_text_or_a_call_that_validates(client: OpenAI) -> None:
    response = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="auto",
                                              max_tokens=40, temperature=1.0, seed=11, n=4)
    for choice in response.choices:
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                check_call(call.function.name, call.function.arguments)
        else:  # text, or a call max_tokens cut short: never returned half-made
            assert choice.finish_reason in ("stop", "length") and choice.message.content is not None


def test_a_two_turn_exchange_answers_the_tool_result(client: OpenAI) -> None:
    first = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=200, temperature=0.0)
    calls = first.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1  # parallel_tool_calls false: one call
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp_c": 18}'}]
    second = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, tool_choice="none",
                                            max_tokens=8, temperature=0.0, extra_body={"ignore_eos": True})
    reply = second.choices[0]
    assert reply.message.tool_calls is None and reply.message.content and reply.finish_reason == "length"
    alone = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=1)
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 20  # the call and its result are in the prompt


@pytest.mark.parametrize(("change", "param"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nowhere"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}], "tool_choice": "required"}, "tools"),
    ({"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "18"}]}, "messages[1].tool_call_id"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
])
def test_bad_tool_requests_get_a_400_naming_the_field(serve_app: ServeApp, change: dict, param: str) -> None:
    body = {"model": "tiny", "messages": ASK, "tools": TOOLS, "max_tokens": 4, **change}
    response = httpx.post(f"{serve_app.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_the_openai_client_raises_on_a_bad_tool_choice(client: OpenAI) -> None:
    with pytest.raises(BadRequestError, match="nowhere"):
        client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=4,
                                       tool_choice={"type": "function", "function": {"name": "nowhere"}})


def test_langchain_bind_tools_gets_calls_it_can_run_and_answers_their_results(serve_app: ServeApp) -> None:
    """What an agent framework does: `ChatOpenAI.bind_tools`, run the call, send its result back."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="tiny", base_url=f"{serve_app.base_url}/v1", api_key="unused", max_retries=0, timeout=120,
                     temperature=0.0, max_tokens=200)
    asked = HumanMessage(ASK[0]["content"])
    called = llm.bind_tools(TOOLS, tool_choice="forecast").invoke([asked])
    assert called.tool_calls and called.tool_calls[0]["name"] == "forecast"
    jsonschema.validate(called.tool_calls[0]["args"], NESTED)  # LangChain parsed the arguments itself
    result = ToolMessage(content='{"temp_c": 18}', tool_call_id=called.tool_calls[0]["id"])
    reply = llm.bind_tools(TOOLS).invoke([asked, called, result], max_tokens=8)
    assert reply.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    for call in reply.tool_calls:  # auto: text or calls, and a call always validates
        jsonschema.validate(call["args"], SCHEMAS[call["name"]])
