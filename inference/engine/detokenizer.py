"""Incremental detokenization and stop strings at the engine's edge.

Text is produced by decoding a short window of recent token ids, so a multi-byte character
split over several tokens is held back until it is complete: no delta ever carries broken UTF-8
(U+FFFD from a partial sequence). Stop strings are searched in the text as it grows; while a
request is running, the last `max(len(stop)) - 1` characters are held back, so text that turns
out to start a stop string is never streamed.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: list[str], include_stop: bool) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self.num_emitted_chars = 0
        self.stop = stop
        self.include_stop = include_stop
        self.hold_back = max((len(s) for s in stop), default=1) - 1

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add_token(self, token_id: int) -> str | None:
        """Append a generated token; returns the stop string if the text now contains one."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            new = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return self._append(new)
        return None

    def _append(self, new: str) -> str | None:
        search_from = max(0, len(self.text) - self.hold_back)
        self.text += new
        for stop in self.stop:
            at = self.text.find(stop, search_from)
            if at >= 0:
                self.text = self.text[: at + len(stop) if self.include_stop else at]
                return stop
        return None

    def take_delta(self, finished: bool) -> str:
        """Text not yet handed out; while running, the tail that could start a stop string stays back."""
        end = len(self.text) if finished or not self.stop else max(self.num_emitted_chars, len(self.text) - self.hold_back)
        delta = self.text[self.num_emitted_chars : end]
        self.num_emitted_chars = end
        return delta
