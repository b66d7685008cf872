"""`ModelRunner`: one rank's forward pass over a DeepSpeed-wrapped Hugging Face decoder.

DeepSpeed (`init_inference`, AutoTP) owns the weights: with tp_size N each rank holds its
shard of every projection, and the row-parallel ones (`o_proj`, `down_proj`, `lm_head`) all-reduce
inside their forward. This runner drives the decoder layers itself instead of calling HF's
forward, so that the KV cache is our paged pool and a step is one flattened batch of tokens:
plain linear shards of q/k/v and of gate/up are fused into one matmul each; any other linear
type (bitsandbytes, torch quantized) is called as a module. Logits are computed only for the
rows that sample (and the prompt rows of requests that ask for prompt logprobs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.engine.step_input import PrefillSegment, StepInput
from inference.model.attention import decode_gather, paged_attention, uses_decode_kernel
from inference.model.bucketed_decode import BucketedDecode, batch_buckets, why_not_bucketed
from inference.model.compiled_decode import CompiledDecode, why_not_compiled
from inference.model.decoder_layer import PACK_ATTR, DecoderLayer, single
from inference.model.flex_paged import build_block_mask, flex_layers, step_rows, to_device
from inference.model.kv_cache import KVCache, kv_block_bytes, kv_blocks_for_memory

log = logging.getLogger(__name__)
Linear = Callable[[torch.Tensor], torch.Tensor]


class ModelRunner:
    def __init__(self, model: Any, block_size: int, max_model_len: int, attention: str = "auto") -> None:
        """`model`: a Hugging Face causal LM (Llama-like decoder), already wrapped by DeepSpeed.
        `attention`: 'flex', 'sdpa' or 'auto' (flex on CUDA). The KV pool comes next
        (`allocate_kv_cache`), once its size is known (`kv_blocks_that_fit` on CUDA)."""
        config = model.config
        self.config = config
        self.device = next(model.parameters()).device
        self.dtype: torch.dtype = model.model.embed_tokens.weight.dtype
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.eps: float = config.rms_norm_eps
        self.embed_tokens = model.model.embed_tokens
        self.logits_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.final_norm = model.model.norm.weight.detach().to(self.logits_dtype)
        self.lm_head: Linear = fp32_lm_head(model.lm_head)
        if config.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {config.hidden_act!r}")
        self.layers = [DecoderLayer(layer, self.head_dim, self.eps) for layer in model.model.layers]
        self.num_heads = self.layers[0].num_heads  # this rank's share under tensor parallelism
        self.num_kv_heads = self.layers[0].num_kv_heads
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.cos, self.sin = self._rope_tables(model, max_model_len)
        self.flex = attention == "flex" or (attention == "auto" and self.device.type == "cuda")
        self.decode_kernel = not self.flex and uses_decode_kernel(self.device, self.dtype)
        self.kv_cache: KVCache | None = None
        self.compiled: CompiledDecode | None = None
        self.bucketed: BucketedDecode | None = None
        self.compile_s = 0.0

    @property
    def block_bytes(self) -> int:
        return kv_block_bytes(len(self.layers), self.block_size, self.num_kv_heads, self.head_dim, self.dtype)

    def kv_blocks_that_fit(self, utilization: float, max_num_batched_tokens: int, max_num_seqs: int) -> int:
        """CUDA: the KV blocks `utilization` of the GPU holds beside the weights and the peak of a full
        step (measured: a prompt of `max_num_batched_tokens` tokens with `max_num_seqs` logit rows, run
        over a small temporary pool), as vLLM sizes its pool."""
        assert self.device.type == "cuda" and self.kv_cache is None
        tokens = min(max_num_batched_tokens, self.max_model_len)
        self.allocate_kv_cache(-(-tokens // self.block_size))
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        ids = torch.zeros(tokens, dtype=torch.int64)
        self.execute(StepInput(
            input_ids=ids, positions=torch.arange(tokens), slot_mapping=torch.arange(tokens), num_decodes=0,
            decode_tables=None, decode_lens=None,
            prefills=[PrefillSegment(0, tokens, 0, None, None, torch.arange(-(-tokens // self.block_size)))],
            logits_indices=torch.arange(min(max_num_seqs, tokens)), block_size=self.block_size,
        ))
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        self.kv_cache = None
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        own = torch.cuda.memory_reserved(self.device)
        blocks = kv_blocks_for_memory(total, free, own, peak, utilization, self.block_bytes)
        log.info("KV pool from gpu_memory_utilization %.2f: %d blocks (%d tokens, %.2f GiB); a full step's "
                 "activations peaked at %.2f GiB", utilization, blocks, blocks * self.block_size,
                 blocks * self.block_bytes / 2**30, peak / 2**30)
        return blocks

    def allocate_kv_cache(self, num_blocks: int, compile: bool = False, cuda_graphs: bool = False,
                          max_num_seqs: int = 1, tp_size: int = 1) -> None:
        """Allocate the pool of `num_blocks` blocks (+ the scratch block), then, if asked, compile the
        decode step: with sdpa attention on CPU `CompiledDecode` (`compile`); with flex attention
        `BucketedDecode` at batch buckets up to `max_num_seqs` (`compile`, or `cuda_graphs` on CUDA,
        which also replays each bucket from a CUDA graph). Where one cannot run, the reason is
        logged and steps stay eager."""
        self.kv_cache = KVCache(
            num_layers=len(self.layers),
            num_blocks=num_blocks,
            block_size=self.block_size,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        max_blocks = -(-self.max_model_len // self.block_size)
        if compile and not self.flex:
            reason = why_not_compiled(self.layers, self.device, self.dtype, tp_size)
            if reason is not None:
                log.warning("compile: the decode step runs eagerly (%s)", reason)
            else:
                self.compiled = CompiledDecode(self.layers, self.kv_cache, max_blocks)
                self.compile_s = self.compiled.warm_up(self._warm_up_step,
                                                       self.compiled.warm_up_batch_sizes(max_num_seqs))
        graphs = cuda_graphs and self.device.type == "cuda"
        if self.flex and (compile or graphs):
            reason = why_not_bucketed(self.layers, self.dtype, tp_size)
            if reason is not None:
                log.warning("%s: decode steps run eagerly (%s)", "cuda_graphs" if graphs else "compile", reason)
            else:
                self.bucketed = BucketedDecode(self.layers, self.kv_cache, batch_buckets(max_num_seqs),
                                               cuda_graphs=graphs)
                self.compile_s = self.bucketed.warm_up(self._warm_up_step)

    def _warm_up_step(self, batch: int) -> None:
        """A decode step of `batch` one-token sequences over slot 0 (the pool is cleared afterwards)."""
        zeros = torch.zeros(batch, dtype=torch.int64)
        self.execute(StepInput(
            input_ids=zeros, positions=zeros, slot_mapping=zeros, num_decodes=batch,
            decode_tables=zeros[:, None], decode_lens=torch.ones(batch, dtype=torch.int64), prefills=[],
            logits_indices=torch.arange(batch), block_size=self.block_size,
        ))
        assert self.kv_cache is not None
        self.kv_cache.k.zero_()
        self.kv_cache.v.zero_()

    def _rope_tables(self, model: Any, max_model_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for every position, from the model's own rotary module (so RoPE scaling types hold)."""
        positions = torch.arange(max_model_len, device=self.device)[None]
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)
        cos, sin = model.model.rotary_emb(probe, positions)
        return cos[0].to(self.dtype)[:, None, :], sin[0].to(self.dtype)[:, None, :]  # [L, 1, head_dim]

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor:
        """Run one step; returns fp32 logits [len(step.logits_indices), vocab] whatever the model's
        dtype (fp64 in an fp64 model)."""
        kv = self.kv_cache
        assert kv is not None, "allocate_kv_cache() first"
        if step.block_copies:
            kv.copy_blocks(step.block_copies)
        dev = self.device
        input_ids, positions, slots, logits_indices = (
            to_device(t, dev) for t in (step.input_ids, step.positions, step.slot_mapping, step.logits_indices))
        cos, sin = self.cos[positions], self.sin[positions]
        h = self.embed_tokens(input_ids)
        decode_only = not step.prefills and step.decode_tables is not None
        if self.bucketed is not None and decode_only and self.bucketed.covers(step.num_decodes):
            h = self.bucketed(h, cos, sin, slots, step)
        elif self.compiled is not None and decode_only:
            assert step.decode_tables is not None and step.decode_lens is not None
            h = self.compiled(h, cos, sin, slots, step.decode_tables, step.decode_lens, step.block_size)
        elif self.flex:
            block_mask = build_block_mask(step_rows(step), step.block_size, kv.num_blocks, dev)
            compiled = self.dtype != torch.float64  # inductor's flex template: fp32/bf16/fp16
            h = flex_layers(self.layers, h, cos, sin, list(kv.k), list(kv.v), slots, block_mask, compiled)
        else:
            gather = None  # the block tables as gather slots, where decodes do not go through the kernel
            if step.num_decodes and not self.decode_kernel:
                assert step.decode_tables is not None and step.decode_lens is not None
                gather = decode_gather(step.decode_tables, step.decode_lens, step.block_size, dev)
            if dev.type != "cpu":
                step = _to_device(step, dev)
            for layer, k_pool, v_pool in zip(self.layers, kv.k, kv.v, strict=True):
                q, k, v = layer.pre_attention(h, cos, sin)
                k_pool.index_copy_(0, slots, k)
                v_pool.index_copy_(0, slots, v)
                h = layer.post_attention(h, paged_attention(q, k, v, k_pool, v_pool, step, gather))
        h = h[logits_indices]
        return self.lm_head(F.rms_norm(h.to(self.logits_dtype), (h.shape[-1],), self.final_norm, self.eps))


def fp32_lm_head(lm_head: Any) -> Linear:
    """The LM head as a function of fp32 hidden states to fp32 logits, whatever the model's dtype.

    bf16 logits of magnitude 16-32 are 0.125 apart: two candidate tokens can tie exactly (the
    packaged model's first answer token to the README question: "L" and "The" both -1.8895 in bf16,
    -1.965 and -1.883 in fp32), and sampling, beam scores and logprobs would read the rounding.
    A bf16 plain linear gets an fp32 copy of its weight (untied from the embedding, which stays
    bf16) with its exact 4/8-bit packing if it has one; DeepSpeed's all-reducing head under tensor
    parallelism gets its shard in fp32. Quantizers leave the head alone (weight-only int8's kernel
    computes in bf16)."""
    if type(lm_head) is nn.Linear:
        if lm_head.weight.dtype in (torch.bfloat16, torch.float16):
            head = nn.Linear(lm_head.in_features, lm_head.out_features, bias=lm_head.bias is not None,
                             device="meta")
            head.weight = nn.Parameter(lm_head.weight.detach().float(), requires_grad=False)
            if lm_head.bias is not None:
                head.bias = nn.Parameter(lm_head.bias.detach().float(), requires_grad=False)
            if hasattr(lm_head, PACK_ATTR):
                setattr(head, PACK_ATTR, getattr(lm_head, PACK_ATTR))
            lm_head = head
        return single(lm_head)
    for name in ("weight", "bias"):
        tensor = getattr(lm_head, name, None)
        if isinstance(tensor, torch.Tensor) and tensor.dtype in (torch.bfloat16, torch.float16):
            setattr(lm_head, name, nn.Parameter(tensor.detach().float(), requires_grad=False))
    return lambda x: lm_head(x[None])[0]


def _to_device(step: StepInput, device: torch.device) -> StepInput:
    from dataclasses import replace

    return replace(
        step,
        prefills=[
            PrefillSegment(
                p.start, p.num_tokens, p.num_context,
                None if p.context_slots is None else p.context_slots.to(device),
                None if p.mask is None else p.mask.to(device),
                p.blocks,
            )
            for p in step.prefills
        ],
    )
