"""`Sampler`: next tokens from a step's logits — greedy, temperature, top-k, top-p, penalties, logit bias, logprobs.

Rows with a seed sample with their request's own `torch.Generator`, so a seeded request gives
the same tokens whatever else shares its batch. Greedy rows are one vectorized argmax.
Logprobs are those of the model's distribution (before temperature and truncation), like
OpenAI's and vLLM's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference.schema.outputs import TokenLogprob
from inference.schema.sampling import SamplingParams


@dataclass(slots=True)
class SampleRow:
    params: SamplingParams
    generator: torch.Generator | None
    output_token_ids: list[int]
    blocked_token_ids: list[int]  # e.g. EOS before min_tokens
    num_samples: int = 1  # n > 1 draws from the first row of a request


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None  # one per token_ids entry when asked for


def _apply_penalties(logits: torch.Tensor, row: SampleRow) -> None:
    if not row.output_token_ids:
        return
    ids = torch.tensor(row.output_token_ids, device=logits.device)
    counts = torch.bincount(ids, minlength=logits.shape[-1]).to(logits.dtype)
    logits -= row.params.frequency_penalty * counts + row.params.presence_penalty * (counts > 0).to(logits.dtype)


def _truncate(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop[..., 0] = False  # a top_p that rounds to 0 in float32 would otherwise drop every token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def apply_logit_bias(logits: torch.Tensor, params: SamplingParams) -> None:
    """Add the request's `logit_bias` to one row of float logits, in place."""
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        logits[ids] += torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype, device=logits.device)


def _is_plain_greedy(row: SampleRow) -> bool:
    p = row.params
    return (p.is_greedy and row.num_samples == 1 and not p.has_penalties and not row.blocked_token_ids
            and p.logprobs is None and not p.logit_bias)


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> list[SampleResult]:
    """logits: [len(rows), vocab] in the model's dtype. Returns one result per row."""
    assert logits.shape[0] == len(rows)
    if all(_is_plain_greedy(r) for r in rows):
        # the common case: the max straight on the model's logits (bf16 -> fp32 is exact, so the
        # pick is the same); torch.max is several times faster than argmax on bf16 on CPU, and
        # like argmax it returns the first maximal index
        return [SampleResult([t], None) for t in torch.max(logits, dim=-1).indices.tolist()]
    # a copy: the in-place masking below must not touch the model's (inference-mode) logits
    logits = logits.to(torch.float32, copy=True)
    for i, row in enumerate(rows):
        if row.params.has_penalties:
            _apply_penalties(logits[i], row)
        apply_logit_bias(logits[i], row.params)
        if row.blocked_token_ids:
            logits[i, row.blocked_token_ids] = float("-inf")

    greedy = [i for i, r in enumerate(rows) if r.params.is_greedy and r.num_samples == 1]
    chosen: list[list[int]] = [[] for _ in rows]
    if greedy:
        picks = logits[greedy].argmax(dim=-1).tolist()
        for i, token in zip(greedy, picks, strict=True):
            chosen[i] = [token]
    for i, row in enumerate(rows):
        if chosen[i]:
            continue
        p = row.params
        if p.is_greedy:
            chosen[i] = [int(logits[i].argmax())] * row.num_samples
            continue
        scaled = _truncate(logits[i] / p.temperature, p.top_k, p.top_p)
        probs = scaled.softmax(-1)
        chosen[i] = torch.multinomial(probs, row.num_samples, replacement=True, generator=row.generator).tolist()

    wants_logprobs = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    results = [SampleResult(chosen[i], None) for i in range(len(rows))]
    if wants_logprobs:
        logp = torch.log_softmax(logits[wants_logprobs], dim=-1)
        for j, i in enumerate(wants_logprobs):
            k = rows[i].params.logprobs or 0
            top: dict[int, float] = {}
            if k:
                values, ids = torch.topk(logp[j], k)
                top = dict(zip(ids.tolist(), values.tolist(), strict=True))
            results[i].logprobs = [TokenLogprob(t, float(logp[j, t]), top) for t in chosen[i]]
    return results
