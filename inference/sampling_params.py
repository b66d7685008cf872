"""`SamplingParams`: how to pick tokens and when to stop, validated with errors naming the parameter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from inference.errors import InvalidSamplingParamsError
from inference.structured_output import GuidedDecoding

MAX_LOGPROBS = 20
MAX_N = 16
MAX_LOGIT_BIAS = 100.0


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding options. `temperature == 0` is greedy."""

    n: int = 1
    max_tokens: int | None = 16  # None: up to the context limit; 0: prompt only (with prompt_logprobs)
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's plus the top k
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    use_beam_search: bool = False
    length_penalty: float = 1.0
    prompt_logprobs: int | None = None  # None: none; k >= 0: each prompt token's logprob plus the top k
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    guided: GuidedDecoding | None = None  # the output must match this grammar

    def __post_init__(self) -> None:
        self.validate()

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def validate(self) -> None:
        def bad(param: str, message: str) -> InvalidSamplingParamsError:
            return InvalidSamplingParamsError(param, message)

        if not 1 <= self.n <= MAX_N:
            raise bad("n", f"must be between 1 and {MAX_N}, got {self.n}")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise bad("max_tokens", f"must be >= 0, got {self.max_tokens}")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise bad("min_tokens", f"must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0):
            raise bad("temperature", f"must be between 0 and 2, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise bad("top_k", f"must be -1, 0 (off) or a positive count, got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise bad("seed", f"must be between 0 and 2**63-1, got {self.seed}")
        if len(self.stop) > 16 or any(not s for s in self.stop):
            raise bad("stop", "at most 16 non-empty strings")
        if any(t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", f"token ids must be >= 0, got {self.stop_token_ids}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise bad("logprobs", f"must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2.0 <= value <= 2.0):
                raise bad(name, f"must be between -2 and 2, got {value}")
        if self.use_beam_search:
            if self.temperature != 0.0 or self.top_p != 1.0 or self.top_k not in (0, -1):
                raise bad("use_beam_search", "beam search is deterministic: needs temperature=0, top_p=1, top_k off")
            if self.n < 2:
                raise bad("n", f"beam search needs n (the beam width) >= 2, got {self.n}")
        self._validate_extras(bad)
        if not math.isfinite(self.length_penalty):
            raise bad("length_penalty", f"must be finite, got {self.length_penalty}")

    def _validate_extras(self, bad) -> None:  # type: ignore[no-untyped-def]
        """prompt_logprobs, logit_bias and guided decoding."""
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_LOGPROBS:
            raise bad("prompt_logprobs", f"must be between 0 and {MAX_LOGPROBS}, got {self.prompt_logprobs}")
        for token, value in (self.logit_bias or {}).items():
            if not (math.isfinite(value) and -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS):
                raise bad("logit_bias", f"biases must be between -{MAX_LOGIT_BIAS:g} and {MAX_LOGIT_BIAS:g}, got {value} for {token}")
        if self.use_beam_search and (self.guided is not None or self.logit_bias):
            raise bad("use_beam_search", "beam search does not support structured output or logit_bias")
