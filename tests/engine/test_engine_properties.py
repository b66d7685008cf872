"""Property-based tests of the real engine (hypothesis): random sampling parameters, stop strings and
stop token ids, n > 1, beam search, logit bias, staggered arrivals and aborts, prompts sharing
prefixes (prefix cache hits and evictions). Whatever the mix, every request ends (finished or
aborted, never an error), bounds hold, the KV pool is consistent at every step and whole after.
Derandomized, so CI runs the same cases every time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole

SHARED = "The quick brown fox jumps over the lazy dog. What is the capital of France? "  # prefix cache hits
PROMPTS = ["The quick brown fox", "Serving", "0123456789 + - *", "Héllo wörld 🙂", "What is the capital of France?",
           SHARED + "Paris", SHARED * 2 + "Serving", SHARED]
STOPS = ["e", "the", " ", "o w", "🙂", "\n"]
MAX_STEPS = 400


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    # a small pool, so preemption and forking under pressure are exercised too
    eng = LLMEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", kv_cache_tokens=256, block_size=8,
                                 max_num_batched_tokens=32, max_num_seqs=6))
    yield eng
    eng.shutdown()


@st.composite
def sampling_params(draw: st.DrawFn, vocab_size: int) -> SamplingParams:
    max_tokens = draw(st.integers(1, 8))
    token = st.integers(0, vocab_size - 1)
    common = dict(
        max_tokens=max_tokens,
        min_tokens=draw(st.integers(0, max_tokens)),
        stop=draw(st.lists(st.sampled_from(STOPS), max_size=3, unique=True)),
        stop_token_ids=draw(st.lists(token, max_size=4)),
        ignore_eos=draw(st.booleans()),
        logit_bias=draw(st.dictionaries(token, st.floats(-100, 100), max_size=3)),
    )
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter of requests: beam search
        return SamplingParams(use_beam_search=True, n=draw(st.integers(2, 3)), temperature=0.0,
                              length_penalty=draw(st.floats(-2, 2)), **common)
    return SamplingParams(
        n=draw(st.integers(1, 3)),
        temperature=draw(st.one_of(st.just(0.0), st.floats(0.1, 2.0))),
        top_p=draw(st.floats(0.05, 1.0)),
        top_k=draw(st.integers(-1, 40)),
        seed=draw(st.one_of(st.none(), st.integers(0, 2**32))),
        logprobs=draw(st.one_of(st.none(), st.integers(0, 3))),
        presence_penalty=draw(st.floats(-2, 2)),
        frequency_penalty=draw(st.floats(-2, 2)),
        include_stop_str_in_output=draw(st.booleans()),
        **common,
    )


@dataclass
class Submission:
    prompt: str | list[int]
    params: SamplingParams
    arrive_step: int
    abort_step: int | None


@st.composite
def scenarios(draw: st.DrawFn, vocab_size: int) -> list[Submission]:
    prompt = st.one_of(st.sampled_from(PROMPTS), st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=40))
    return draw(st.lists(
        st.builds(Submission, prompt, sampling_params(vocab_size), st.integers(0, 6),
                  st.one_of(st.none(), st.none(), st.integers(0, 10))),
        min_size=1, max_size=4,
    ))


CASES: list[int] = []  # requests per scenario
STEPS: list[int] = []


def test_any_mix_of_requests_ends_and_leaves_the_pool_whole(engine: LLMEngine) -> None:
    vocab = engine.info.vocab_size

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(scenarios(vocab))
    def check(submissions: list[Submission]) -> None:
        CASES.append(len(submissions))
        ids: dict[int, str] = {}
        ended: dict[str, str] = {}  # request id -> how it ended
        for step in range(MAX_STEPS):
            for i, s in enumerate(submissions):
                if s.arrive_step == step:
                    ids[i] = engine.add_request(s.prompt, s.params)
                if s.abort_step is not None and i in ids and step == s.arrive_step + s.abort_step:
                    out = engine.abort(ids[i])
                    if out is not None:
                        ended[ids[i]] = "abort"
            STEPS.append(1)
            engine.block_manager.check_consistent()
            for out in engine.step():
                assert out.error is None, out.error
                if out.finished:
                    ended[out.request_id] = "done"
                    s = submissions[next(i for i, r in ids.items() if r == out.request_id)]
                    assert len(out.outputs) == s.params.n
                    for c in out.outputs:
                        assert c.finish_reason in ("stop", "length")
                        assert len(c.token_ids) <= s.params.max_tokens  # type: ignore[operator]
            if len(ids) == len(submissions) and not engine.has_unfinished():
                break
        assert not engine.has_unfinished(), "requests still running after the step budget"
        assert set(ended) == set(ids.values())  # every request ended, once
        assert_pool_whole(engine.block_manager)
        assert not engine.scheduler.running and not engine.scheduler.waiting

    check()
    print(f"hypothesis: {len(CASES)} scenarios, {sum(CASES)} requests, {len(STEPS)} engine steps")
