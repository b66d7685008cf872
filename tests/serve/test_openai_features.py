"""The OpenAI API as real clients use it, with the official `openai` client against the real router.

Batched prompts with n (unary and streamed), echo + logprobs + max_tokens 0 as evaluation
harnesses send it (values checked against a transformers forward), chat logprobs, structured
output (json_schema, guided_choice, guided_regex), logit_bias, seeds, and unknown fields refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import jsonschema
import pytest
import torch
from openai import OpenAI

from tests.serve.conftest import ServeApp


@pytest.fixture(scope="module")
def client(serve_app: ServeApp) -> OpenAI:
    return OpenAI(base_url=f"{serve_app.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(serve_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(serve_model_dir)


@pytest.fixture(scope="module")
def hf_model(serve_model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(serve_model_dir, dtype=torch.float32).eval()


def test_batched_prompts_with_n_are_indexed_as_openai_does_and_seeds_ignore_batch_mates(client: OpenAI, tokenizer) -> None:
    kwargs = dict(model="tiny:full", n=2, max_tokens=5, temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    batch = client.completions.create(prompt=["The quick brown", "Serving", "The quick brown"], **kwargs)
    assert [c.index for c in batch.choices] == list(range(6))
    texts = [c.text for c in batch.choices]
    assert texts[0:2] == texts[4:6]  # the same prompt and seed give the same samples, whatever shares the batch
    alone = client.completions.create(prompt="The quick brown", **kwargs)
    assert [c.text for c in alone.choices] == texts[0:2]
    assert batch.usage.completion_tokens == 30
    assert batch.usage.prompt_tokens == 2 * alone.usage.prompt_tokens + len(tokenizer.encode("Serving"))
    stream = client.completions.create(prompt=["The quick brown", "Serving", "The quick brown"], stream=True,
                                       stream_options={"include_usage": True}, **kwargs)
    streamed: dict[int, str] = {}
    chunks = list(stream)
    for chunk in chunks:
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert [streamed[i] for i in range(6)] == texts
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == batch.usage.total_tokens


def test_echo_logprobs_max_tokens_0_score_prompts_like_an_eval_harness(client: OpenAI, tokenizer, hf_model) -> None:
    contexts = ["The capital of France is", "Tensor parallel inference splits"]
    prompts = [tokenizer.encode(c + " Paris.") for c in contexts]
    response = client.completions.create(model="tiny", prompt=prompts, max_tokens=0, echo=True, logprobs=1,
                                         temperature=0, seed=1234)
    assert len(response.choices) == 2 and response.usage.completion_tokens == 0
    for ids, choice in zip(prompts, response.choices, strict=True):
        assert choice.text == tokenizer.decode(ids)
        lp = choice.logprobs
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert len(lp.tokens) == len(ids) and lp.text_offset[0] == 0
        with torch.no_grad():
            ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0], -1)
        expected = [float(ref[p - 1, ids[p]]) for p in range(1, len(ids))]
        assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], expected, strict=True)) < 1e-3
        assert all(len(t) == 1 for t in lp.top_logprobs[1:])
    # echo with generation: the prompt, then the output, logprobs for both
    more = client.completions.create(model="tiny", prompt=contexts[0], max_tokens=3, echo=True, logprobs=2,
                                     temperature=0, extra_body={"ignore_eos": True})
    c = more.choices[0]
    assert c.text.startswith(contexts[0]) and len(c.logprobs.tokens) == more.usage.prompt_tokens + 3
    assert c.logprobs.text_offset == sorted(c.logprobs.text_offset)
    streamed = list(client.completions.create(model="tiny", prompt=contexts[0], max_tokens=3, echo=True, logprobs=2,
                                              temperature=0, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(s.choices[0].text for s in streamed if s.choices) == c.text
    assert [t for s in streamed if s.choices and s.choices[0].logprobs for t in s.choices[0].logprobs.tokens] == c.logprobs.tokens


def test_chat_logprobs_streamed_and_not_agree_with_the_model(client: OpenAI, tokenizer, hf_model) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    kwargs = dict(model="tiny:full", messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
                  extra_body={"ignore_eos": True})
    unary = client.chat.completions.create(**kwargs)
    content = unary.choices[0].logprobs.content
    assert len(content) == 6 and all(len(t.top_logprobs) == 2 for t in content)
    streamed = [t for chunk in client.chat.completions.create(stream=True, **kwargs) if chunk.choices
                for t in (chunk.choices[0].logprobs.content if chunk.choices[0].logprobs else [])]
    assert [(t.token, round(t.logprob, 5)) for t in streamed] == [(t.token, round(t.logprob, 5)) for t in content]
    ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, -1], -1)
    assert abs(content[0].logprob - float(ref.max())) < 1e-3


def test_json_schema_response_format_output_parses_and_validates(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "sunny": {"type": "boolean"},
                       "size": {"type": "string", "enum": ["small", "large"]}},
        "required": ["city", "sunny", "size"],
    }
    for seed in (1, 2):
        response = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Describe a city as JSON."}], max_tokens=80,
            temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        )
        assert response.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(response.choices[0].message.content), schema)
    obj = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "JSON"}], max_tokens=80,
                                         temperature=0, response_format={"type": "json_object"})
    assert obj.choices[0].finish_reason in ("stop", "length")


def test_guided_choice_and_regex_on_completions(client: OpenAI) -> None:
    choices = ["Paris", "Lyon", "Nice"]
    picked = client.completions.create(model="tiny", prompt="The best city:", max_tokens=10, temperature=1.0, n=3,
                                       seed=3, extra_body={"guided_choice": choices})
    assert all(c.text in choices for c in picked.choices)
    regex = client.completions.create(model="tiny", prompt="Phone:", max_tokens=20, temperature=1.0, seed=3,
                                      extra_body={"guided_regex": r"\d{3}-\d{4}"}, stream=True)
    assert re.fullmatch(r"\d{3}-\d{4}", "".join(c.choices[0].text for c in regex if c.choices))


def test_a_huge_logit_bias_forces_a_token(client: OpenAI, tokenizer) -> None:
    token = tokenizer.encode(" fox")[-1]
    response = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=1.0,
                                         logit_bias={str(token): 100}, extra_body={"ignore_eos": True})
    assert response.choices[0].text == tokenizer.decode([token]) * 4


@pytest.mark.parametrize(("body", "param"), [
    ({"best_of": 3}, "best_of"),
    ({"suffix": "!"}, "suffix"),
    ({"stream_options": {"include_usage": True, "continuous": True}}, "stream_options.continuous"),
    ({"logit_bias": {"99999": 5}}, "logit_bias"),
    ({"guided_json": {"type": "nonsense"}}, "guided_json"),
    ({"guided_regex": "a(b"}, "guided_regex"),
    ({"use_beam_search": True, "n": 2, "temperature": 0, "guided_choice": ["a", "b"]}, "use_beam_search"),
])
def test_unimplemented_fields_and_bad_grammars_get_400_naming_the_field(serve_app: ServeApp, body, param: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{serve_app.base_url}/v1/completions", json={"model": "tiny", "prompt": "hi", **body}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and param.split(".")[-1] in error["message"], error


def test_a_bad_json_schema_in_response_format_is_a_400_naming_it(serve_app: ServeApp) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": 3}}}
    r = httpx.post(f"{serve_app.base_url}/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "response_format": fmt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema.schema", r.text
