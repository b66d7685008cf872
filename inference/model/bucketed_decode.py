"""`BucketedDecode`: decode-only steps with FlexAttention, compiled whole, padded to batch-size buckets.

Why: an eager decode step launches some 25 kernels per layer from Python; on a GPU at small batches
the launches, not the math, set the step time. Here a decode step is padded to the next bucket
(`batch_buckets`: powers of two up to max_num_seqs) and all decoder layers, the pool writes and
FlexAttention over the pool included, run as one `torch.compile`d function. On CUDA with
`cuda_graphs` it is compiled with mode "reduce-overhead": inductor's CUDA-graph trees record each
bucket's kernels at warm-up and replay them with one launch afterwards. Shapes are static per
bucket: the block index table and the per-row block maps are as wide as the pool.
Padding rows write their K/V to the pool's scratch block and attend only to it; their rows are
dropped before the LM head. On CPU the same function compiles without graphs (how the tests check
the padding and the compiled path here).
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable
from typing import Any

import torch

from inference.engine.step_input import StepInput
from inference.model.decoder_layer import DecoderLayer
from inference.model.flex_paged import StepRows, build_block_mask, flex_layers, step_rows
from inference.model.kv_cache import KVCache

log = logging.getLogger(__name__)


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, ... up to `max_num_seqs` (which is the last bucket whatever it is): a step pads to at most
    twice its rows, and a start-up captures log2(max_num_seqs) graphs."""
    buckets = [1]
    while buckets[-1] * 2 < max_num_seqs:
        buckets.append(buckets[-1] * 2)
    if buckets[-1] != max_num_seqs:
        buckets.append(max_num_seqs)
    return buckets


def why_not_bucketed(layers: list[DecoderLayer], dtype: torch.dtype, tp_size: int) -> str | None:
    """None if the decode step can be compiled whole here, else the reason it runs eagerly."""
    if tp_size > 1:
        return "tensor parallelism: DeepSpeed's all-reduce inside the row-parallel layers is not captured"
    if dtype == torch.float64:
        return "float64 (exactness runs): inductor's FlexAttention is fp32/bf16/fp16"
    names = {type(m).__name__ for layer in layers for m in layer.modules()}
    if names & {"Linear8bitLt", "Linear4bit"}:
        return "bitsandbytes linears"
    return None


def decode_layers_flex(layers: list[DecoderLayer], h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       k_pools: list[torch.Tensor], v_pools: list[torch.Tensor], slots: torch.Tensor,
                       block_mask: Any) -> torch.Tensor:
    """The decoder layers of a decode step, compiled whole: flex inside is traced into the graph."""
    return flex_layers(layers, h, cos, sin, k_pools, v_pools, slots, block_mask, compiled=False)


class BucketedDecode:
    def __init__(self, layers: list[DecoderLayer], kv_cache: KVCache, buckets: list[int], cuda_graphs: bool) -> None:
        self.layers = layers
        self.kv_cache = kv_cache
        self.buckets = buckets
        self.cuda_graphs = cuda_graphs
        self.k_pools, self.v_pools = list(kv_cache.k), list(kv_cache.v)  # per-layer views, made once
        for pool in self.k_pools + self.v_pools:
            # the pools live for the engine's life: a graph may write them in place at fixed addresses
            torch._dynamo.mark_static_address(pool)
        # one copy of the function per instance, so no other engine's graphs are run on these layers
        own = types.FunctionType(decode_layers_flex.__code__.replace(), decode_layers_flex.__globals__,
                                 decode_layers_flex.__name__)
        self.forward: Callable[..., torch.Tensor] = torch.compile(
            own, mode="reduce-overhead" if cuda_graphs else None,
            options=None if cuda_graphs else {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe},
        )
        self.warming = False

    def covers(self, num_decodes: int) -> bool:
        return num_decodes <= self.buckets[-1]

    def bucket(self, num_decodes: int) -> int:
        return next(b for b in self.buckets if b >= num_decodes)

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor,
                 step: StepInput) -> torch.Tensor:
        n, bs = step.num_decodes, step.block_size
        size = self.bucket(n)
        pad = size - n
        rows = step_rows(step)
        if pad:  # padding rows: one token each at position 0 of the scratch block, which only they touch
            scratch = self.kv_cache.scratch_block
            h = torch.cat([h, h.new_zeros(pad, h.shape[1])])
            cos = torch.cat([cos, cos[:1].expand(pad, *cos.shape[1:])])
            sin = torch.cat([sin, sin[:1].expand(pad, *sin.shape[1:])])
            slots = torch.cat([slots, slots.new_full((pad,), scratch * bs)])
            extra = torch.full((pad, rows.tables.shape[1]), -1, dtype=torch.int64)
            extra[:, 0] = scratch
            rows = StepRows(torch.cat([rows.tables, extra]), torch.arange(size),
                            torch.cat([rows.token_pos, torch.zeros(pad, dtype=torch.int64)]))
        block_mask = build_block_mask(rows, bs, self.kv_cache.num_blocks, h.device)
        with torch.compiler.set_stance("default" if self.warming or self.cuda_graphs else "eager_on_recompile"):
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = self.forward(self.layers, h, cos, sin, self.k_pools, self.v_pools, slots, block_mask)
        return out[:n].clone()  # a graph's output buffer is overwritten by its next replay

    def warm_up(self, run: Callable[[int], Any]) -> float:
        """Compile (and on CUDA record) every bucket by running `run(batch)` for it; returns the seconds
        spent. Three runs per bucket on CUDA: CUDA-graph trees warm up, then record, then replay."""
        start = time.perf_counter()
        for i, batch in enumerate(self.buckets):
            t0 = time.perf_counter()
            self.warming = True
            try:
                for _ in range(3 if self.cuda_graphs else 1):
                    run(batch)
            finally:
                self.warming = False
            log.info("decode step %s %d/%d (batch %d): %.1f s", "captured" if self.cuda_graphs else "compiled",
                     i + 1, len(self.buckets), batch, time.perf_counter() - t0)
        total = time.perf_counter() - start
        log.info("bucketed decode step ready in %.1f s (buckets %s)", total, self.buckets)
        return total
