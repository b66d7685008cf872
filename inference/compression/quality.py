"""Quality of a variant against the full model: greedy agreement, token KL, perplexity, QA accuracy.

The reference is the full model's greedy continuation of each held-out prompt. Both models are
scored teacher-forced on those same sequences, so every position compares like with like:
  agreement = share of continuation positions where the variant's argmax is the full model's token;
  kl        = mean over those positions of KL(full || variant), nats.
Perplexity is on the shipped held-out text; QA accuracy is greedy answers checked against the
accepted answers. Models are plain Hugging Face causal LMs (bitsandbytes and torch-int8 included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from inference.data import QAItem, chat_prompt_ids


@dataclass(slots=True)
class Reference:
    """The full model's greedy continuations and its log-probs over them."""

    sequences: list[list[int]]  # prompt + continuation token ids
    prompt_lens: list[int]
    logprobs: list[torch.Tensor]  # per sequence: [continuation_len, vocab] float32 log-softmax


def greedy_agreement(ref_logprobs: torch.Tensor, var_logits: torch.Tensor) -> float:
    """Share of rows whose argmax matches. Both [N, vocab]."""
    return float((ref_logprobs.argmax(-1) == var_logits.argmax(-1)).float().mean())


def mean_kl(ref_logprobs: torch.Tensor, var_logits: torch.Tensor) -> float:
    """Mean over rows of KL(ref || var) in nats; clamped at 0 against float round-off."""
    var_logprobs = F.log_softmax(var_logits.float(), dim=-1)
    kl = (ref_logprobs.exp() * (ref_logprobs - var_logprobs)).sum(-1)
    return max(0.0, float(kl.mean()))


@torch.inference_mode()
def continuation_logits(model: Any, sequences: list[list[int]], prompt_lens: list[int], batch_size: int = 8) -> list[torch.Tensor]:
    """For each sequence, the logits that predict its continuation tokens: [len - prompt_len, vocab]."""
    out: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        width = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, seq in enumerate(batch):  # right padding: positions are unchanged
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        for row, seq in enumerate(batch):
            p = prompt_lens[start + row]
            out.append(logits[row, p - 1 : len(seq) - 1])
    return out


@torch.inference_mode()
def greedy_generate(model: Any, prompts: list[list[int]], max_new_tokens: int, pad_id: int, batch_size: int = 16,
                    desc: str | None = None) -> list[list[int]]:
    """Greedy continuations with HF `generate` (left-padded batches); stops at EOS. `desc`: show a
    progress bar over the batches under that name (for long runs)."""
    from tqdm import tqdm

    results: list[list[int]] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None, dynamic_ncols=True):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, prompt in enumerate(batch):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
        )
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        for row in range(len(batch)):
            tokens = out[row, width:].tolist()
            cut = next((i + 1 for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
            results.append(tokens[:cut])
    return results


def build_reference(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 32) -> Reference:
    """The full model's greedy continuations of `prompts` and its log-probs along them."""
    prompt_ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    continuations = greedy_generate(model, prompt_ids, max_new_tokens, pad)
    keep = [i for i, c in enumerate(continuations) if c]
    sequences = [prompt_ids[i] + continuations[i] for i in keep]
    lens = [len(prompt_ids[i]) for i in keep]
    logits = continuation_logits(model, sequences, lens)
    return Reference(sequences, lens, [F.log_softmax(x, dim=-1) for x in logits])


def compare_to_reference(model: Any, reference: Reference) -> tuple[float, float]:
    """(greedy agreement, mean KL) of `model` against the reference, over all continuation positions."""
    logits = torch.cat(continuation_logits(model, reference.sequences, reference.prompt_lens))
    ref = torch.cat(reference.logprobs)
    return greedy_agreement(ref, logits), mean_kl(ref, logits)


@torch.inference_mode()
def perplexity(model: Any, tokenizer: Any, text: str, window: int = 256) -> float:
    """exp(mean next-token NLL) over the text, in non-overlapping windows of `window` tokens."""
    ids = [int(i) for i in tokenizer(text)["input_ids"]]
    total_nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor(ids[start : start + window + 1])[None]
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk[:, :-1]).logits.float()
        nll = F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
        total_nll += float(nll)
        count += chunk.shape[1] - 1
    return math.exp(total_nll / max(1, count))


def qa_accuracy(model: Any, tokenizer: Any, items: list[QAItem], max_new_tokens: int = 24) -> float:
    """Share of questions whose greedy answer contains an accepted answer."""
    prompts = [chat_prompt_ids(tokenizer, f"{item.question} Answer briefly.") for item in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    answers = greedy_generate(model, prompts, max_new_tokens, pad, batch_size=32)
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    return sum(item.is_correct(text) for item, text in zip(items, texts, strict=True)) / max(1, len(items))
