"""Tensor parallelism on CPU: DeepSpeed AutoTP, gloo, two rank processes, lockstep steps from rank 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.engine.llm_engine import LLMEngine
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole

PROMPTS = ["The quick brown fox", "What is the capital of France?", "Serving large language models", "0123456789"]


def _shm_buffers() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")}


def _run(model_dir: Path, tp_size: int) -> tuple[list[list[int]], list[int]]:
    before = _shm_buffers()
    engine = LLMEngine(
        EngineConfig(model=str(model_dir), dtype="float32", tp_size=tp_size, num_threads=1,
                     kv_cache_tokens=1024, max_num_batched_tokens=16, max_num_seqs=8)
    )
    try:
        # DeepSpeed's CPU all-reduce buffers (64 MiB of RAM per rank) are unlinked once every rank
        # has mapped them: none is left named in /dev/shm, while running or after.
        assert _shm_buffers() - before == set()
        heads = [engine.worker.runner.num_heads, engine.worker.runner.num_kv_heads]
        outs = engine.generate(PROMPTS, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
        assert_pool_whole(engine.block_manager)
        return [o.outputs[0].token_ids for o in outs], heads
    finally:
        engine.shutdown()
        assert _shm_buffers() - before == set()


@pytest.mark.timeout(300)
def test_tp2_on_cpu_equals_tp1_token_for_token(tiny_model_dir: Path) -> None:
    single, heads1 = _run(tiny_model_dir, 1)
    double, heads2 = _run(tiny_model_dir, 2)
    assert heads1 == [4, 2] and heads2 == [2, 1]  # each rank really holds half of the heads
    assert double == single
