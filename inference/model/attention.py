"""Attention over the paged KV pool for one layer of one step (decodes batched, prompt chunks each).

Decodes: on CPU the compiled kernel reads K/V straight from the pool through the block tables;
elsewhere (GPU, float64) the context K/V of every decoding sequence is gathered from the pool by
slot (`DecodeGather`, derived from the block tables once per step), and the query heads are
grouped by their KV head (shape [B, kv_heads, group, head_dim]), so one SDPA call serves
grouped-query attention without repeating K/V. Prompt chunks: a fresh prompt attends
causally to its own K/V; a later chunk gathers its earlier context from the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from inference.engine.step_input import StepInput
from inference.model.kernels import paged_decode_attention


@dataclass(slots=True)
class DecodeGather:
    """The torch decode path's view of a step's block tables."""

    slots: torch.Tensor  # [num_decodes * max_context] int64 pool slot of every context position (padding: slot 0)
    mask: torch.Tensor  # [num_decodes, 1, 1, max_context] bool, True = attend


def uses_decode_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether decodes attend through the compiled kernel (it accumulates in fp32: float64
    exactness runs keep the torch path)."""
    return device.type == "cpu" and dtype != torch.float64 and paged_decode_attention() is not None


def decode_gather(tables: torch.Tensor, lens: torch.Tensor, block_size: int, device: torch.device) -> DecodeGather:
    """tables: [B, max_blocks] block ids, lens: [B] context lengths, on the host; the result on `device`."""
    max_context = int(lens.max())
    slots = (tables[:, :, None] * block_size + torch.arange(block_size)).view(len(tables), -1)[:, :max_context]
    mask = torch.arange(max_context)[None, :] < lens[:, None]
    return DecodeGather(slots.reshape(-1).to(device), mask[:, None, None, :].to(device))


def paged_attention(
    q: torch.Tensor,  # [T, num_heads, head_dim], RoPE applied
    k: torch.Tensor,  # [T, num_kv_heads, head_dim], RoPE applied, already written to the pool
    v: torch.Tensor,  # [T, num_kv_heads, head_dim]
    k_pool: torch.Tensor,  # [num_slots, num_kv_heads, head_dim] (this layer)
    v_pool: torch.Tensor,
    step: StepInput,
    gather: DecodeGather | None,  # None: decodes go through the kernel (`uses_decode_kernel`)
) -> torch.Tensor:  # [T, num_heads * head_dim]
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    parts = []
    nd = step.num_decodes
    if nd and gather is None:
        # compiled: reads K/V straight from the pool through the block tables, no gather copy
        kernel = paged_decode_attention()
        assert kernel is not None and step.decode_tables is not None and step.decode_lens is not None
        out = kernel(q[:nd].contiguous(), k_pool, v_pool, step.decode_tables, step.decode_lens, step.block_size,
                     head_dim**-0.5)
        parts.append(out.view(nd, num_heads * head_dim))
    elif nd:
        assert gather is not None
        max_context = gather.mask.shape[-1]
        flat = gather.slots
        kd = k_pool.index_select(0, flat).view(nd, max_context, num_kv_heads, head_dim).transpose(1, 2)
        vd = v_pool.index_select(0, flat).view(nd, max_context, num_kv_heads, head_dim).transpose(1, 2)
        qd = q[:nd].view(nd, num_kv_heads, group, head_dim)
        out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=gather.mask)
        parts.append(out.reshape(nd, num_heads * head_dim))
    for seg in step.prefills:
        end = seg.start + seg.num_tokens
        qs = q[seg.start : end].transpose(0, 1)[None]  # [1, H, n, d]
        if seg.context_slots is None:
            ks = k[seg.start : end].transpose(0, 1)[None]
            vs = v[seg.start : end].transpose(0, 1)[None]
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=group > 1)
        else:
            ks = k_pool.index_select(0, seg.context_slots).transpose(0, 1)[None]
            vs = v_pool.index_select(0, seg.context_slots).transpose(0, 1)[None]
            out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=seg.mask, enable_gqa=group > 1)
        parts.append(out[0].transpose(0, 1).reshape(seg.num_tokens, num_heads * head_dim))
    result = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    assert result.shape[0] == num_tokens
    return result
