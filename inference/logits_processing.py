"""Per-request changes to a step's logits before sampling: `logit_bias` and grammar masks.

Only rows whose request asks pay: a batch with neither comes back as it went in. Logprobs are
computed by the sampler after this (like penalties), so a constrained sequence's logprobs are
those of the distribution it was actually sampled from.
"""

from __future__ import annotations

import torch

from inference.errors import InvalidSamplingParamsError
from inference.sampling_params import SamplingParams
from inference.structured_output import GrammarState, apply_grammar_masks


def check_logit_bias(params: SamplingParams, vocab_size: int) -> None:
    """Token ids must be in the model's vocabulary (the engine knows it; the API does not)."""
    if not params.logit_bias:
        return
    bad = sorted(t for t in params.logit_bias if not 0 <= t < vocab_size)
    if bad:
        raise InvalidSamplingParamsError("logit_bias", f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")


def process_logits(
    logits: torch.Tensor, params: list[SamplingParams], grammars: list[GrammarState | None]
) -> torch.Tensor:
    """logits [rows, vocab]; returns them with biases added and grammar masks applied (float32 if changed)."""
    biased = [i for i, p in enumerate(params) if p.logit_bias]
    if not biased and all(g is None for g in grammars):
        return logits
    # a copy we own: the model's output is an inference-mode tensor (no in-place updates outside it)
    logits = logits.float() if logits.dtype != torch.float32 else logits.clone()
    for i in biased:
        bias = params[i].logit_bias
        assert bias is not None
        ids = torch.tensor(list(bias.keys()), dtype=torch.int64, device=logits.device)
        values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
        logits[i].index_add_(0, ids, values)
    apply_grammar_masks(logits, grammars)
    return logits
