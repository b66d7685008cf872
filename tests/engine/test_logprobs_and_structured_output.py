"""Logprobs, prompt logprobs, logit_bias and grammar-constrained decoding in the real engine.

Tiny random Llama in float32; the reference for every logprob is a plain transformers forward
over the same weights (agreement to 1e-3). The token budget is small, so prompts are prefilled
in several chunks and prompt logprobs arrive chunk by chunk.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.errors import InvalidRequestError, InvalidSamplingParamsError
from inference.schema.guided import GuidedDecoding
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole

LONG_PROMPT = "The capital of France is Paris. The quick brown fox jumps over the lazy dog. 0123456789 " * 2
SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "size": {"type": "string", "enum": ["small", "large"]},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        },
        "required": ["name", "size", "tags"],
    },
    {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 1, "maxItems": 4},
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    eng = LLMEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", kv_cache_tokens=2048, block_size=8,
                                 max_num_batched_tokens=16, max_num_seqs=8))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def hf_logprobs(hf_model, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab]: row p is the distribution of token p + 1."""
    with torch.no_grad():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), -1)


def test_sampled_logprobs_equal_a_transformers_forward(engine: LLMEngine, hf_model) -> None:
    ids = engine.encode("Serving large language models")
    outs = engine.generate([ids, ids], [SamplingParams(max_tokens=8, temperature=0.0, logprobs=3, ignore_eos=True),
                                        SamplingParams(max_tokens=8, temperature=1.0, seed=3, logprobs=0, ignore_eos=True)])
    for out in outs:
        c = out.outputs[0]
        ref = hf_logprobs(hf_model, ids + c.token_ids)[len(ids) - 1 : -1]
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) == 8
        for row, (token, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
            assert lp.token_id == token
            assert abs(lp.logprob - float(ref[row, token])) < 1e-3
            top_ref = torch.topk(ref[row], len(lp.top))
            assert list(lp.top) == top_ref.indices.tolist()
            assert max(abs(a - b) for a, b in zip(lp.top.values(), top_ref.values.tolist(), strict=True)) < 1e-3 if lp.top else True


def test_prompt_logprobs_arrive_per_chunk_and_equal_a_transformers_forward(engine: LLMEngine, hf_model) -> None:
    ids = engine.encode(LONG_PROMPT)
    assert len(ids) > 2 * engine.config.max_num_batched_tokens  # several prefill chunks
    mate = engine.encode("Tensor parallel inference")
    outs = engine.generate([mate, ids, ids], [
        SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=0, prompt_logprobs=2),
        SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=0, logprobs=1, ignore_eos=True),
    ])
    ref = hf_logprobs(hf_model, ids)
    for out in outs[1:]:
        prompt_lps = out.prompt_logprobs
        assert prompt_lps is not None and len(prompt_lps) == len(ids) and prompt_lps[0] is None
        for p, lp in enumerate(prompt_lps[1:], start=1):
            assert lp is not None and lp.token_id == ids[p]
            assert abs(lp.logprob - float(ref[p - 1, ids[p]])) < 1e-3
    assert [len(lp.top) for lp in outs[1].prompt_logprobs[1:]] == [2] * (len(ids) - 1)
    assert list(outs[1].prompt_logprobs[1].top) == torch.topk(ref[0], 2).indices.tolist()
    # max_tokens 0: the prompt only, no generated token
    assert outs[1].outputs[0].token_ids == [] and outs[1].outputs[0].finish_reason == "length"
    assert len(outs[2].outputs[0].token_ids) == 3
    # the batch mate that asked for nothing is unchanged: greedy equals transformers
    greedy = hf_model.generate(torch.tensor([mate]), max_new_tokens=10, do_sample=False)[0, len(mate):].tolist()
    assert outs[0].outputs[0].token_ids == greedy
    assert outs[0].prompt_logprobs is None
    assert_pool_whole(engine.block_manager)


def test_a_huge_logit_bias_forces_a_token_and_ids_are_checked(engine: LLMEngine) -> None:
    forced = engine.encode(" fox")[-1]
    [out] = engine.generate(["Hello"], SamplingParams(max_tokens=4, temperature=1.0, seed=1, ignore_eos=True,
                                                       logit_bias={forced: 100.0}))
    assert out.outputs[0].token_ids == [forced] * 4
    with pytest.raises(InvalidRequestError) as info:  # checked against this model's vocabulary
        engine.add_request("Hello", SamplingParams(max_tokens=2, logit_bias={engine.info.vocab_size + 5: 1.0}))
    assert info.value.param == "logit_bias"
    with pytest.raises(InvalidSamplingParamsError):
        SamplingParams(logit_bias={3: 500.0})


@pytest.mark.parametrize("schema", SCHEMAS, ids=["boolean", "object", "array"])
def test_json_schema_output_parses_and_validates_and_batch_mates_are_unaffected(
    engine: LLMEngine, hf_model, schema: dict
) -> None:
    guided = GuidedDecoding("json", json.dumps(schema))
    mate = engine.encode("The quick brown fox")
    outs = engine.generate(["Give me JSON:", "Give me JSON:", mate], [
        SamplingParams(max_tokens=60, temperature=0.0, guided=guided),
        SamplingParams(max_tokens=60, temperature=1.0, seed=5, guided=guided, logprobs=1),
        SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True),
    ])
    for out in outs[:2]:
        c = out.outputs[0]
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), schema)
    greedy = hf_model.generate(torch.tensor([mate]), max_new_tokens=8, do_sample=False)[0, len(mate):].tolist()
    assert outs[2].outputs[0].token_ids == greedy


def test_regex_and_choice_constrain_the_output(engine: LLMEngine) -> None:
    choices = ["Paris", "London", "café 🙂"]
    outs = engine.generate(["Pick:"] * 3, [
        SamplingParams(max_tokens=20, temperature=1.0, seed=2, guided=GuidedDecoding("regex", r"[0-9]{3}-[a-c]{2}", "guided_regex")),
        SamplingParams(max_tokens=20, temperature=1.0, seed=2, guided=GuidedDecoding("choice", json.dumps(choices), "guided_choice")),
        SamplingParams(n=3, max_tokens=20, temperature=1.0, seed=4, guided=GuidedDecoding("choice", json.dumps(choices), "guided_choice")),
    ])
    assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", outs[0].outputs[0].text)
    assert outs[1].outputs[0].text in choices
    assert len(outs[2].outputs) == 3 and all(c.text in choices for c in outs[2].outputs)


def test_seeded_structured_sampling_is_reproducible_whatever_shares_the_batch(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=60, temperature=1.0, seed=11, guided=GuidedDecoding("json", json.dumps(SCHEMAS[1])))
    [alone] = engine.generate(["JSON please"], params)
    crowd = engine.generate(["Other", "JSON please", LONG_PROMPT], [
        SamplingParams(max_tokens=12, temperature=0.9), params, SamplingParams(max_tokens=0, prompt_logprobs=1),
    ])
    assert crowd[1].outputs[0].token_ids == alone.outputs[0].token_ids


def test_bad_grammars_and_beam_search_with_a_grammar_are_refused(engine: LLMEngine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request("x", SamplingParams(guided=GuidedDecoding("json", '{"type": "nonsense"}', "response_format.json_schema.schema")))
    assert info.value.param == "response_format.json_schema.schema"
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request("x", SamplingParams(guided=GuidedDecoding("regex", "a(b", "guided_regex")))
    assert info.value.param == "guided_regex"
    with pytest.raises(InvalidSamplingParamsError) as bad:
        SamplingParams(n=2, use_beam_search=True, temperature=0.0, guided=GuidedDecoding("regex", "a+"))
    assert bad.value.param == "use_beam_search"
    assert not engine.has_unfinished()
