"""FlexAttention over the paged pool (the CUDA default), run here on CPU: the per-step block mask
against a gather-and-softmax reference, the engine's tokens against the SDPA path, the bucketed
decode step (padding rows in the scratch block), and the KV pool sized from GPU memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.engine.llm_engine import LLMEngine
from inference.engine.step_input import PrefillSegment, StepInput
from inference.model.bucketed_decode import batch_buckets, why_not_bucketed
from inference.model.flex_paged import build_block_mask, flex_paged_attention, step_rows
from inference.model.kv_cache import kv_blocks_for_memory
from inference.schema.config.engine import DEFAULT_CPU_KV_TOKENS, EngineConfig
from inference.schema.errors import KVCacheTooSmallError
from inference.schema.sampling import SamplingParams

HEADS, KV_HEADS, HEAD_DIM, BS, POOL_BLOCKS = 6, 2, 16, 16, 24


def _reference(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, table: list[int], pos: int) -> torch.Tensor:
    """One query token over its sequence's positions 0..pos, gathered slot by slot."""
    slots = torch.tensor([table[p // BS] * BS + p % BS for p in range(pos + 1)])
    k, v = k_pool[slots], v_pool[slots]  # [L, kv_heads, d]
    grouped = q.view(KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
    scores = torch.einsum("kgd,lkd->kgl", grouped, k) * HEAD_DIM**-0.5
    return torch.einsum("kgl,lkd->kgd", scores.softmax(-1), v).reshape(HEADS * HEAD_DIM)


def test_block_mask_attends_each_token_to_its_own_sequence_up_to_its_position() -> None:
    torch.manual_seed(0)
    k_pool = torch.randn(POOL_BLOCKS * BS, KV_HEADS, HEAD_DIM)
    v_pool = torch.randn(POOL_BLOCKS * BS, KV_HEADS, HEAD_DIM)
    # decodes: two share a prefix block (prefix caching), one ends on a block boundary; tables padded with 0
    decode_tables = [[3, 7, 1], [3, 9], [5, 6]]
    decode_lens = [37, 20, 32]
    # prompt chunks: a fresh one (positions 0..20) and one continuing after 18 cached tokens (18..40)
    chunks = [([11, 12], 0, 21), ([3, 7, 14], 18, 23)]
    width = max(len(t) for t in decode_tables)
    step = StepInput(
        input_ids=torch.zeros(3 + 21 + 23, dtype=torch.int64), positions=torch.zeros(47, dtype=torch.int64),
        slot_mapping=torch.zeros(47, dtype=torch.int64), num_decodes=3,
        decode_tables=torch.tensor([t + [0] * (width - len(t)) for t in decode_tables]),
        decode_lens=torch.tensor(decode_lens),
        prefills=[PrefillSegment(3, 21, 0, None, None, torch.tensor(chunks[0][0])),
                  PrefillSegment(24, 23, 18, None, None, torch.tensor(chunks[1][0]))],
        logits_indices=torch.arange(1), block_size=BS,
    )
    q = torch.randn(47, HEADS, HEAD_DIM)
    mask = build_block_mask(step_rows(step), BS, POOL_BLOCKS, torch.device("cpu"))
    out = flex_paged_attention(q, k_pool, v_pool, mask, compiled=False)
    expected = [_reference(q[i], k_pool, v_pool, decode_tables[i], decode_lens[i] - 1) for i in range(3)]
    token = 3
    for table, start, n in chunks:
        for pos in range(start, start + n):
            expected.append(_reference(q[token], k_pool, v_pool, table, pos))
            token += 1
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-5, atol=1e-5)


def _greedy(model: Path, **settings: object) -> tuple[list[list[int]], LLMEngine]:
    engine = LLMEngine(EngineConfig(model=str(model), dtype="float32", kv_cache_tokens=1024, block_size=16,
                                    max_num_batched_tokens=32, max_num_seqs=4, **settings))  # type: ignore[arg-type]
    try:
        # 6 requests over 4 slots: chunked prompts, decodes of 1-4 sequences (buckets 1, 2, 4: 3 pads one
        # row), and the last prompt repeating the first (its full blocks come from the prefix cache)
        prompts = ["The quick brown fox " * k for k in (3, 1, 7, 2, 5, 3)]
        outs = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
        return [o.outputs[0].token_ids for o in outs], engine
    finally:
        engine.shutdown()


@pytest.mark.timeout(300)
def test_flex_attention_and_its_bucketed_decode_give_the_sdpa_paths_tokens(tiny_model_dir: Path) -> None:
    sdpa, _ = _greedy(tiny_model_dir, attention="sdpa")
    flex, engine = _greedy(tiny_model_dir, attention="flex")
    assert engine.worker.runner is not None and engine.worker.runner.flex and engine.worker.runner.bucketed is None
    assert flex == sdpa
    bucketed, engine = _greedy(tiny_model_dir, attention="flex", compile=True)
    runner = engine.worker.runner
    assert runner is not None and runner.bucketed is not None and runner.bucketed.buckets == [1, 2, 4]
    assert bucketed == sdpa
    assert engine.block_manager.num_blocks == 1024 // 16  # the scratch block is the pool's, not the scheduler's


def test_batch_buckets_and_why_a_decode_step_is_not_bucketed() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert "tensor parallelism" in str(why_not_bucketed([], torch.float32, tp_size=2))
    assert "float64" in str(why_not_bucketed([], torch.float64, tp_size=1))
    assert why_not_bucketed([], torch.bfloat16, tp_size=1) is None


def test_kv_pool_from_gpu_memory_utilization() -> None:
    gib = 2**30
    # 80 GiB card, 0.9 of it: 72 GiB, less this engine's 10 GiB and a 2 GiB step peak = 60 GiB of 1 MiB blocks
    assert kv_blocks_for_memory(80 * gib, 70 * gib, 10 * gib, 2 * gib, 0.9, 2**20) == 60 * 1024
    # a replica sharing the GPU holds 40 GiB: only what is free (30 GiB) less the step peak
    assert kv_blocks_for_memory(80 * gib, 30 * gib, 10 * gib, 2 * gib, 0.9, 2**20) == 28 * 1024
    with pytest.raises(KVCacheTooSmallError, match=r"gpu_memory_utilization 0.5 .* raise gpu_memory_utilization"):
        kv_blocks_for_memory(16 * gib, 9 * gib, 7 * gib, 2 * gib, 0.5, 2**20)


def test_kv_cache_tokens_default_on_cpu(tiny_model_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), block_size=16))
    try:
        assert engine.info.num_kv_blocks == engine.block_manager.num_blocks == DEFAULT_CPU_KV_TOKENS // 16
    finally:
        engine.shutdown()
