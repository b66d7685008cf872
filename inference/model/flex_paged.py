"""Paged attention through torch's FlexAttention: one fused kernel per layer reads the KV pool in place.

The whole step is one query batch (decodes and prompt chunks alike, T tokens) against the whole
pool as one key sequence (its slots); a `BlockMask` built once per step says which pool blocks each
group of `Q_BLOCK` query tokens may touch (the blocks of the sequences in that group, up to their
positions), so the kernel loads only those. Inside a block, `mask_mod` maps a pool slot to its
position in the query's own sequence (`p2l`: physical block -> logical block, per sequence row) and
keeps it if it is at or before the query's position: causal prompt chunks over their earlier context
and decodes over theirs, grouped-query attention without repeating K/V (`enable_gqa`). No gather copy,
no boolean mask tensor, so on CUDA the generated Triton kernel is FlashAttention-like.

Compiled (`torch.compile`, the only fast form: eager flex materializes every score) on CUDA and CPU;
eager only where asked (tests comparing the mask logic with a reference, which is exact and quick).
vLLM's FlexAttention backend builds the same per-step block mask on the GPU; this builds it on the host,
where the block tables already are, and copies it once per step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from inference.engine.step_input import StepInput

if TYPE_CHECKING:
    from inference.model.decoder_layer import DecoderLayer

Q_BLOCK = 16  # query tokens per block-mask row (the kernel's tile is this or a divisor of it)


@dataclass(slots=True)
class StepRows:
    """A step's tokens as rows of the attention: each token's sequence row and position, each row's
    block table (padded with -1). Decodes are rows 0..D-1, then one row per prompt chunk."""

    tables: torch.Tensor  # [R, max_blocks] int64 pool block ids, -1 past the row's blocks
    token_rows: torch.Tensor  # [T] int64
    token_pos: torch.Tensor  # [T] int64 position of each token in its own sequence


def step_rows(step: StepInput) -> StepRows:
    """The rows of `step` (host tensors). Decode tables are padded with 0 in `StepInput`; here every
    entry past a row's own blocks is -1, so no padding entry can name a block of the pool."""
    bs = step.block_size
    tables: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    pos: list[torch.Tensor] = []
    nd = step.num_decodes
    if nd:
        assert step.decode_tables is not None and step.decode_lens is not None
        used = (step.decode_lens + bs - 1) // bs
        table = step.decode_tables.clone()
        table[torch.arange(table.shape[1])[None, :] >= used[:, None]] = -1
        tables.extend(table)
        rows.append(torch.arange(nd))
        pos.append(step.decode_lens - 1)
    for i, seg in enumerate(step.prefills):
        if seg.blocks is None:
            raise ValueError("FlexAttention needs each prompt chunk's block table (PrefillSegment.blocks)")
        tables.append(seg.blocks)
        rows.append(torch.full((seg.num_tokens,), nd + i, dtype=torch.int64))
        pos.append(torch.arange(seg.num_context, seg.num_context + seg.num_tokens))
    width = max(len(t) for t in tables)
    padded = torch.full((len(tables), width), -1, dtype=torch.int64)
    for r, t in enumerate(tables):
        padded[r, : len(t)] = t
    return StepRows(padded, torch.cat(rows), torch.cat(pos))


def build_block_mask(rows: StepRows, block_size: int, num_pool_blocks: int, device: torch.device) -> Any:
    """The block mask of one step (a flex `BlockMask`, shared by every layer; its `mask_mod` reads
    per-token rows and positions and the rows' physical-to-logical block maps). `num_pool_blocks`:
    blocks of the pool tensor (the key length is `num_pool_blocks * block_size`). The block index table
    is as wide as the pool (inductor's CPU template requires it, and it keeps the shapes static for CUDA
    graphs); only its filled entries cross to the device."""
    from torch.nn.attention.flex_attention import BlockMask

    num_tokens = int(rows.token_rows.numel())
    # at least 2 query groups and 2 rows: inductor specialises a dimension of size 1, and each
    # specialisation is one more graph; with these floors every step meets one of two
    num_groups = max(2, -(-num_tokens // Q_BLOCK))
    num_rows, width = rows.tables.shape
    # the furthest position each row reaches inside each query group (-1: not in the group)
    group = torch.arange(num_tokens) // Q_BLOCK
    furthest = torch.full((num_groups * num_rows,), -1, dtype=torch.int64)
    furthest.scatter_reduce_(0, group * num_rows + rows.token_rows, rows.token_pos, reduce="amax")
    blocks_needed = torch.where(furthest >= 0, furthest // block_size + 1, 0).view(num_groups, num_rows)
    take = torch.arange(width)[None, None, :] < blocks_needed[:, :, None]  # [G, R, width]
    take &= rows.tables[None] >= 0
    group_of = torch.arange(num_groups)[:, None, None].expand_as(take)
    # (group, block) pairs as one sorted key each; a block shared by rows of a group counts once. Work in
    # the blocks the step touches, not in the pool's size (a GPU pool has tens of thousands of blocks)
    keys = torch.unique(group_of[take] * num_pool_blocks + rows.tables[None].expand_as(take)[take])
    hit_group, hit_block = keys // num_pool_blocks, keys % num_pool_blocks
    kv_num_blocks = torch.bincount(hit_group, minlength=num_groups).to(torch.int32)
    starts = torch.cumsum(kv_num_blocks, 0) - kv_num_blocks
    columns = torch.arange(len(keys)) - starts[hit_group].long()
    entries = torch.stack([hit_group, columns, hit_block])

    # lookups for mask_mod, padded to whole query groups (pad tokens see nothing)
    padded_tokens = num_groups * Q_BLOCK
    token_rows = torch.zeros(padded_tokens, dtype=torch.int64)
    token_rows[:num_tokens] = rows.token_rows
    token_pos = torch.full((padded_tokens,), -1, dtype=torch.int64)
    token_pos[:num_tokens] = rows.token_pos
    token_rows, token_pos, kv_num_blocks, entries, tables = (
        to_device(t, device) for t in (token_rows, token_pos, kv_num_blocks, entries, rows.tables))
    kv_indices = torch.zeros(num_groups, num_pool_blocks, dtype=torch.int32, device=device)
    kv_indices[entries[0], entries[1]] = entries[2].to(torch.int32)
    # p2l[row, pool block] = the block's place in that row's sequence, -1 where it is not the row's
    p2l = torch.full((max(2, num_rows), num_pool_blocks), -1, dtype=torch.int32, device=device)
    valid = tables >= 0
    logical = torch.arange(width, dtype=torch.int32, device=device).expand(num_rows, width)
    row_of = torch.arange(num_rows, device=device)[:, None].expand(num_rows, width)
    p2l[row_of[valid], tables[valid]] = logical[valid]
    mask_mod = _paged_causal_mask(token_rows, token_pos, p2l, block_size)
    # every listed block goes through mask_mod; an explicit empty "full blocks" list (inductor's CPU
    # template fails to compile without one)
    no_full = torch.zeros_like(kv_num_blocks)
    return BlockMask.from_kv_blocks(
        kv_num_blocks[None, None], kv_indices[None, None], no_full[None, None], torch.zeros_like(kv_indices)[None, None],
        BLOCK_SIZE=(Q_BLOCK, block_size), mask_mod=mask_mod, seq_lengths=(padded_tokens, num_pool_blocks * block_size),
        compute_q_blocks=False,  # the transposed index is for the backward pass only
    )


def _paged_causal_mask(token_rows: torch.Tensor, token_pos: torch.Tensor, p2l: torch.Tensor,
                       block_size: int) -> Callable[..., torch.Tensor]:
    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        logical_block = p2l[token_rows[q_idx], kv_idx // block_size]
        return (logical_block >= 0) & (logical_block * block_size + kv_idx % block_size <= token_pos[q_idx])

    return mask_mod


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU from pinned memory without blocking the host."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # automatic dynamic shapes: the first step's shapes compile as they are, the second's make the
    # dimensions that changed (query groups, rows) dynamic, and every later step reuses that graph
    # (`build_block_mask` keeps them >= 2). The key length (the pool) stays static: a dynamic one
    # fails inductor's CPU template (torch 2.13).
    return torch.compile(flex_attention)  # type: ignore[return-value]


def flex_paged_attention(
    q: torch.Tensor,  # [T, heads, head_dim], RoPE applied
    k_pool: torch.Tensor,  # [num_slots, kv_heads, head_dim] (this layer, the step's K/V already written)
    v_pool: torch.Tensor,
    block_mask: Any,  # `build_block_mask`
    compiled: bool = True,
) -> torch.Tensor:  # [T, heads * head_dim]
    """`compiled`: through `torch.compile(flex_attention)`; False inside a graph that is compiled
    as a whole (`BucketedDecode`) and in exactness checks (eager flex, every score materialized)."""
    from torch.nn.attention.flex_attention import flex_attention

    num_tokens, num_heads, head_dim = q.shape
    attend: Callable[..., torch.Tensor] = _compiled_flex() if compiled else flex_attention  # type: ignore[assignment]
    # the query as its own [1, heads, padded T, head_dim] buffer, padded to the mask's whole query groups
    # (pad rows attend to nothing): inductor's CPU template reads the shape of the buffer under a view,
    # which for a transposed view is 3-d (a lowering error, compiled whole)
    query = q.new_zeros(1, num_heads, block_mask.seq_lengths[0], head_dim)
    query[0, :, :num_tokens] = q.transpose(0, 1)
    out = attend(
        query, k_pool.transpose(0, 1)[None], v_pool.transpose(0, 1)[None],
        block_mask=block_mask, scale=head_dim**-0.5, enable_gqa=num_heads != k_pool.shape[1],
    )
    return out[0, :, :num_tokens].transpose(0, 1).reshape(num_tokens, num_heads * head_dim)


def flex_layers(layers: Sequence[DecoderLayer], h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                k_pools: Sequence[torch.Tensor], v_pools: Sequence[torch.Tensor], slots: torch.Tensor,
                block_mask: Any, compiled: bool = True) -> torch.Tensor:
    """Every decoder layer of a step: its K/V written to the layer's pool at `slots`, then FlexAttention
    over the pool (`compiled` as in `flex_paged_attention`)."""
    for layer, k_pool, v_pool in zip(layers, k_pools, v_pools, strict=True):
        q, k, v = layer.pre_attention(h, cos, sin)
        k_pool.index_copy_(0, slots, k)
        v_pool.index_copy_(0, slots, v)
        h = layer.post_attention(h, flex_paged_attention(q, k_pool, v_pool, block_mask, compiled))
    return h
