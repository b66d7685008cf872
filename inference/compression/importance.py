"""Which decoder layers a shallower student can do without: measured, not assumed.

A layer's cost is what skipping it does to the model's output on the shipped calibration prompts:
the mean KL(full || skipped) of the next-token distributions over every prompt position. Layers
are removed greedily, one at a time, each time the one whose removal (on top of those already
removed) costs least, so interactions between removed layers count. The first and the last layer
are never removed (they map embeddings in and out of the residual stream).

Skipping is done by swapping the model's layer list, never by editing weights, so the model is
unchanged afterwards. Cost: (num_layers - k) forwards over the prompts for the k-th removal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, slots=True)
class LayerRemoval:
    """One greedy step: the layer removed and the KL to the full model after removing it."""

    layer: int
    kl: float


@contextmanager
def only_layers(model: Any, keep: list[int]) -> Iterator[Any]:
    """Run `model` with only the decoder layers at `keep` (in order); restored on exit."""
    layers, config = model.model.layers, model.config
    num_layers = config.num_hidden_layers
    model.model.layers = nn.ModuleList([layers[i] for i in keep])
    config.num_hidden_layers = len(keep)
    try:
        yield model
    finally:
        model.model.layers, config.num_hidden_layers = layers, num_layers


def _batches(prompts: list[list[int]], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(batch):  # right padding: positions unchanged
            ids[row, : len(prompt)], mask[row, : len(prompt)] = torch.tensor(prompt), 1
        yield ids, mask


@torch.inference_mode()
def _logprobs(model: Any, prompts: list[list[int]], batch_size: int) -> list[torch.Tensor]:
    out = []
    for ids, mask in _batches(prompts, batch_size):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        out.append(F.log_softmax(logits, dim=-1)[mask.bool()])
    return out


def _kl(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    total = sum(float((r.exp() * (r - o)).sum()) for r, o in zip(reference, other, strict=True))
    count = sum(r.shape[0] for r in reference)
    return max(0.0, total / max(1, count))


def layer_skip_costs(model: Any, prompts: list[list[int]], batch_size: int = 8) -> list[float]:
    """KL(full || model without layer i) for every layer i, each skipped alone."""
    num_layers = len(model.model.layers)
    reference = _logprobs(model, prompts, batch_size)
    costs = []
    for i in range(num_layers):
        with only_layers(model, [j for j in range(num_layers) if j != i]):
            costs.append(_kl(reference, _logprobs(model, prompts, batch_size)))
    return costs


def choose_layers(
    model: Any,
    prompts: list[list[int]],
    num_keep: int,
    batch_size: int = 8,
    progress: Callable[[LayerRemoval], None] | None = None,
) -> tuple[list[int], list[LayerRemoval]]:
    """The `num_keep` layers to keep (sorted) and the greedy removals that led there, in order."""
    num_layers = len(model.model.layers)
    if not 2 <= num_keep <= num_layers:
        raise ValueError(f"num_keep must be in [2, {num_layers}] (first and last layers stay), got {num_keep}")
    reference = _logprobs(model, prompts, batch_size)
    keep = list(range(num_layers))
    removals: list[LayerRemoval] = []
    while len(keep) > num_keep:
        best: LayerRemoval | None = None
        for layer in keep[1:-1]:
            with only_layers(model, [j for j in keep if j != layer]):
                kl = _kl(reference, _logprobs(model, prompts, batch_size))
            if best is None or kl < best.kl:
                best = LayerRemoval(layer, kl)
        assert best is not None
        keep.remove(best.layer)
        removals.append(best)
        if progress is not None:
            progress(best)
    return keep, removals
