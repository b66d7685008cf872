"""`Sequence` (one output stream's tokens and KV blocks) and `SequenceGroup` (one request: n sequences).

Hot-path state: plain slotted dataclasses, no validation. A sequence's KV covers
`token_ids[:num_computed_tokens]`; the scheduler runs the model over the rest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from inference.schema.outputs import RequestMetrics, TokenLogprob

if TYPE_CHECKING:
    from inference.engine.detokenizer import IncrementalDetokenizer
    from inference.sampling.structured_output import GrammarState
    from inference.schema.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    seq_id: int
    index: int  # which of the request's n outputs
    token_ids: list[int]
    num_prompt_tokens: int
    detokenizer: IncrementalDetokenizer
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    cumulative_logprob: float = 0.0
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    # what was already handed out to a stream (for deltas)
    num_tokens_emitted: int = 0
    num_logprobs_emitted: int = 0
    grammar: GrammarState | None = None  # structured output: where this sequence is in its grammar
    block_hashes: list[bytes] = field(default_factory=list)  # chain hashes of its first full blocks (prefix cache)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens


@dataclass(slots=True)
class SequenceGroup:
    """One request. Sampling with n > 1 and beam search fork the first sequence after its prefill."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    metrics: RequestMetrics
    max_tokens: int  # resolved: params.max_tokens or what the context leaves
    generator: torch.Generator | None = None
    eos_token_ids: frozenset[int] = frozenset()
    finished_beams: list[Sequence] = field(default_factory=list)
    is_forked: bool = False  # n > 1: the first sequence has been forked
    aborted: bool = False
    prompt_logprobs: list[TokenLogprob] | None = None  # of prompt tokens 1.. (when asked), filled per chunk

    @property
    def live_seqs(self) -> list[Sequence]:
        return [s for s in self.seqs if not s.is_finished]

    @property
    def is_finished(self) -> bool:
        return self.aborted or all(s.is_finished for s in self.seqs)
