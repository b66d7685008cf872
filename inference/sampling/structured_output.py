"""Structured output: grammars that constrain a sequence's next tokens (JSON schema, regex, choice, tool calls).

A request asks with a `GuidedDecoding` (kind + spec). `StructuredOutputs` compiles it once with
xgrammar against the model's tokenizer and caches the result by (kind, spec); compilation is
thread-safe, so callers compile off the engine loop (`AsyncLLMEngine` does it in a worker thread)
and the engine only finds the cached grammar. Each constrained sequence holds a `GrammarState`
(an xgrammar matcher) that advances with every sampled token; `apply_grammar_masks` sets the
logits of tokens the grammar forbids to -inf for those rows only, so batch mates pay nothing.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import torch

from inference.schema.errors import InvalidRequestError
from inference.schema.guided import GuidedDecoding
from inference.schema.tools import CALL_CLOSE, CALL_OPEN

MAX_CACHED_GRAMMARS = 256
# JSON as every grammar here writes it (guided JSON, tool-call arguments): compact separators, no
# runs of whitespace (small models fall into them), no properties beyond the schema
COMPACT_JSON: dict[str, Any] = {"any_whitespace": False, "strict_mode": True}


class GrammarState:
    """One sequence's position in its grammar; `extra_mask` (packed like the bitmask) is ANDed in."""

    __slots__ = ("extra_mask", "matcher")

    def __init__(self, matcher: Any, extra_mask: torch.Tensor | None = None) -> None:
        self.matcher = matcher
        self.extra_mask = extra_mask

    def accept(self, token_id: int) -> bool:
        return bool(self.matcher.accept_token(token_id))

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> bool:
        """Write the allowed next tokens into `bitmask[row]`; False when every token is allowed."""
        restricted = bool(self.matcher.fill_next_token_bitmask(bitmask, row))
        if self.extra_mask is not None:
            bitmask[row] &= self.extra_mask
            return True
        return restricted

    @property
    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())


def pack_token_mask(allowed: torch.Tensor) -> torch.Tensor:
    """bool [vocab] -> int32 [ceil(vocab / 32)], xgrammar's layout (token j is bit j % 32 of word j // 32)."""
    padded = torch.zeros((allowed.numel() + 31) // 32 * 32, dtype=torch.int64)
    padded[: allowed.numel()] = allowed.to(torch.int64)
    words = (padded.view(-1, 32) << torch.arange(32, dtype=torch.int64)).sum(-1)
    return words.to(torch.int32)  # wraps to two's complement, as the bitmask stores it


def _choice_grammar(spec: str) -> str:
    choices = json.loads(spec)
    # an EBNF string literal takes the same escapes as a JSON string
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def tool_call_tag(spec: str) -> Any:
    """xgrammar's structural tag for calls in the Hermes format, each call's arguments held to its
    function's schema in compact JSON (as `json` guided output: no runs of whitespace): text or calls
    for "auto"; for "required" one call or more and nothing else; for a named function, that call."""
    import xgrammar as xgr
    from xgrammar.structural_tag import GrammarFormat, TagFormat, TagsWithSeparatorFormat, TriggeredTagsFormat

    request = json.loads(spec)
    choice, single = request["tool_choice"], not request["parallel_tool_calls"]
    tools = request["tools"]
    if isinstance(choice, dict):
        tools = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
    tags = [
        TagFormat(
            begin=f'{CALL_OPEN}\n{{"name": {json.dumps(t["function"]["name"])}, "arguments": ',
            content=GrammarFormat(grammar=str(xgr.Grammar.from_json_schema(
                json.dumps(t["function"].get("parameters", {"type": "object"})), **COMPACT_JSON))),
            end=f"}}\n{CALL_CLOSE}",
        )
        for t in tools
    ]
    if choice == "auto":
        return xgr.StructuralTag(format=TriggeredTagsFormat(triggers=[CALL_OPEN], tags=tags, stop_after_first=single))
    if choice == "required":
        return xgr.StructuralTag(format=TagsWithSeparatorFormat(tags=tags, separator="\n", at_least_one=True,
                                                                stop_after_first=single))
    return xgr.StructuralTag(format=tags[0])


class StructuredOutputs:
    """Compiles and caches grammars for one tokenizer; makes per-sequence `GrammarState`s."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = stop_token_ids
        self._compiler: Any = None
        self._no_control_chars: torch.Tensor | None = None
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def _get_compiler(self) -> Any:
        import xgrammar as xgr

        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids or None
            )
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            # xgrammar's JSON strings take raw control characters, which JSON (and json.loads) refuse
            allowed = torch.ones(self.vocab_size, dtype=torch.bool)
            for token, text in enumerate(info.decoded_vocab[: self.vocab_size]):
                if any(b < 0x20 for b in text):
                    allowed[token] = False
            self._no_control_chars = pack_token_mask(allowed)
        return self._compiler

    def compile(self, guided: GuidedDecoding) -> Any:
        """The compiled grammar (cached); a bad spec raises InvalidRequestError naming `guided.param`."""
        with self._lock:
            compiled = self._cache.get(guided.key)
            if compiled is not None:
                self._cache.move_to_end(guided.key)
                return compiled
            compiler = self._get_compiler()
        try:
            compiled = self._compile(compiler, guided)
        except (RuntimeError, ValueError) as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise InvalidRequestError(f"{guided.param}: cannot be compiled to a grammar: {reason}", guided.param) from e
        with self._lock:
            self._cache[guided.key] = compiled
            while len(self._cache) > MAX_CACHED_GRAMMARS:
                self._cache.popitem(last=False)
        return compiled

    @staticmethod
    def _compile(compiler: Any, guided: GuidedDecoding) -> Any:
        import xgrammar as xgr

        if guided.kind == "json":
            return compiler.compile_json_schema(guided.spec, **COMPACT_JSON)
        if guided.kind == "regex":
            return compiler.compile_regex(guided.spec)
        if guided.kind == "tool_calls":
            return compiler.compile_structural_tag(tool_call_tag(guided.spec))
        return compiler.compile_grammar(xgr.Grammar.from_ebnf(_choice_grammar(guided.spec)))

    def new_state(self, guided: GuidedDecoding) -> GrammarState:
        import xgrammar as xgr

        compiled = self.compile(guided)  # builds the compiler and the masks on first use
        # compact JSON never needs a control character (no newlines or tabs between tokens either)
        extra = self._no_control_chars if guided.kind == "json" else None
        return GrammarState(xgr.GrammarMatcher(compiled), extra)


def apply_grammar_masks(logits: torch.Tensor, states: list[GrammarState | None]) -> None:
    """In place: -inf for the tokens each row's grammar forbids now. Rows without a grammar are untouched."""
    rows = [i for i, s in enumerate(states) if s is not None and not s.is_terminated]
    if not rows:
        return
    import xgrammar as xgr

    vocab = logits.shape[-1]
    bitmask = xgr.allocate_token_bitmask(len(logits), vocab)
    needed = []
    for i in rows:
        state = states[i]
        assert state is not None
        if state.fill_mask(bitmask, i):
            needed.append(i)
    if needed:
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), vocab_size=vocab, indices=needed)
