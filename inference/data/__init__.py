"""The data the project ships for compression: prompts, a held-out text and a QA set.

  prompts.jsonl  instructions ({"prompt", "split": "train" | "eval"}); `train` prompts calibrate
                 pruning and feed distillation (the teacher answers them), `eval` prompts are held
                 out for greedy agreement and KL;
  heldout.txt    plain English paragraphs for perplexity, never used in training;
  qa.jsonl       short questions with checkable answers ({"category", "question", "answers"}):
                 capitals, arithmetic, colours, opposites, simple facts.
All written for this project (no downloads).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class QAItem:
    category: str
    question: str
    answers: tuple[str, ...]

    def is_correct(self, response: str) -> bool:
        """An accepted answer appears in the response as a whole word (case-insensitive)."""
        return any(re.search(rf"(?<![\w]){re.escape(a)}(?![\w])", response, re.IGNORECASE) for a in self.answers)


def _read(name: str) -> str:
    return resources.files("inference.data").joinpath(name).read_text(encoding="utf-8")


def _jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _read(name).splitlines() if line.strip()]


def load_prompts(split: Literal["train", "eval"]) -> list[str]:
    return [row["prompt"] for row in _jsonl("prompts.jsonl") if row["split"] == split]


def load_heldout_text() -> str:
    return _read("heldout.txt")


def load_qa() -> list[QAItem]:
    return [QAItem(row["category"], row["question"], tuple(row["answers"])) for row in _jsonl("qa.jsonl")]


def chat_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a one-turn chat with the generation prompt (plain text if no chat template)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer.encode(prompt)]
