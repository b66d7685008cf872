"""Beam search over a request's live beams, one step at a time (the scheduler steps all beams together).

Each step keeps the `n` best continuations of all live beams by cumulative logprob. A candidate
ending in EOS becomes a finished hypothesis, scored by cumulative logprob / length**length_penalty
(as Hugging Face does). A beam chosen by several children is forked: its full KV blocks are
shared and only the partly filled last block is copied. The search ends when no live beam can
beat the n-th best finished hypothesis, or at max_tokens; the output is the n best, best first.
"""

from __future__ import annotations

import copy

import torch

from inference.engine.block_manager import BlockManager
from inference.engine.sequence import Sequence, SequenceGroup, SequenceStatus


def _score(seq: Sequence, length_penalty: float) -> float:
    return seq.cumulative_logprob / max(1, seq.num_output_tokens) ** length_penalty


def _clone(parent: Sequence, seq_id: int) -> Sequence:
    child = copy.copy(parent)
    child.seq_id = seq_id
    child.token_ids = list(parent.token_ids)
    child.block_table = []
    child.block_hashes = list(parent.block_hashes)  # the same tokens so far; they part from here
    child.detokenizer = copy.copy(parent.detokenizer)
    child.detokenizer.ids = list(parent.detokenizer.ids)
    return child


def candidate_scores(cumulative: list[float], logprobs: torch.Tensor) -> torch.Tensor:
    """Every (beam, token) continuation's cumulative logprob, flattened, on the logprobs' device."""
    prior = torch.tensor(cumulative, dtype=logprobs.dtype).to(logprobs.device)
    return (prior[:, None] + logprobs).view(-1)


def beam_step(
    group: SequenceGroup,
    logprobs: torch.Tensor,  # [len(live beams), vocab], rows in group.live_seqs order
    block_manager: BlockManager,
    next_seq_id: list[int],  # a one-element counter shared with the engine
) -> list[tuple[int, int]]:
    """Advance one step; returns the KV block copies the forks need before the next forward."""
    params = group.params
    width = params.n
    live = group.live_seqs
    scores = candidate_scores([s.cumulative_logprob for s in live], logprobs)
    top_scores, top_ids = torch.topk(scores, min(2 * width, scores.numel()))
    vocab = logprobs.shape[1]
    at_min = live[0].num_output_tokens + 1 >= params.min_tokens

    chosen: list[tuple[int, int, float]] = []  # (parent index, token, cumulative logprob)
    for rank, (score, flat) in enumerate(zip(top_scores.tolist(), top_ids.tolist(), strict=True)):
        parent, token = divmod(flat, vocab)
        if token in group.eos_token_ids and not params.ignore_eos and at_min:
            if rank < width:
                done = _clone(live[parent], next_seq_id[0])
                next_seq_id[0] += 1
                done.token_ids.append(token)
                done.cumulative_logprob = score
                done.status, done.finish_reason, done.stop_reason = SequenceStatus.FINISHED, "stop", token
                group.finished_beams.append(done)
            continue
        chosen.append((parent, token, score))
        if len(chosen) == width:
            break

    copies: list[tuple[int, int]] = []
    children_of: dict[int, int] = {}
    new_live: list[tuple[Sequence, int, float]] = []
    for parent, token, score in chosen:
        source = live[parent]
        if parent not in children_of:
            seq = source  # the first child continues in place
        else:
            seq = _clone(source, next_seq_id[0])
            next_seq_id[0] += 1
            table, block_copy = block_manager.fork(source.block_table, source.num_computed_tokens)
            seq.block_table = table
            if block_copy:
                copies.append(block_copy)
        children_of[parent] = children_of.get(parent, 0) + 1
        new_live.append((seq, token, score))
    for index, seq in enumerate(live):
        if index not in children_of:
            block_manager.free(seq.block_table)
    survivors = []
    for seq, token, score in new_live:
        seq.token_ids.append(token)
        seq.cumulative_logprob = score
        survivors.append(seq)
    group.seqs = survivors
    _maybe_finish(group, block_manager)
    return copies


def _maybe_finish(group: SequenceGroup, block_manager: BlockManager) -> None:
    params = group.params
    width = params.n
    lp = params.length_penalty
    finished = sorted(group.finished_beams, key=lambda s: _score(s, lp), reverse=True)[:width]
    live = group.seqs
    out_len = live[0].num_output_tokens if live else 0
    hit_length = out_len >= group.max_tokens
    if len(finished) >= width and live:
        best_live = max(s.cumulative_logprob for s in live) / max(1, out_len) ** lp
        if best_live <= _score(finished[-1], lp):
            hit_length = True  # no live beam can still win
    if not live or hit_length:
        for seq in live:
            block_manager.free(seq.block_table)
            if seq.finish_reason is None:
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, "length"
        ranked = sorted(group.finished_beams + live, key=lambda s: _score(s, lp), reverse=True)[:width]
        group.finished_beams = []
        for index, seq in enumerate(ranked):
            seq.index = index
            seq.status = SequenceStatus.FINISHED
        group.seqs = ranked
