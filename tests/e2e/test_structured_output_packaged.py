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
