"""One bad request never takes the engine down: ids are checked against the model before a request
is queued, and a request whose processing still raises ends alone with an error while the others
finish exactly as they would have without it, and the KV pool stays whole."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inference.engine.async_engine import AsyncLLMEngine
from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.errors import InvalidRequestError, RequestFailedError
from inference.schema.outputs import RequestOutput
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole

BAD_ID = 1_000_000_000


def _config(tiny_model_dir: Path) -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir), dtype="float32", kv_cache_tokens=1024, block_size=8,
                        max_num_batched_tokens=64, max_num_seqs=8)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    eng = LLMEngine(_config(tiny_model_dir))
    yield eng
    eng.shutdown()


GOOD = [
    ("The quick brown fox", SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)),
    ("Serving", SamplingParams(max_tokens=10, temperature=0.9, seed=7, n=2, ignore_eos=True)),
    ("What is the capital of France?", SamplingParams(max_tokens=8, temperature=0.0, n=2, use_beam_search=True)),
    ("emoji 🙂 and", SamplingParams(max_tokens=9, temperature=0.7, top_k=5, seed=3, logprobs=2, min_tokens=3)),
]


def _run(engine: LLMEngine, requests: list[tuple[str, SamplingParams]], poison: dict[int, str]) -> dict[int, RequestOutput]:
    """Submit all, then break the params of the `poison` ones in the way named (after they passed
    the checks at submission, as a bug inside the engine would), and run to the end."""
    ids = [engine.add_request(prompt, params) for prompt, params in requests]
    for index, how in poison.items():
        params = requests[index][1]
        if how == "stop_token_ids":
            params.stop_token_ids.append(BAD_ID)
        else:
            params.logit_bias[BAD_ID] = 1.0
    final: dict[int, RequestOutput] = {}
    for _ in range(500):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            if out.finished:
                final[ids.index(out.request_id)] = out
    assert not engine.has_unfinished()
    return final


def _same(a: RequestOutput, b: RequestOutput) -> bool:
    return [(c.token_ids, c.text, c.finish_reason) for c in a.outputs] == [(c.token_ids, c.text, c.finish_reason) for c in b.outputs]


@pytest.mark.parametrize(
    ("field", "kwargs", "prompt"),
    [
        ("stop_token_ids", {"stop_token_ids": [BAD_ID], "min_tokens": 2}, "hi"),
        ("logit_bias", {"logit_bias": {BAD_ID: 5.0}}, "hi"),
        ("prompt", {}, [1, 2, BAD_ID]),
    ],
)
def test_ids_outside_the_vocabulary_are_refused_naming_the_field(engine: LLMEngine, field: str, kwargs: dict, prompt) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request(prompt, SamplingParams(max_tokens=4, **kwargs))
    assert info.value.param == field and field in str(info.value)
    assert not engine.has_unfinished()
    assert_pool_whole(engine.block_manager)


@pytest.mark.parametrize("how", ["stop_token_ids", "logit_bias"])
def test_a_request_failing_inside_the_engine_ends_alone_and_the_others_finish_identically(engine: LLMEngine, how: str) -> None:
    def fresh() -> list[tuple[str, SamplingParams]]:
        return [(p, SamplingParams(**{f: getattr(sp, f) for f in sp.__slots__ if f != "logit_bias"})) for p, sp in GOOD]  # type: ignore[attr-defined]

    reference = _run(engine, fresh(), {})
    assert_pool_whole(engine.block_manager)

    bad = ("Tensor parallel inference", SamplingParams(max_tokens=8, min_tokens=2, temperature=0.0))
    bad_beam = ("Hello there", SamplingParams(max_tokens=6, temperature=0.0, n=2, use_beam_search=True))
    mixed = fresh()
    mixed[1:1] = [bad]
    poison = {1: how}
    if how == "logit_bias":  # beam search takes the bias too (it has no stop token ids)
        mixed.append(bad_beam)
        poison[len(mixed) - 1] = how
    results = _run(engine, mixed, poison)

    failed = results[1]
    assert failed.finished and failed.error is not None
    assert all(c.finish_reason == "error" for c in failed.outputs)
    if how == "logit_bias":
        assert results[len(mixed) - 1].error is not None
    good = [results[i] for i in range(len(mixed)) if i not in poison]
    assert len(good) == len(GOOD)
    for want, got in zip([reference[i] for i in range(len(GOOD))], good, strict=True):
        assert got.error is None
        assert _same(want, got)
    assert_pool_whole(engine.block_manager)
    assert not engine.scheduler.running and not engine.scheduler.waiting


def test_async_engine_fails_only_the_bad_request_and_stays_healthy(tiny_model_dir: Path) -> None:
    engine = AsyncLLMEngine(_config(tiny_model_dir))

    async def run_one(prompt: str, params: SamplingParams, poison: bool) -> RequestOutput | BaseException:
        last: RequestOutput | None = None
        try:
            async for out in engine.generate(engine.encode(prompt), params):
                if poison and last is None:
                    params.stop_token_ids.append(BAD_ID)  # after the checks, while it runs
                last = out
        except RequestFailedError as e:
            return e
        assert last is not None
        return last

    async def main() -> list[RequestOutput | BaseException]:
        jobs = [run_one(f"prompt {i}", SamplingParams(max_tokens=12, min_tokens=6, temperature=0.0, ignore_eos=True), i == 2)
                for i in range(5)]
        return await asyncio.wait_for(asyncio.gather(*jobs), 60)

    try:
        results = asyncio.run(main())
        assert isinstance(results[2], RequestFailedError)
        assert all(isinstance(r, RequestOutput) and len(r.outputs[0].token_ids) == 12 for i, r in enumerate(results) if i != 2)
        engine.check_health()
        with pytest.raises(InvalidRequestError):
            asyncio.run(main_bad(engine))
        engine.check_health()
    finally:
        engine.shutdown()
    assert_pool_whole(engine.engine.block_manager)


async def main_bad(engine: AsyncLLMEngine) -> None:
    async for _ in engine.generate(engine.encode("hi"), SamplingParams(max_tokens=4, min_tokens=2, stop_token_ids=[BAD_ID])):
        pass


@pytest.mark.parametrize("kwargs", [{"top_p": 5e-324}, {"temperature": 5e-324}, {"temperature": 1e-6, "top_p": 1e-40}])
def test_extreme_but_valid_sampling_values_sample_without_error(engine: LLMEngine, kwargs: dict) -> None:  # type: ignore[type-arg]
    """Found by schemathesis: a top_p or temperature that rounds to 0 in float32 left no token to sample."""
    [out] = engine.generate(["The quick brown fox"], SamplingParams(max_tokens=4, seed=1, ignore_eos=True, **kwargs))
    assert out.error is None and len(out.outputs[0].token_ids) == 4
    assert_pool_whole(engine.block_manager)


class _BrokenMatcher:
    def __init__(self, inner: object) -> None:
        self.inner = inner

    def accept_token(self, token: int) -> bool:
        raise RuntimeError("matcher failed")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_tool_call_grammar_failing_mid_stream_ends_that_request_alone(engine: LLMEngine) -> None:
    """A call's matcher that raises after a few tokens (as an xgrammar bug would): that request ends
    with an error, the others finish as they would have without it."""
    from inference.schema.tools import Tool, tool_grammar

    tool = Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}})
    reference = _run(engine, [(p, SamplingParams(**{f: getattr(sp, f) for f in sp.__slots__}))  # type: ignore[attr-defined]
                              for p, sp in GOOD], {})
    calls = SamplingParams(max_tokens=40, temperature=0.0, guided=tool_grammar([tool], "required", False))
    ids = [engine.add_request(p, SamplingParams(**{f: getattr(sp, f) for f in sp.__slots__}))  # type: ignore[attr-defined]
           for p, sp in GOOD]
    bad = engine.add_request("Call f", calls)
    final: dict[str, RequestOutput] = {}
    for step in range(500):
        if not engine.has_unfinished():
            break
        if step == 3:  # mid-stream: the call's grammar breaks
            grammar = engine.groups[bad].seqs[0].grammar
            assert grammar is not None

            grammar.matcher = _BrokenMatcher(grammar.matcher)
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    assert final[bad].error is not None and all(c.finish_reason == "error" for c in final[bad].outputs)
    for index, request_id in enumerate(ids):
        assert final[request_id].error is None and _same(reference[index], final[request_id])
    assert_pool_whole(engine.block_manager)
