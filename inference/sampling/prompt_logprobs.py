"""Prompt logprobs: the logprob of every prompt token given the ones before it (for `echo` + `logprobs`).

Only requests that ask get logits for their prompt positions; everyone else keeps "logits only
for the rows that sample". With chunked prefill the logprobs arrive chunk by chunk: each prefill
chunk of an asking request adds the rows of its positions that predict a prompt token (position p
predicts token p + 1; the last prompt position predicts the first output token and is the
sampling row). The first prompt token has no logprob (None, as in vLLM and OpenAI). A recompute
after preemption asks for nothing: the logprobs are already there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.engine.scheduler import SchedulerOutput
from inference.engine.sequence import SequenceGroup
from inference.schema.outputs import TokenLogprob


@dataclass(slots=True)
class PromptLogprobSpan:
    """Rows for prompt positions [start_pos, start_pos + num_rows) of one prefill chunk."""

    group: SequenceGroup
    prefill_index: int  # which of the step's prefills
    start_pos: int
    num_rows: int


def prompt_logprob_spans(sched: SchedulerOutput) -> list[PromptLogprobSpan]:
    """The prompt positions whose logits this step must return, in the order they are appended."""
    spans = []
    for index, item in enumerate(sched.prefills):
        group = item.group
        if group.params.prompt_logprobs is None or group.prompt_logprobs is None:
            continue
        chunk_start = item.seq.num_computed_tokens
        start = max(chunk_start, len(group.prompt_logprobs))
        stop = min(chunk_start + item.num_tokens, len(group.prompt_token_ids) - 1)
        if stop > start:
            spans.append(PromptLogprobSpan(group, index, start, stop - start))
    return spans


def record_prompt_logprobs(spans: Sequence[PromptLogprobSpan], logits: torch.Tensor) -> dict[str, Exception]:
    """logits: [sum(num_rows), vocab], the spans' rows in order; appends to each group's prompt_logprobs.
    A span that fails ends only its own request: returns {request_id: error} for the engine to end."""
    failed: dict[str, Exception] = {}
    offset = 0
    for span in spans:
        rows = logits[offset : offset + span.num_rows]
        offset += span.num_rows
        try:
            _record(span, rows)
        except (MemoryError, torch.OutOfMemoryError):  # the engine's failure, not this request's
            raise
        except Exception as e:  # isolated per request; the engine ends it with this error
            failed[span.group.request_id] = e
    return failed


def prompt_logprob_tensors(
    rows: torch.Tensor, targets: list[int], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On the rows' device: each target's log-probability [rows], and the top k's values and ids
    [rows, k] (empty when k is 0)."""
    logp = torch.log_softmax(rows.float(), dim=-1)
    target_ids = torch.tensor(targets, dtype=torch.int64).to(logp.device)
    chosen = logp.gather(1, target_ids[:, None])[:, 0]
    values, ids = torch.topk(logp, k, dim=-1)
    return chosen, values, ids


def _record(span: PromptLogprobSpan, rows: torch.Tensor) -> None:
    prompt = span.group.prompt_token_ids
    targets = prompt[span.start_pos + 1 : span.start_pos + 1 + span.num_rows]
    k = span.group.params.prompt_logprobs or 0
    chosen, values, ids = prompt_logprob_tensors(rows, targets, k)
    tops: list[dict[int, float]] = [{} for _ in targets]
    if k:
        tops = [dict(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    assert span.group.prompt_logprobs is not None
    span.group.prompt_logprobs.extend(
        TokenLogprob(t, lp, top) for t, lp, top in zip(targets, chosen.tolist(), tops, strict=True)
    )
