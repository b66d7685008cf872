"""The packaged SmolLM2-135M-Instruct through the real engine and its chat template."""

from __future__ import annotations

import pytest

from inference.config import EngineConfig
from inference.llm_engine import LLMEngine
from inference.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def smollm2() -> LLMEngine:
    engine = LLMEngine(EngineConfig(model="packaged:smollm2-135m-instruct", kv_cache_tokens=4096))
    yield engine
    engine.shutdown()


def test_capital_of_france_is_paris(smollm2: LLMEngine) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    [out] = smollm2.generate([prompt], SamplingParams(max_tokens=32, temperature=0.0))
    assert "Paris" in out.outputs[0].text
    assert out.outputs[0].finish_reason == "stop"  # it ends with <|im_end|> on its own


def test_streamed_text_is_valid_utf8_and_adds_up(smollm2: LLMEngine) -> None:
    messages = [{"role": "user", "content": "Write the word 'café' and a smiley emoji."}]
    prompt = smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    rid = smollm2.add_request(prompt, SamplingParams(max_tokens=40, temperature=0.0))
    deltas = []
    final = None
    while smollm2.has_unfinished():
        for out in smollm2.step():
            assert out.request_id == rid
            deltas.append(out.outputs[0].delta_text)
            final = out
    assert final is not None
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == final.outputs[0].text
