"""Per-request grammar masks on a step's logits before sampling (structured output).

Only rows whose request has a grammar pay: a batch without one comes back as it went in. The
sampler then adds `logit_bias` and penalties and computes logprobs, so a constrained sequence's
logprobs are those of the distribution it was actually sampled from.
"""

from __future__ import annotations

import torch

from inference.sampling.structured_output import GrammarState, apply_grammar_masks
from inference.schema.sampling import SamplingParams


def process_logits(
    logits: torch.Tensor, params: list[SamplingParams], grammars: list[GrammarState | None]
) -> torch.Tensor:
    """logits [rows, vocab]; returns them with grammar masks applied (a float32 copy if any row has one)."""
    if all(g is None for g in grammars):
        return logits
    # a copy we own: the model's output is an inference-mode tensor (no in-place updates outside it)
    logits = logits.float() if logits.dtype != torch.float32 else logits.clone()
    apply_grammar_masks(logits, grammars)
    return logits
