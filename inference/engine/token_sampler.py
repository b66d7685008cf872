"""`TokenSampler`: the sampling half of an engine step — each sequence's next token from the step's logits.

Takes the scheduled items whose chunk completed a prompt or a decode, with their rows of the
step's logits. Plain requests are sampled as one batch (n > 1 forks the prompt's sequence on its
first token, sharing its KV blocks); beam-search requests take one beam step each. Every new token
is appended with its logprob and the stop checks (stop strings, stop/EOS ids, max_tokens, the
context limit, a finished grammar); a finished sequence returns its KV blocks at once. A request
whose own sampling raises is recorded in `failed` and the others go on; `ENGINE_FAILURES` propagate.
Block copies that forks need before the next forward pass collect in `pending_copies`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from inference.engine.block_manager import BlockManager
from inference.engine.scheduler import ScheduledSeq
from inference.engine.sequence import Sequence, SequenceGroup, SequenceStatus
from inference.sampling.beam_search import beam_step
from inference.sampling.logits_processing import process_logits
from inference.sampling.sampler import SampleResult, SampleRow, apply_logit_bias, sample
from inference.schema.outputs import TokenLogprob
from inference.schema.sampling import SamplingParams

# failures that are the engine's, never one request's: they take the replica down
ENGINE_FAILURES: tuple[type[BaseException], ...] = (MemoryError, torch.OutOfMemoryError, KeyboardInterrupt, SystemExit)

NewSeq = Callable[[list[int], SamplingParams, int], Sequence]  # (prompt ids, params, index) -> a fresh sequence


class TokenSampler:
    def __init__(self, block_manager: BlockManager, new_seq: NewSeq, seq_ids: list[int], max_model_len: int) -> None:
        self.block_manager = block_manager
        self.new_seq = new_seq
        self.seq_ids = seq_ids  # the engine's shared sequence id counter (beam forks take ids from it)
        self.max_model_len = max_model_len
        self.pending_copies: list[tuple[int, int]] = []

    def sample(self, rows: list[tuple[int, ScheduledSeq]], logits: torch.Tensor,
               failed: dict[str, BaseException]) -> None:
        """Advance every (logits row, item) by one token; a request that raises goes into `failed`."""
        plain: list[tuple[int, ScheduledSeq]] = []
        beams: dict[str, tuple[SequenceGroup, list[int]]] = {}
        for row, item in rows:
            if item.group.max_tokens == 0:  # prompt only (echo / prompt logprobs): nothing to sample
                item.seq.status, item.seq.finish_reason = SequenceStatus.FINISHED, "length"
                self.block_manager.free(item.seq.block_table)
            elif item.group.params.use_beam_search:
                beams.setdefault(item.group.request_id, (item.group, []))[1].append(row)
            else:
                plain.append((row, item))
        if plain:
            self._sample_plain(plain, logits, failed)
        for request_id, (group, beam_rows) in beams.items():
            try:
                rows_logits = logits[beam_rows].float()
                for row in range(len(beam_rows)):
                    apply_logit_bias(rows_logits[row], group.params)
                self.pending_copies += beam_step(group, torch.log_softmax(rows_logits, dim=-1), self.block_manager,
                                                 self.seq_ids)
            except ENGINE_FAILURES:
                raise
            except Exception as e:
                failed[request_id] = e

    def _sample_plain(self, plain: list[tuple[int, ScheduledSeq]], logits: torch.Tensor,
                      failed: dict[str, BaseException]) -> None:
        rows = []
        for _, item in plain:
            group, seq = item.group, item.seq
            params = group.params
            blocked = []
            if seq.num_output_tokens < params.min_tokens and seq.grammar is None:  # a grammar decides its own end
                blocked = sorted(set(params.stop_token_ids) | (set() if params.ignore_eos else group.eos_token_ids))
            fork_n = params.n if (params.n > 1 and not group.is_forked) else 1
            history = seq.output_token_ids if params.has_penalties else []  # only penalties read it
            rows.append(SampleRow(params, group.generator, history, blocked, fork_n))
        indices = [row for row, _ in plain]
        # no copy when every row samples (no beam-search rows in this step)
        picked = logits if indices == list(range(logits.shape[0])) else logits[indices]
        params_rows = [item.group.params for _, item in plain]
        grammars = [item.seq.grammar for _, item in plain]
        results: list[SampleResult | None] = []
        try:
            results.extend(sample(process_logits(picked, params_rows, grammars), rows))
        except ENGINE_FAILURES:
            raise
        except Exception:  # one row is bad: sample row by row, so only its request fails
            results = []
            for i, (row, (_, item)) in enumerate(zip(rows, plain, strict=True)):
                try:
                    results.extend(sample(process_logits(picked[i : i + 1], [params_rows[i]], [grammars[i]]), [row]))
                except ENGINE_FAILURES:
                    raise
                except Exception as e:
                    failed[item.group.request_id] = e
                    results.append(None)
        for (_, item), result in zip(plain, results, strict=True):
            group, seq = item.group, item.seq
            if result is None or group.request_id in failed:
                continue
            try:
                self._take_sample(group, seq, result)
            except ENGINE_FAILURES:
                raise
            except Exception as e:
                failed[group.request_id] = e

    def _take_sample(self, group: SequenceGroup, seq: Sequence, result: SampleResult) -> None:
        targets = [seq]
        if len(result.token_ids) > 1:  # n > 1: fork the prompt's sequence, sharing its KV blocks
            group.is_forked = True
            for index in range(1, len(result.token_ids)):
                child = self.new_seq(group.prompt_token_ids, group.params, index)
                child.num_computed_tokens = seq.num_computed_tokens
                child.block_hashes = list(seq.block_hashes)  # the same prompt
                child.block_table, block_copy = self.block_manager.fork(seq.block_table, seq.num_computed_tokens)
                if block_copy:
                    self.pending_copies.append(block_copy)
                group.seqs.append(child)
                targets.append(child)
        for j, (target, token) in enumerate(zip(targets, result.token_ids, strict=True)):
            logprob = result.logprobs[j] if result.logprobs else None
            self._append_token(group, target, token, logprob)

    def _append_token(self, group: SequenceGroup, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        params = group.params
        seq.token_ids.append(token)
        if seq.grammar is not None:
            seq.grammar.accept(token)
        if logprob is not None and seq.logprobs is not None:
            seq.logprobs.append(logprob)
            seq.cumulative_logprob += logprob.logprob
        stop_string = seq.detokenizer.add_token(token)
        reason: str | None = None
        if stop_string is not None:
            reason, seq.stop_reason = "stop", stop_string
        elif (token in group.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
            reason, seq.stop_reason = "stop", token
        elif seq.num_output_tokens >= group.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        elif seq.grammar is not None and seq.grammar.is_terminated:
            reason = "stop"  # the grammar is complete and took its stop token
        if reason is not None:
            seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
            self.block_manager.free(seq.block_table)
