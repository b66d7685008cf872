"""Knowledge distillation on the teacher's own generations: logit KD plus sequence-level KD.

`teacher_sequences` has the teacher answer the shipped training prompts greedily (cached to disk,
so a resumed run does not regenerate). `train_student` then minimises, over every position of
those sequences, KL(teacher || student) on the full vocabulary, plus `ce_weight` x cross-entropy
on the teacher's tokens. CPU-friendly: bf16 autocast, frozen embeddings (tied to the LM head),
a tqdm bar (loss and the ETA of whichever budget ends first), a step and a wall-clock budget
(counted over resumed runs too; the learning rate decays along whichever budget is further
spent), and an atomic checkpoint every `ckpt_every` steps that a later run with the same
directory resumes from.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from inference.compression.base import compute_dtype
from inference.compression.quality import greedy_generate

UNBOUNDED_STEPS = 100_000  # the step budget of a run that only a time budget ends


@dataclass(frozen=True, slots=True)
class KDBudget:
    max_steps: int = 200
    max_seconds: float = 600.0
    batch_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 10
    ce_weight: float = 0.5
    ckpt_every: int = 25


@dataclass(slots=True)
class KDStats:
    steps: int  # total optimizer steps taken (across resumed runs)
    resumed_from: int
    seconds: float  # training time, this run and the runs it resumed
    last_loss: float


def teacher_sequences(
    teacher: Any, prompts: list[list[int]], max_new_tokens: int, pad_id: int, cache: Path | None = None
) -> list[list[int]]:
    """prompt + greedy teacher continuation for every prompt (loaded from `cache` when it matches)."""
    if cache is not None and cache.is_file():
        saved = torch.load(cache)
        if saved["prompts"] == prompts and saved["max_new_tokens"] == max_new_tokens:
            return list(saved["sequences"])
    continuations = greedy_generate(teacher, prompts, max_new_tokens, pad_id, batch_size=32,
                                    desc="teacher continuations")
    sequences = [p + c for p, c in zip(prompts, continuations, strict=True)]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"prompts": prompts, "max_new_tokens": max_new_tokens, "sequences": sequences}, cache)
    return sequences


def _batch(sequences: list[list[int]], step: int, batch_size: int, seed: int) -> list[list[int]]:
    """The step's batch: a fixed permutation per epoch, so a resumed run sees the same order."""
    n = len(sequences)
    picked = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(k, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        picked.append(sequences[int(order[index])])
    return picked


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, ce_weight: float) -> torch.Tensor:
    """Mean over real next-token positions of KL(teacher || student) + ce_weight * CE(teacher tokens)."""
    valid = (mask[:, 1:] > 0).flatten()
    s = F.log_softmax(student_logits[:, :-1].float(), dim=-1).flatten(0, 1)[valid]
    t = F.log_softmax(teacher_logits[:, :-1].float(), dim=-1).flatten(0, 1)[valid]
    kl = (t.exp() * (t - s)).sum(-1).mean()
    ce = F.nll_loss(s, ids[:, 1:].flatten()[valid])
    return kl + ce_weight * ce


def train_student(
    teacher: Any, student: Any, sequences: list[list[int]], budget: KDBudget, ckpt_dir: Path | None,
    tag: str, desc: str = "distill", seed: int = 0,
) -> KDStats:
    """Distil `teacher` into `student` (in place) on `sequences` within `budget`.

    A checkpoint in `ckpt_dir` is resumed only if it was written under the same `tag` (which names
    the student's shape and the data), so a changed student never loads a stale one.
    """
    for name, param in student.named_parameters():
        param.requires_grad_("embed_tokens" not in name and "lm_head" not in name)
    params = [p for p in student.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=budget.lr, weight_decay=0.0)

    def spent(step: int, seconds: float) -> float:
        return max(step / max(1, budget.max_steps), seconds / budget.max_seconds)

    def lr_at(step: int, seconds: float) -> float:
        warm = min(1.0, (step + 1) / max(1, budget.warmup_steps))
        return budget.lr * warm * (0.1 + 0.9 * max(0.0, 1 - spent(step, seconds)))

    ckpt = None if ckpt_dir is None else ckpt_dir / "kd_checkpoint.pt"
    step, before_s = 0, 0.0
    state = torch.load(ckpt, weights_only=False) if ckpt is not None and ckpt.is_file() else None
    if state is not None and state.get("tag") == tag:
        student.load_state_dict(state["student"])
        optim.load_state_dict(state["optim"])
        step, before_s = int(state["step"]), float(state.get("seconds", 0.0))
    resumed_from, started, loss_value = step, time.monotonic(), float("nan")

    def elapsed() -> float:
        return before_s + time.monotonic() - started

    autocast = compute_dtype() == torch.bfloat16  # mixed precision only where bf16 is native
    student.train()
    # a bar over the step budget only when that is the limit that will end the run; under a time
    # budget (`--budget-minutes`) the count, the rate and the ETA postfix tell the progress
    total = budget.max_steps if budget.max_steps < UNBOUNDED_STEPS else None
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True)
    while step < budget.max_steps and elapsed() < budget.max_seconds:
        batch = _batch(sequences, step, budget.batch_size, seed)
        width = max(len(s) for s in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
            student_logits = student(input_ids=ids, attention_mask=mask).logits
        loss = kd_loss(student_logits, teacher_logits, ids, mask, budget.ce_weight)
        for group in optim.param_groups:
            group["lr"] = lr_at(step, elapsed())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        step += 1
        loss_value = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", eta=_eta(step - resumed_from, step, elapsed(), started, budget))
        if ckpt is not None and (step % budget.ckpt_every == 0 or step == budget.max_steps):
            _save_checkpoint(ckpt, student, optim, step, tag, elapsed())
    bar.close()
    if ckpt is not None and step > resumed_from:
        _save_checkpoint(ckpt, student, optim, step, tag, elapsed())
    student.eval()
    return KDStats(step, resumed_from, elapsed(), loss_value)


def _eta(steps_now: int, step: int, elapsed_s: float, started: float, budget: KDBudget) -> str:
    """Time left until the step budget or the time budget ends, whichever is first, as m:ss."""
    per_step = (time.monotonic() - started) / max(1, steps_now)
    left = min((budget.max_steps - step) * per_step, budget.max_seconds - elapsed_s)
    minutes, seconds = divmod(int(max(0.0, left)), 60)
    return f"{minutes}:{seconds:02d}"


def _save_checkpoint(path: Path, student: Any, optim: torch.optim.Optimizer, step: int, tag: str,
                     seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {"student": student.state_dict(), "optim": optim.state_dict(), "step": step, "tag": tag,
             "seconds": seconds}
    torch.save(state, tmp)
    os.replace(tmp, path)
