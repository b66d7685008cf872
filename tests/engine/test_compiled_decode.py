"""The compiled decode step (`EngineConfig.compile`) gives the eager path's tokens, fp32 and int8.

Greedy, continuous batching over prompts of different lengths, so decode steps run at several
batch sizes (1 after the others finish, 2 and more before) and prompt steps stay eager between
them. Compiled graphs are cached on disk by inductor, so only the first run in a machine pays the
whole compile.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.engine.llm_engine import LLMEngine
from inference.model.compiled_decode import why_not_compiled
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams
from tests.kv_pool import assert_pool_whole

PROMPTS = ["The quick brown fox", "What is the capital of France? The capital", "Serving", "0123456789 + - * /"]


def _generate(model_dir: Path, compile: bool, quantization: str = "none") -> list[list[int]]:
    engine = LLMEngine(
        EngineConfig(model=str(model_dir), dtype="float32", compile=compile, quantization=quantization,  # type: ignore[arg-type]
                     num_threads=1, kv_cache_tokens=1024, max_num_seqs=16, max_num_batched_tokens=32)
    )
    try:
        runner = engine.worker.runner
        assert runner is not None
        assert (runner.compiled is not None) == compile  # compiled where asked, not silently eager
        # different lengths: requests finish at different steps, so decode batches shrink to 1
        params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (24, 9, 17, 30)]
        outs = engine.generate(PROMPTS, params)
        assert_pool_whole(engine.block_manager)
        return [o.outputs[0].token_ids for o in outs]
    finally:
        engine.shutdown()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("quantization", ["none", "torch-int8"])
def test_compiled_decode_is_token_identical_to_eager(tiny_model_dir: Path, quantization: str) -> None:
    eager = _generate(tiny_model_dir, compile=False, quantization=quantization)
    compiled = _generate(tiny_model_dir, compile=True, quantization=quantization)
    assert [len(t) for t in compiled] == [24, 9, 17, 30]
    assert compiled == eager


def test_compile_says_why_it_cannot_run() -> None:
    """Where the decode step cannot be compiled the runner stays eager and logs this reason."""
    cpu = torch.device("cpu")
    assert why_not_compiled([], cpu, torch.float32, tp_size=1) is None
    assert "tensor parallelism" in str(why_not_compiled([], cpu, torch.float32, tp_size=2))
    assert "float64" in str(why_not_compiled([], cpu, torch.float64, tp_size=1))
    assert "CPU only" in str(why_not_compiled([], torch.device("cuda"), torch.float16, tp_size=1))
