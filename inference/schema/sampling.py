"""`SamplingParams`: how to pick tokens and when to stop, validated with errors naming the parameter.

The one definition of every sampling field, its bound (`MAX_N`, `MAX_STOP`, `TOP_P_RANGE`, ...) and
its default. The handle API's `GenerateRequest.sampling` (`inference/schema/requests.py`) is this class, and
the OpenAI request models (`deployments/http/openai_api.py`) map their wire fields onto it, so the
APIs and the engine cannot drift apart. Ids that depend on the model (stop token ids, logit-bias
keys) are checked against its vocabulary by `check_token_ids`, at the replica and again inside the engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from inference.schema.errors import InvalidRequestError, InvalidSamplingParamsError
from inference.schema.guided import GuidedDecoding

MAX_N = 16  # outputs per request; also the widest beam (beam width = n)
MAX_TOKENS_LIMIT = 1_000_000  # a hard ceiling; the model's context is the real bound
MAX_STOP = 16  # stop strings
MAX_STOP_CHARS = 256  # characters of one stop string
MAX_STOP_TOKEN_IDS = 64
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # entries, as OpenAI
LOGIT_BIAS_RANGE = (-100.0, 100.0)
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)  # (low, high]: top_p 0 would keep no token
PENALTY_RANGE = (-2.0, 2.0)  # presence_penalty, frequency_penalty
LENGTH_PENALTY_RANGE = (-10.0, 10.0)
TOP_K_MIN = -1  # -1 and 0: off
MAX_TOKEN_ID = 2**31 - 1  # ids above no vocabulary reaches; the model's vocab is checked later
SEED_LIMIT = 2**63  # seeds are in [0, SEED_LIMIT)
SAMPLING_EPS = 1e-5  # a temperature below this is greedy (dividing logits by it would overflow)

# max_tokens when a request leaves it out, one per API (None: up to the model's context):
COMPLETIONS_MAX_TOKENS_DEFAULT = 16  # OpenAI's /v1/completions documents 16
CHAT_MAX_TOKENS_DEFAULT: int | None = None  # OpenAI's chat has no default: up to the context, as chat always had
HANDLE_MAX_TOKENS_DEFAULT = 256  # what the handle API's GenerateRequest always had; engine callers set their own


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding options (the handle API takes them as they are). `temperature == 0` is greedy."""

    n: int = 1
    max_tokens: int | None = HANDLE_MAX_TOKENS_DEFAULT  # None: up to the context; 0: prompt only (prompt_logprobs)
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
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    prompt_logprobs: int | None = None  # None: none; k >= 0: each prompt token's logprob plus the top k
    guided: GuidedDecoding | None = None  # the output must match this grammar

    def __post_init__(self) -> None:
        self.validate()

    @property
    def is_greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def validate(self) -> None:
        def bad(param: str, message: str) -> InvalidSamplingParamsError:
            return InvalidSamplingParamsError(param, message)

        def in_range(value: float, bounds: tuple[float, float]) -> bool:
            return math.isfinite(value) and bounds[0] <= value <= bounds[1]

        if not 1 <= self.n <= MAX_N:
            raise bad("n", f"must be between 1 and {MAX_N}, got {self.n}")
        if self.max_tokens is not None and not 0 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise bad("max_tokens", f"must be between 0 and {MAX_TOKENS_LIMIT}, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= (MAX_TOKENS_LIMIT if self.max_tokens is None else self.max_tokens):
            raise bad("min_tokens", f"must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if not in_range(self.temperature, TEMPERATURE_RANGE):
            raise bad("temperature", f"must be between {TEMPERATURE_RANGE[0]} and {TEMPERATURE_RANGE[1]}, got {self.temperature}")
        if not (math.isfinite(self.top_p) and TOP_P_RANGE[0] < self.top_p <= TOP_P_RANGE[1]):
            raise bad("top_p", f"must be in ({TOP_P_RANGE[0]}, {TOP_P_RANGE[1]}], got {self.top_p}")
        if not TOP_K_MIN <= self.top_k <= MAX_TOKEN_ID:
            raise bad("top_k", f"must be -1, 0 (off) or a positive count up to {MAX_TOKEN_ID}, got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise bad("seed", f"must be between 0 and 2**63-1, got {self.seed}")
        if len(self.stop) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise bad("stop", f"at most {MAX_STOP} non-empty strings of at most {MAX_STOP_CHARS} characters")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise bad("stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} token ids, got {len(self.stop_token_ids)}")
        if any(not 0 <= t <= MAX_TOKEN_ID for t in self.stop_token_ids):
            raise bad("stop_token_ids", f"token ids must be in [0, {MAX_TOKEN_ID}], got {self.stop_token_ids}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise bad("logprobs", f"must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not in_range(value, PENALTY_RANGE):
                raise bad(name, f"must be between {PENALTY_RANGE[0]} and {PENALTY_RANGE[1]}, got {value}")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise bad("logit_bias", f"at most {MAX_LOGIT_BIAS} entries, got {len(self.logit_bias)}")
        for token, bias in self.logit_bias.items():
            if not 0 <= token <= MAX_TOKEN_ID:
                raise bad("logit_bias", f"token ids must be in [0, {MAX_TOKEN_ID}], got {token}")
            if not in_range(bias, LOGIT_BIAS_RANGE):
                raise bad("logit_bias", f"biases must be between {LOGIT_BIAS_RANGE[0]} and {LOGIT_BIAS_RANGE[1]}, got {bias}")
        if self.use_beam_search:
            if self.temperature != 0.0 or self.top_p != 1.0 or self.top_k not in (0, -1):
                raise bad("use_beam_search", "beam search is deterministic: needs temperature=0, top_p=1, top_k off")
            if self.n < 2:
                raise bad("n", f"beam search needs n (the beam width) >= 2, got {self.n}")
        if not in_range(self.length_penalty, LENGTH_PENALTY_RANGE):
            raise bad("length_penalty", f"must be between {LENGTH_PENALTY_RANGE[0]} and {LENGTH_PENALTY_RANGE[1]}, got {self.length_penalty}")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_LOGPROBS:
            raise bad("prompt_logprobs", f"must be between 0 and {MAX_LOGPROBS}, got {self.prompt_logprobs}")
        if self.use_beam_search and self.guided is not None:
            raise bad("use_beam_search", "beam search does not support structured output")

    def check_token_ids(self, vocab_size: int) -> None:
        """Every id-like field names a token of a model with `vocab_size` tokens."""
        check_ids("stop_token_ids", self.stop_token_ids, vocab_size)
        check_ids("logit_bias", self.logit_bias, vocab_size)


def check_ids(param: str, ids: Iterable[int], vocab_size: int) -> None:
    """Raise `InvalidRequestError` naming `param` if an id is outside [0, vocab_size)."""
    outside = sorted({t for t in ids if not 0 <= t < vocab_size})
    if outside:
        shown = ", ".join(str(t) for t in outside[:5]) + (", ..." if len(outside) > 5 else "")
        raise InvalidRequestError(f"{param}: token ids must be in [0, {vocab_size}), got {shown}", param)
