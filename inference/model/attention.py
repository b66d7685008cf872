"""Attention over the paged KV pool for one layer of one step (decodes batched, prompt chunks each).

Decodes: the context K/V of every decoding sequence is gathered from the pool by slot, and the
query heads are grouped by their KV head (shape [B, kv_heads, group, head_dim]), so one SDPA call
serves grouped-query attention without repeating K/V. Prompt chunks: a fresh prompt attends
causally to its own K/V; a later chunk gathers its earlier context from the pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from inference.engine.step_input import StepInput
from inference.model.kernels import paged_decode_attention


def paged_attention(
    q: torch.Tensor,  # [T, num_heads, head_dim], RoPE applied
    k: torch.Tensor,  # [T, num_kv_heads, head_dim], RoPE applied, already written to the pool
    v: torch.Tensor,  # [T, num_kv_heads, head_dim]
    k_pool: torch.Tensor,  # [num_slots, num_kv_heads, head_dim] (this layer)
    v_pool: torch.Tensor,
    step: StepInput,
) -> torch.Tensor:  # [T, num_heads * head_dim]
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    parts = []
    nd = step.num_decodes
    # the kernel accumulates in fp32: float64 (exactness runs) keeps the torch path
    kernel = paged_decode_attention() if q.device.type == "cpu" and q.dtype != torch.float64 else None
    if nd and kernel is not None and step.decode_tables is not None and step.decode_lens is not None:
        # compiled: reads K/V straight from the pool through the block tables, no gather copy
        out = kernel(q[:nd].contiguous(), k_pool, v_pool, step.decode_tables, step.decode_lens, step.block_size,
                     head_dim**-0.5)
        parts.append(out.view(nd, num_heads * head_dim))
    elif nd:
        assert step.decode_slots is not None and step.decode_mask is not None
        max_context = step.decode_slots.shape[1]
        flat = step.decode_slots.view(-1)
        kd = k_pool.index_select(0, flat).view(nd, max_context, num_kv_heads, head_dim).transpose(1, 2)
        vd = v_pool.index_select(0, flat).view(nd, max_context, num_kv_heads, head_dim).transpose(1, 2)
        qd = q[:nd].view(nd, num_kv_heads, group, head_dim)
        out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=step.decode_mask)
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
