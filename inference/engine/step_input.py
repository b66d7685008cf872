"""`StepInput`: the tensors of one model step, built on rank 0 from the scheduler's output.

Tokens of all scheduled sequences are flattened into one batch of T tokens (decodes first,
then prompt chunks), so every linear layer runs once per step. Attention needs, per decode, its
block table and context length (the compact form: the model derives pool slots from them where
its path gathers), and per prompt chunk, its context slots if it continues an earlier chunk (the
gathering paths) and its block table (FlexAttention, which reads the pool in place).
Rank 0 broadcasts this object to the other ranks of its tensor-parallel group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from inference.engine.scheduler import SchedulerOutput

if TYPE_CHECKING:
    from inference.sampling.prompt_logprobs import PromptLogprobSpan


@dataclass(slots=True)
class PrefillSegment:
    start: int  # offset of its first token in the flattened batch
    num_tokens: int
    num_context: int  # tokens of the same sequence already in the pool before this chunk
    context_slots: torch.Tensor | None  # [num_context + num_tokens] pool slots, None if num_context == 0
    mask: torch.Tensor | None = None  # [num_tokens, num_context + num_tokens] causal, offset by the context
    blocks: torch.Tensor | None = None  # int64 block table up to this chunk's last token (FlexAttention reads it)


@dataclass(slots=True)
class StepInput:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64: where each token's K/V is written
    num_decodes: int
    decode_tables: torch.Tensor | None  # [num_decodes, max_blocks] int64 block tables (padded with 0)
    decode_lens: torch.Tensor | None  # [num_decodes] int64 context length including the new token
    prefills: list[PrefillSegment]
    logits_indices: torch.Tensor  # [S + P] rows whose logits are needed: S that sample, then P prompt-logprob rows
    block_size: int = 16
    block_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def _slots(block_table: list[int], start: int, stop: int, block_size: int) -> list[int]:
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, stop)]


def build_step_input(
    sched: SchedulerOutput, block_size: int, block_copies: list[tuple[int, int]],
    prompt_spans: Sequence[PromptLogprobSpan] = (),
) -> StepInput:
    input_ids: list[int] = []
    positions: list[int] = []
    slot_mapping: list[int] = []
    logits_indices: list[int] = []

    decode_tables = []
    decode_lens = []
    for item in sched.decodes:
        seq = item.seq
        pos = seq.num_computed_tokens
        input_ids.append(seq.token_ids[pos])
        positions.append(pos)
        slot_mapping.append(seq.block_table[pos // block_size] * block_size + pos % block_size)
        logits_indices.append(len(input_ids) - 1)
        decode_tables.append(seq.block_table)
        decode_lens.append(pos + 1)

    table = lens = None
    if decode_tables:
        max_blocks = max(len(t) for t in decode_tables)
        table = torch.tensor([t + [0] * (max_blocks - len(t)) for t in decode_tables], dtype=torch.int64)
        lens = torch.tensor(decode_lens, dtype=torch.int64)

    prefills = []
    for item in sched.prefills:
        seq, n = item.seq, item.num_tokens
        start_pos = seq.num_computed_tokens
        start = len(input_ids)
        input_ids.extend(seq.token_ids[start_pos : start_pos + n])
        positions.extend(range(start_pos, start_pos + n))
        slot_mapping.extend(_slots(seq.block_table, start_pos, start_pos + n, block_size))
        context = mask = None
        if start_pos > 0:
            context = torch.tensor(_slots(seq.block_table, 0, start_pos + n, block_size), dtype=torch.int64)
            mask = torch.arange(start_pos + n)[None, :] <= (torch.arange(n)[:, None] + start_pos)
        blocks = torch.tensor(seq.block_table[: -(-(start_pos + n) // block_size)], dtype=torch.int64)
        prefills.append(PrefillSegment(start, n, start_pos, context, mask, blocks))
        if item.completes_prefill:
            logits_indices.append(len(input_ids) - 1)
    for span in prompt_spans:  # after every sampling row, so those keep their order
        segment = prefills[span.prefill_index]
        first = segment.start + span.start_pos - segment.num_context
        logits_indices.extend(range(first, first + span.num_rows))

    return StepInput(
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64),
        num_decodes=len(sched.decodes),
        decode_tables=table,
        decode_lens=lens,
        prefills=prefills,
        logits_indices=torch.tensor(logits_indices, dtype=torch.int64),
        block_size=block_size,
        block_copies=block_copies,
    )
