"""Structured output and prompt logprobs on the packaged SmolLM2-135M-Instruct, through its chat template."""

from __future__ import annotations

import json

import jsonschema
import pytest

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.guided import GuidedDecoding
from inference.schema.sampling import SamplingParams

SCHEMAS = [
    {
        "type": "object",
        "properties": {"country": {"type": "string"}, "capital": {"type": "string"},
                       "population_millions": {"type": "number"}},
        "required": ["country", "capital", "population_millions"],
    },
    {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "reasons": {
            "type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}},
        "required": ["answer", "reasons"],
    },
]


@pytest.fixture(scope="module")
def smollm2() -> LLMEngine:
    engine = LLMEngine(EngineConfig(model="packaged:smollm2-135m-instruct", kv_cache_tokens=4096))
    yield engine
    engine.shutdown()


def chat(engine: LLMEngine, text: str) -> str:
    return str(engine.tokenizer.apply_chat_template([{"role": "user", "content": text}],  # type: ignore[attr-defined]
                                                    add_generation_prompt=True, tokenize=False))


def test_json_schema_answers_parse_and_validate(smollm2: LLMEngine) -> None:
    prompts = [chat(smollm2, "Give the country, capital and population of France as JSON."),
               chat(smollm2, "Is Paris in France? Answer as JSON with reasons.")]
    outs = smollm2.generate(prompts, [
        SamplingParams(max_tokens=120, temperature=0.0, guided=GuidedDecoding("json", json.dumps(s))) for s in SCHEMAS
    ])
    for out, schema in zip(outs, SCHEMAS, strict=True):
        assert out.outputs[0].finish_reason == "stop", out.outputs[0].text
        jsonschema.validate(json.loads(out.outputs[0].text), schema)
    assert "Paris" in json.loads(outs[0].outputs[0].text)["capital"]


def test_prompt_logprobs_rank_the_right_continuation_higher(smollm2: LLMEngine) -> None:
    """What an evaluation harness does: score two continuations by their prompt logprobs."""
    context = "The capital of France is"
    scores = {}
    for answer in (" Paris", " Berlin"):
        ids = smollm2.encode(context + answer)
        [out] = smollm2.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=0))
        n = len(ids) - len(smollm2.encode(context))
        assert out.prompt_logprobs is not None and out.prompt_logprobs[0] is None
        scores[answer] = sum(lp.logprob for lp in out.prompt_logprobs[-n:] if lp is not None)
    assert scores[" Paris"] > scores[" Berlin"]


def test_a_required_tool_call_names_the_tool_and_fills_its_schema(smollm2: LLMEngine) -> None:
    """The generic tools prompt (SmolLM2's template renders no tools) and the call grammar, end to end."""
    from inference.schema.requests import ChatMessage, template_messages
    from inference.schema.tools import Tool, parse_tool_calls, tool_grammar

    weather = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"]}
    tools = [Tool.model_validate({"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city", "parameters": weather}})]
    asked = [ChatMessage(role="user", content="What's the weather like in Paris today?")]
    ids = smollm2.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        template_messages(asked, tools, native_tools=False), add_generation_prompt=True, tokenize=True, return_dict=False)
    outs = smollm2.generate([list(ids)] * 2, [
        SamplingParams(max_tokens=100, temperature=0.0, guided=tool_grammar(tools, choice, parallel))
        for choice, parallel in (("required", False), ("auto", True))
    ])
    content, calls = parse_tool_calls(outs[0].outputs[0].text)
    assert outs[0].outputs[0].finish_reason == "stop" and content == "" and len(calls) == 1
    assert calls[0].function.name == "get_weather"
    arguments = json.loads(calls[0].function.arguments)
    jsonschema.validate(arguments, weather)
    assert arguments["city"] == "Paris"
    _, auto_calls = parse_tool_calls(outs[1].outputs[0].text)  # text or calls: whichever, they validate
    for call in auto_calls:
        jsonschema.validate(json.loads(call.function.arguments), weather)
