"""`CompiledDecode`: the decoder layers of decode-only steps under `torch.compile` (inductor).

Why: besides its matmuls, an eager decode step dispatches some 35 small ATen ops per layer
(rms_norm in pieces, RoPE, slicing, residual adds, silu*mul) from Python; at batch 1 on CPU
that is several ms per step (docs/engine-step.md). Inductor fuses the pointwise work into a few C++ loops per layer
and keeps the matmuls as library calls. The KV write and the paged decode kernel are one torch
custom op (`inference.model.kernels.decode_attention_op`), so the graph holds the whole layer.

One function, `decode_layers`, is compiled: all layers in one graph, so a step pays one guard
check and one call of the generated code instead of ~35 dispatches per layer (one graph per
layer was measured too: its per-call cost ate the gain). Every layer is an instance of one
module class, so tracing is short and the generated C++ kernels are shared. Shapes: the token
count is dynamic (batch 1 gets a graph of its own: inductor specialises size 1); block tables
are padded to a fixed width so they add no dimension to recompile on. `warm_up` compiles every
graph a step can need before the engine serves (progress in the log; inductor caches the
compiled code on disk, so a later start on the same machine is faster), after which steps run
under the stance `eager_on_recompile`: a shape no warm-up covered runs eagerly instead of
stalling the step on a compile.
Prompt steps (any prefill chunk) stay on the eager path: they are matmul-bound.
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from inference.model.decoder_layer import DecoderLayer
from inference.model.kernels import decode_attention_op
from inference.model.kv_cache import KVCache

log = logging.getLogger(__name__)


def decode_layers(
    layers: list[DecoderLayer], h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_pools: list[torch.Tensor],
    v_pools: list[torch.Tensor], slots: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor, block_size: int,
) -> torch.Tensor:
    """The decoder layers of a decode-only step (one token per sequence), each layer's K/V written to its pool."""
    for layer, k_pool, v_pool in zip(layers, k_pools, v_pools, strict=True):
        q, k, v = layer.pre_attention(h, cos, sin)
        out = torch.ops.sloserve.paged_decode_write_attention(
            q, k, v, k_pool, v_pool, slots, tables, lens, block_size, layer.head_dim**-0.5
        )
        h = layer.post_attention(h, out.view(h.shape[0], -1))
    return h


def why_not_compiled(layers: list[DecoderLayer], device: torch.device, dtype: torch.dtype, tp_size: int) -> str | None:
    """None if the decode step can be compiled here, else the reason it runs eagerly."""
    if device.type != "cpu":
        return "compile is implemented for CPU only"
    if tp_size > 1:
        return "tensor parallelism: the row-parallel layers all-reduce through DeepSpeed's comm inside forward"
    if dtype == torch.float64:
        return "float64 (exactness runs) uses the torch attention path"
    if decode_attention_op() is None:
        return "the paged decode kernel is unavailable"
    names = {type(m).__name__ for layer in layers for m in layer.modules()}
    if names & {"Linear8bitLt", "Linear4bit"}:
        return "bitsandbytes linears"
    if "W8A8Linear" in names:
        return "int8-compute linears (oneDNN's prepacked weights are not traced; not measured compiled)"
    return None


class CompiledDecode:
    def __init__(self, layers: list[DecoderLayer], kv_cache: KVCache, max_blocks: int) -> None:
        self.layers = layers
        self.k_pools, self.v_pools = list(kv_cache.k), list(kv_cache.v)  # per-layer views, made once
        self.max_blocks = max_blocks  # block tables are padded to this width
        self.warming = False
        # No guards on the layers' modules: they are fixed once loaded (weights change in place if at
        # all), and checking their ~400 attributes and tensors cost 1.2-1.9 ms of a 12 ms batch-1 step
        # (dynamo's cache lookup; 0.17 ms without). The step's own inputs keep their guards, so batch 1
        # and the dynamic graph are still told apart. Single stream, alternating: 63.0 / 67.9 -> 72.2 /
        # 77.1 tok/s, the same tokens. Dynamo keeps its graphs per code object, so each instance
        # compiles its own copy of `decode_layers`: unguarded, another engine's graphs (another
        # model, int8 linears) would otherwise be run on these layers.
        own = types.FunctionType(decode_layers.__code__.replace(), decode_layers.__globals__, decode_layers.__name__)
        self.forward: Callable[..., torch.Tensor] = torch.compile(
            own, fullgraph=True, options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        )

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor,
                 tables: torch.Tensor, lens: torch.Tensor, block_size: int) -> torch.Tensor:
        if tables.shape[1] < self.max_blocks:
            tables = F.pad(tables, (0, self.max_blocks - tables.shape[1]))
        with torch.compiler.set_stance("default" if self.warming else "eager_on_recompile"):
            return self.forward(self.layers, h, cos, sin, self.k_pools, self.v_pools, slots, tables, lens, block_size)

    def warm_up_batch_sizes(self, max_num_seqs: int) -> list[int]:
        """Batch sizes that between them meet every graph: 1 (specialised), 2 (the dynamic one), and
        one past each row bound a module branches on (`Int8Linear` switches kernels above it)."""
        rows = [getattr(m, "max_kernel_rows", None) for layer in self.layers for m in layer.modules()]
        bounds = {r + 1 for r in rows if isinstance(r, int)}
        return sorted(b for b in {1, 2, *bounds} if b <= max_num_seqs)

    def warm_up(self, run: Callable[[int], Any], batch_sizes: list[int]) -> float:
        """Compile every graph by running `run(batch)` for each batch size; returns the seconds spent."""
        start = time.perf_counter()
        for i, batch in enumerate(batch_sizes):
            t0 = time.perf_counter()
            self.warming = True
            try:
                run(batch)
            finally:
                self.warming = False
            log.info("compiled decode step %d/%d (batch %d): %.1f s", i + 1, len(batch_sizes), batch,
                     time.perf_counter() - t0)
        total = time.perf_counter() - start
        log.info("decode step compiled and warmed up in %.1f s", total)
        return total
