"""Prefix caching in the real engine (tiny random Llama, float32): the same tokens with the cache as
without it — greedy, n > 1, beam search, prompt logprobs, chunked prefill, arrivals at different
steps, preemption and LRU eviction in a small pool — with hits counted and the pool whole after."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.outputs import RequestOutput
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole


def make_engine(model_dir: Path, cache: bool, **overrides: int) -> LLMEngine:
    settings = {"kv_cache_tokens": 1024, "block_size": 8, "max_num_batched_tokens": 32, "max_num_seqs": 8, **overrides}
    return LLMEngine(EngineConfig.model_validate(
        {"model": str(model_dir), "dtype": "float32", "enable_prefix_caching": cache, **settings}))


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> Iterator[tuple[LLMEngine, LLMEngine]]:
    cached, plain = make_engine(tiny_model_dir, True), make_engine(tiny_model_dir, False)
    yield cached, plain
    cached.shutdown()
    plain.shutdown()


def shared_prefix_prompts(vocab: int, num: int, prefix_len: int = 90, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    system = [rng.randrange(3, vocab) for _ in range(prefix_len)]
    return [system + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 12))] for _ in range(num)]


def run_staggered(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams],
                  arrive_steps: list[int]) -> list[RequestOutput]:
    """Submit prompt i at step arrive_steps[i]; run to the end; final outputs in prompt order."""
    ids: dict[int, str] = {}
    final: dict[str, RequestOutput] = {}
    step = 0
    while len(ids) < len(prompts) or engine.has_unfinished():
        for i, at in enumerate(arrive_steps):
            if at == step:
                ids[i] = engine.add_request(prompts[i], params[i])
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
        step += 1
        assert step < 2000, "the engine did not finish"
    assert_pool_whole(engine.block_manager)
    return [final[ids[i]] for i in range(len(prompts))]


def tokens(outs: list[RequestOutput]) -> list[list[list[int]]]:
    return [[list(c.token_ids) for c in out.outputs] for out in outs]


def test_greedy_outputs_are_the_same_with_the_cache_and_hits_are_counted(engines) -> None:  # type: ignore[no-untyped-def]
    cached, plain = engines
    prompts = shared_prefix_prompts(cached.info.vocab_size, 6)
    params = [SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)] * len(prompts)
    arrive = [0, 0, 3, 5, 9, 20]  # some mid-prefill of the first (chunks of 32), some after it finished
    before = cached.stats()
    with_cache = run_staggered(cached, prompts, params, arrive)
    assert tokens(with_cache) == tokens(run_staggered(plain, prompts, params, arrive))
    after = cached.stats()
    hits = after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens
    assert after.prefix_cache_queried_tokens - before.prefix_cache_queried_tokens == sum(map(len, prompts))
    assert hits >= 3 * 88  # the late arrivals reuse the 11 full blocks of the shared 90 tokens
    assert plain.stats().prefix_cache_hit_tokens == 0


def test_n_samples_beam_search_and_prompt_logprobs_are_the_same_with_the_cache(engines) -> None:  # type: ignore[no-untyped-def]
    cached, plain = engines
    prompts = shared_prefix_prompts(cached.info.vocab_size, 4, seed=1)
    params = [
        SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True),
        SamplingParams(n=3, max_tokens=10, temperature=0.8, seed=7, ignore_eos=True),
        SamplingParams(n=2, use_beam_search=True, max_tokens=8, temperature=0.0),
        SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=2, ignore_eos=True),
    ]
    arrive = [0, 6, 7, 8]
    with_cache = run_staggered(cached, prompts, params, arrive)
    without = run_staggered(plain, prompts, params, arrive)
    assert tokens(with_cache) == tokens(without)
    got, want = with_cache[3].prompt_logprobs, without[3].prompt_logprobs
    assert got is not None and want is not None and len(got) == len(want) == len(prompts[3])
    for a, b in zip(got[1:], want[1:], strict=True):
        assert a is not None and b is not None
        assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_lru_eviction_and_preemption_in_a_small_pool_keep_outputs_the_same(tiny_model_dir: Path) -> None:
    small = {"kv_cache_tokens": 160, "block_size": 8, "max_num_batched_tokens": 48, "max_num_seqs": 4}
    cached, plain = make_engine(tiny_model_dir, True, **small), make_engine(tiny_model_dir, False, **small)
    try:
        vocab = cached.info.vocab_size
        # four families of prompts: more prefixes than the pool holds, so cached blocks are evicted
        prompts = [p for seed in range(4) for p in shared_prefix_prompts(vocab, 3, prefix_len=40, seed=seed)]
        random.Random(3).shuffle(prompts)
        params = [SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)] * len(prompts)
        arrive = [2 * i for i in range(len(prompts))]
        assert tokens(run_staggered(cached, prompts, params, arrive)) == tokens(
            run_staggered(plain, prompts, params, arrive))
        stats = cached.stats()
        assert stats.prefix_cache_hit_tokens > 0 and cached.num_preemptions > 0
    finally:
        cached.shutdown()
        plain.shutdown()


def test_random_submit_and_abort_with_shared_prefixes_leaves_the_pool_whole(engines) -> None:  # type: ignore[no-untyped-def]
    cached, _ = engines
    rng = random.Random(5)
    prompts = shared_prefix_prompts(cached.info.vocab_size, 8, prefix_len=50, seed=5)
    live: list[str] = []
    for _ in range(150):
        if rng.random() < 0.4:
            params = SamplingParams(n=rng.choice([1, 1, 2]), max_tokens=rng.randint(1, 20),
                                    temperature=rng.choice([0.0, 1.0]), seed=rng.randint(0, 1000))
            live.append(cached.add_request(rng.choice(prompts), params))
        if live and rng.random() < 0.25:
            cached.abort(live.pop(rng.randrange(len(live))))
        for out in cached.step():
            if out.finished and out.request_id in live:
                live.remove(out.request_id)
        cached.block_manager.check_consistent()
    for rid in live:
        cached.abort(rid)
    while cached.has_unfinished():
        cached.step()
    assert_pool_whole(cached.block_manager)
