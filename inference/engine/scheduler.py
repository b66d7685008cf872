"""`Scheduler`: continuous batching over `waiting` and `running` requests. Pure Python (no torch ops).

Each step it spends a token budget (`max_num_batched_tokens`): first one token for every
running sequence (decode) or the next chunk of a prompt still being prefilled, then admits
waiting requests, first come first served, while sequences (`max_num_seqs`) and free KV blocks
allow. Long prompts are chunked so a new request never stalls running ones for long. When the
pool runs out mid-decode, the newest running request is preempted: its blocks are freed and it
goes back to the front of `waiting`, to be recomputed (its tokens so far are kept). With prefix
caching, a sequence being admitted (new or recomputed) first reuses the cached KV blocks of its
longest cached prefix and starts its prefill after them; a request asking for prompt logprobs
computes its whole prompt (those logits are needed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from inference.engine.block_manager import BlockManager
from inference.engine.sequence import Sequence, SequenceGroup, SequenceStatus


@dataclass(slots=True)
class ScheduledSeq:
    """Run the model over `seq.token_ids[start : start + num_tokens]`, start = seq.num_computed_tokens."""

    seq: Sequence
    group: SequenceGroup
    num_tokens: int

    @property
    def completes_prefill(self) -> bool:
        """Whether this chunk reaches the last token, so its logits pick the next token."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    decodes: list[ScheduledSeq] = field(default_factory=list)  # one token with context before it
    prefills: list[ScheduledSeq] = field(default_factory=list)  # prompt chunks (and recomputes)
    preempted: list[SequenceGroup] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.decodes and not self.prefills

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(s.num_tokens for s in self.prefills)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        watermark: float = 0.01,
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.watermark_blocks = int(watermark * block_manager.num_blocks)
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[SequenceGroup] = []
        self.num_prefix_queried_tokens = 0  # tokens of sequences admitted while prefix caching is on
        self.num_prefix_hit_tokens = 0  # of those, tokens whose KV came from the prefix cache

    def add(self, group: SequenceGroup) -> None:
        self.waiting.append(group)

    def remove(self, group: SequenceGroup) -> None:
        """Take a finished or aborted request out of the queues and return all its KV blocks."""
        if group in self.running:
            self.running.remove(group)
        elif group in self.waiting:
            self.waiting.remove(group)
        for seq in group.seqs:
            self.block_manager.free(seq.block_table)
        for seq in group.finished_beams:
            self.block_manager.free(seq.block_table)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running):
            group = self.running[i]
            planned = self._plan(group, budget)
            while planned and not self._fits(planned):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is group:
                    planned = []
            if group not in self.running:
                break  # it preempted itself: everything after it is gone too
            budget -= self._commit(planned, out)
            i += 1

        num_seqs = sum(len(g.live_seqs) for g in self.running)
        while self.waiting and budget > 0 and not out.preempted:
            group = self.waiting[0]
            if num_seqs + len(group.live_seqs) > self.max_num_seqs:
                break
            reusing = self._reuse_cached_prefixes(group)
            planned = self._plan(group, budget)
            if not planned or not self._fits(planned, reserve=self.watermark_blocks):
                for seq in reusing:  # not admitted after all: give the cached blocks back
                    self.block_manager.free(seq.block_table)
                    seq.num_computed_tokens = 0
                break
            self.num_prefix_queried_tokens += sum(seq.num_tokens for seq in reusing)
            self.num_prefix_hit_tokens += sum(seq.num_computed_tokens for seq in reusing)
            self.waiting.popleft()
            self.running.append(group)
            num_seqs += len(group.live_seqs)
            budget -= self._commit(planned, out)
        return out

    def _reuse_cached_prefixes(self, group: SequenceGroup) -> list[Sequence]:
        """Start each live sequence of a waiting group that has no KV at its longest cached prefix;
        returns the sequences that looked (empty when prefix caching is off or prompt logprobs are asked)."""
        if not self.block_manager.enable_prefix_caching or group.params.prompt_logprobs is not None:
            return []
        reusing = [seq for seq in group.live_seqs if not seq.block_table and seq.num_computed_tokens == 0]
        for seq in reusing:
            self.block_manager.reuse_cached_prefix(seq)
        return reusing

    def _plan(self, group: SequenceGroup, budget: int) -> list[ScheduledSeq]:
        live = group.live_seqs
        if group.params.use_beam_search and budget < len(live):
            return []  # beams advance together or not at all
        planned = []
        for seq in live:
            n = min(seq.num_uncomputed_tokens, budget)
            if n <= 0:
                continue
            planned.append(ScheduledSeq(seq, group, n))
            budget -= n
        return planned

    def _fits(self, planned: list[ScheduledSeq], reserve: int = 0) -> bool:
        """Whether the pool can grow every planned sequence's table and still keep `reserve` blocks free."""
        bm = self.block_manager
        needed = sum(bm.num_blocks_to_grow(p.seq.block_table, p.seq.num_computed_tokens + p.num_tokens) for p in planned)
        return needed + reserve <= bm.num_free_blocks

    def _commit(self, planned: list[ScheduledSeq], out: SchedulerOutput) -> int:
        for item in planned:
            seq = item.seq
            self.block_manager.grow(seq.block_table, seq.num_computed_tokens + item.num_tokens)
            seq.status = SequenceStatus.RUNNING
            if item.num_tokens == 1 and seq.num_computed_tokens > 0:
                out.decodes.append(item)
            else:
                out.prefills.append(item)
        return sum(item.num_tokens for item in planned)

    def _preempt(self, group: SequenceGroup, out: SchedulerOutput) -> None:
        self.running.remove(group)
        for seq in group.live_seqs:
            self.block_manager.free(seq.block_table)
            seq.num_computed_tokens = 0
            seq.status = SequenceStatus.WAITING
        # scheduled items of this group in this step are void
        out.decodes = [s for s in out.decodes if s.group is not group]
        out.prefills = [s for s in out.prefills if s.group is not group]
        group.metrics.num_preemptions += 1
        out.preempted.append(group)
        self.waiting.appendleft(group)
