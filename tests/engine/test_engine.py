"""The real engine (DeepSpeed-wrapped model, paged KV pool, scheduler, sampler) on a tiny random Llama.

The reference is Hugging Face `generate` on the same weights. float32 everywhere, so the only
differences possible are algorithmic ones.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.errors import InvalidSamplingParamsError, RequestTooLongError
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole

PROMPTS = [
    "The quick brown fox",
    "What is the capital of France?",
    "Serving",
    "Tensor parallel inference splits each layer across several processes.",
    "0123456789 + - * /",
    "Héllo wörld, naïve café",
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog. " * 3,
    "emoji 🙂 and",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    # small pool and token budget, so prompts get chunked and blocks get reused
    eng = LLMEngine(
        EngineConfig(model=str(tiny_model_dir), dtype="float32", kv_cache_tokens=2048, block_size=8,
                     max_num_batched_tokens=32, max_num_seqs=8)
    )
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def hf_greedy(hf_model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    out = hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def test_greedy_single_request_equals_hf_generate(engine: LLMEngine, hf_model) -> None:
    ids = engine.encode(PROMPTS[3])
    [out] = engine.generate([ids], SamplingParams(max_tokens=24, temperature=0.0))
    assert out.outputs[0].token_ids == hf_greedy(hf_model, ids, 24)
    assert_pool_whole(engine.block_manager)


def test_greedy_mixed_requests_submitted_at_different_times_equal_hf(engine: LLMEngine, hf_model) -> None:
    lengths = [5, 17, 9, 30, 12, 21, 7, 26]
    expected, got = {}, {}
    pending = list(zip(PROMPTS, lengths, strict=True))
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % 3 == 0:  # a new request joins every third step, mid-decode of the others
            prompt, n = pending.pop(0)
            ids = engine.encode(prompt)
            rid = engine.add_request(ids, SamplingParams(max_tokens=n, temperature=0.0))
            expected[rid] = hf_greedy(hf_model, ids, n)
        for out in engine.step():
            if out.finished:
                got[out.request_id] = out.outputs[0].token_ids
        step += 1
    assert got == expected
    assert_pool_whole(engine.block_manager)


def test_max_tokens_respected_and_finish_reason_length(engine: LLMEngine) -> None:
    [out] = engine.generate(["Serving"], SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 7
    assert out.outputs[0].finish_reason == "length"
    assert out.metrics.num_output_tokens == 7


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    [alone] = engine.generate([PROMPTS[0]], params)
    crowd = engine.generate(
        [PROMPTS[1], PROMPTS[0], PROMPTS[2]],
        [SamplingParams(max_tokens=20, temperature=0.8), params, SamplingParams(max_tokens=5, temperature=1.0)],
    )
    assert crowd[1].outputs[0].token_ids == alone.outputs[0].token_ids
    [other_seed] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=16, temperature=1.0, seed=99))
    assert other_seed.outputs[0].token_ids != alone.outputs[0].token_ids


def test_stop_string_cuts_text_exactly(engine: LLMEngine) -> None:
    [free] = engine.generate([PROMPTS[1]], SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    text = free.outputs[0].text
    stop = text[5:8]
    assert len(stop) == 3 and stop.strip()
    cut = text[: text.index(stop)]
    [out] = engine.generate([PROMPTS[1]], SamplingParams(max_tokens=30, temperature=0.0, stop=[stop]))
    assert out.outputs[0].text == cut
    assert out.outputs[0].finish_reason == "stop"
    assert out.outputs[0].stop_reason == stop
    [kept] = engine.generate(
        [PROMPTS[1]], SamplingParams(max_tokens=30, temperature=0.0, stop=[stop], include_stop_str_in_output=True)
    )
    assert kept.outputs[0].text == cut + stop


def test_streamed_deltas_add_up_and_never_show_the_stop_string(engine: LLMEngine) -> None:
    [free] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    stop = free.outputs[0].text[10:14]
    rid = engine.add_request(PROMPTS[0], SamplingParams(max_tokens=30, temperature=0.0, stop=[stop]))
    deltas, final = [], None
    while engine.has_unfinished():
        for out in engine.step():
            deltas.append(out.outputs[0].delta_text)
            final = out
    assert final is not None and final.request_id == rid
    assert "".join(deltas) == final.outputs[0].text
    assert stop not in "".join(deltas)


def test_stop_token_ids_end_the_request(engine: LLMEngine) -> None:
    [free] = engine.generate([PROMPTS[2]], SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    token = free.outputs[0].token_ids[4]
    first = free.outputs[0].token_ids.index(token)
    [out] = engine.generate([PROMPTS[2]], SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[token]))
    assert out.outputs[0].token_ids == free.outputs[0].token_ids[: first + 1]
    assert out.outputs[0].stop_reason == token


def test_n_samples_share_the_prompt_and_differ(engine: LLMEngine) -> None:
    [out] = engine.generate([PROMPTS[0]], SamplingParams(n=4, max_tokens=12, temperature=1.0, seed=7, ignore_eos=True))
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 12 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert_pool_whole(engine.block_manager)


def test_beam_search_returns_n_beams_ordered_by_score(engine: LLMEngine, hf_model) -> None:
    ids = engine.encode(PROMPTS[0])
    [out] = engine.generate([ids], SamplingParams(n=3, use_beam_search=True, temperature=0.0, max_tokens=10, length_penalty=1.0))
    beams = out.outputs
    assert len(beams) == 3
    scores = [b.cumulative_logprob / len(b.token_ids) for b in beams]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(b.token_ids) for b in beams}) == 3
    # the best beam is at least as likely as greedy decoding (beam search explores a superset)
    greedy = hf_greedy(hf_model, ids, 10)
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids + greedy])).logits[0, len(ids) - 1 : -1]
    greedy_logprob = torch.log_softmax(logits, -1).gather(1, torch.tensor(greedy)[:, None]).sum().item()
    assert beams[0].cumulative_logprob >= greedy_logprob - 1e-4
    assert_pool_whole(engine.block_manager)


def test_logprobs_match_the_model_distribution(engine: LLMEngine, hf_model) -> None:
    ids = engine.encode(PROMPTS[2])
    [out] = engine.generate([ids], SamplingParams(max_tokens=3, temperature=0.0, logprobs=5))
    first = out.outputs[0].logprobs[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, -1], -1)
    assert first.token_id == int(ref.argmax())
    assert abs(first.logprob - float(ref.max())) < 1e-4
    assert len(first.top) == 5 and max(first.top.values()) == pytest.approx(float(ref.max()), abs=1e-4)


def test_random_submit_and_abort_never_leaks_kv(engine: LLMEngine) -> None:
    rng = random.Random(0)
    live: list[str] = []
    for step in range(120):
        if rng.random() < 0.4:
            prompt = rng.choice(PROMPTS)
            params = SamplingParams(
                n=rng.choice([1, 1, 2]), max_tokens=rng.randint(1, 40), temperature=rng.choice([0.0, 1.0]),
                seed=rng.randint(0, 1000),
            )
            live.append(engine.add_request(prompt, params))
        if live and rng.random() < 0.2:
            victim = live.pop(rng.randrange(len(live)))
            engine.abort(victim)
        for out in engine.step():
            if out.finished and out.request_id in live:
                live.remove(out.request_id)
        if step % 10 == 0:
            bm = engine.block_manager
            assert 0 <= bm.num_free_blocks <= bm.num_blocks
    for rid in live:
        engine.abort(rid)
    while engine.has_unfinished():
        engine.step()
    assert_pool_whole(engine.block_manager)
    assert not engine.scheduler.running and not engine.scheduler.waiting


def test_preemption_under_a_tiny_pool_still_gives_hf_tokens(tiny_model_dir: Path, hf_model) -> None:
    eng = LLMEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", kv_cache_tokens=96, block_size=8,
                                 max_num_batched_tokens=64, max_num_seqs=8))
    try:
        prompts = [eng.encode(p) for p in PROMPTS[:5]]
        outs = eng.generate(prompts, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))
        assert eng.num_preemptions > 0
        for ids, out in zip(prompts, outs, strict=True):
            assert out.outputs[0].token_ids == hf_greedy(hf_model, ids, 40)[: len(out.outputs[0].token_ids)]
            assert len(out.outputs[0].token_ids) == 40
        assert_pool_whole(eng.block_manager)
    finally:
        eng.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 3.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"stop": [""]}, "stop"),
        ({"presence_penalty": 5.0}, "presence_penalty"),
        ({"use_beam_search": True, "n": 1, "temperature": 0.0}, "n"),
        ({"use_beam_search": True, "n": 2, "temperature": 0.7}, "use_beam_search"),
    ],
)
def test_invalid_sampling_params_raise_a_typed_error_naming_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidSamplingParamsError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == param
    assert param in str(info.value)


def test_requests_that_can_never_fit_are_refused_up_front(engine: LLMEngine) -> None:
    with pytest.raises(RequestTooLongError) as info:
        engine.add_request([5] * (engine.max_model_len + 1), SamplingParams(max_tokens=1))
    assert info.value.param == "prompt"
    with pytest.raises(RequestTooLongError) as info:
        engine.add_request([5] * 10, SamplingParams(max_tokens=engine.max_model_len))
    assert info.value.param == "max_tokens"
    with pytest.raises(RequestTooLongError):
        engine.add_request([], SamplingParams(max_tokens=1))
    assert not engine.has_unfinished()
