"""Prompts to send: synthetic (seeded random words of `--input-len`) or read from a JSONL file.

A prompt file has one JSON object a line with `prompt` (text) or `messages` (chat messages), and
optionally `output_len` (max_tokens for that prompt). `builtin` names the small set shipped in
load_tests/data/prompts.jsonl. Prompts are cycled when a run sends more requests than there are.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

BUILTIN_PROMPTS = Path(__file__).parents[1] / "data" / "prompts.jsonl"

WORDS_FILE = Path(__file__).parents[1] / "data" / "words.txt"


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request's input: `text` for completions, `messages` for chat (either is derived if absent)."""

    text: str
    messages: tuple[dict[str, str], ...]
    output_len: int | None = None


def synthetic_prompts(num: int, input_len: int, seed: int) -> list[Prompt]:
    """`num` distinct prompts of `input_len` random words each, reproducible from `seed`."""
    rng = random.Random(seed)
    words = WORDS_FILE.read_text().split()  # common English words, ~1.2-1.4 tokens each
    prompts = []
    for _ in range(num):
        text = " ".join(rng.choice(words) for _ in range(input_len))
        prompts.append(Prompt(text=text, messages=({"role": "user", "content": text},)))
    return prompts


def _parse_line(line: str, where: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with 'prompt' or 'messages'")
    output_len = obj.get("output_len")
    if output_len is not None and (not isinstance(output_len, int) or output_len < 1):
        raise ValueError(f"{where}: output_len must be a positive integer, got {output_len!r}")
    if isinstance(obj.get("prompt"), str):
        text = obj["prompt"]
        return Prompt(text=text, messages=({"role": "user", "content": text},), output_len=output_len)
    messages = obj.get("messages")
    if isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        text = "\n".join(m["content"] for m in messages)
        return Prompt(text=text, messages=tuple(messages), output_len=output_len)
    raise ValueError(f"{where}: needs 'prompt' (a string) or 'messages' (a list of {{role, content}})")


def load_prompt_file(path: str | Path) -> list[Prompt]:
    """Read a JSONL prompt file (`builtin` for the shipped set); blank lines are skipped."""
    file = BUILTIN_PROMPTS if str(path) == "builtin" else Path(path)
    try:
        lines = file.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read prompt file {file}: {e.strerror}") from e
    prompts = [_parse_line(line, f"{file}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {file} has no prompts")
    return prompts
