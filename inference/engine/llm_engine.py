"""`LLMEngine`: continuous batching over a DeepSpeed-inference model, in token ids.

Contract: requests go in as token ids (or text, tokenized here at the edge) with
`SamplingParams`; each `step()` = schedule -> forward -> sample -> postprocess and returns a
`RequestOutput` for every request that advanced (with text deltas that never split a UTF-8
character). Requests join and leave between steps; a finished or aborted request returns its
KV blocks at once. Not thread-safe: `AsyncLLMEngine` drives it from one thread.

Fault isolation: every id in a request is checked against the model when it is added
(`check_request`); if processing one request's sequences still raises (sampling, stop checks,
detokenizing), that request alone ends with `finish_reason="error"` and `RequestOutput.error`, its
KV blocks are freed, and the step goes on for the others. Only the forward pass (a rank died,
out of memory) or the scheduler failing is an engine failure.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from inference.engine.block_manager import BlockManager
from inference.engine.detokenizer import IncrementalDetokenizer
from inference.engine.request_output import build_request_output
from inference.engine.scheduler import Scheduler, SchedulerOutput
from inference.engine.sequence import Sequence, SequenceGroup, SequenceStatus
from inference.engine.step_input import build_step_input
from inference.engine.token_sampler import ENGINE_FAILURES, TokenSampler
from inference.parallel.multiproc import MultiprocPeers, PeerRanks, free_port
from inference.parallel.worker import ModelInfo, RankWorker, RendezvousInfo
from inference.sampling.prompt_logprobs import PromptLogprobSpan, prompt_logprob_spans, record_prompt_logprobs
from inference.sampling.structured_output import StructuredOutputs
from inference.schema.config.engine import EngineConfig
from inference.schema.errors import InvalidRequestError, RequestTooLongError
from inference.schema.outputs import RequestMetrics, RequestOutput
from inference.schema.sampling import SamplingParams, check_ids

log = logging.getLogger(__name__)

PeersFactory = Callable[[EngineConfig, RendezvousInfo], PeerRanks]


@dataclass(slots=True)
class EngineStats:
    num_waiting: int
    num_running: int
    num_free_blocks: int
    num_blocks: int
    kv_used_ratio: float
    num_preemptions: int
    prefix_cache_queried_tokens: int = 0  # since start: tokens of sequences admitted with prefix caching on
    prefix_cache_hit_tokens: int = 0  # since start: of those, tokens whose KV was reused


class LLMEngine:
    def __init__(self, config: EngineConfig, peers_factory: PeersFactory = MultiprocPeers) -> None:
        self.config = config
        self.peers: PeerRanks | None = None
        rendezvous = None
        if config.tp_size > 1:
            rendezvous = RendezvousInfo("127.0.0.1", config.master_port or free_port())
            self.peers = peers_factory(config, rendezvous)
            self.peers.start()
        self.worker = RankWorker(config, rank=0, rendezvous=rendezvous)
        try:
            self.info: ModelInfo = self.worker.load()
        except BaseException:
            if self.peers is not None:
                self.peers.stop()
            raise
        self.tokenizer = self.worker.tokenizer
        self.max_model_len = self.info.max_model_len
        self.block_manager = BlockManager(self.info.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.groups: dict[str, SequenceGroup] = {}
        self._seq_ids = [0]  # shared counter (beam search forks take ids from it too)
        self._request_ids = itertools.count()
        self.num_preemptions = 0
        self.structured = StructuredOutputs(self.tokenizer, self.info.vocab_size, self.info.eos_token_ids)
        self.sampler = TokenSampler(self.block_manager, self._new_seq, self._seq_ids, self.max_model_len)

    # ---- requests in -------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))  # type: ignore[attr-defined]
        return list(prompt)

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        arrival_s: float | None = None,
    ) -> str:
        request_id = request_id or f"req-{next(self._request_ids)}"
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already running")
        prompt_ids = self.encode(prompt)
        max_tokens = self.check_request(prompt_ids, params)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.worker.device).manual_seed(params.seed)
        eos = frozenset(self.info.eos_token_ids)
        seq = self._new_seq(prompt_ids, params, index=0)
        group = SequenceGroup(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            params=params,
            seqs=[seq],
            metrics=RequestMetrics(arrival_s=arrival_s or time.monotonic(), num_prompt_tokens=len(prompt_ids)),
            max_tokens=max_tokens,
            generator=generator,
            eos_token_ids=eos,
            prompt_logprobs=[] if params.prompt_logprobs is not None else None,
        )
        self.groups[request_id] = group
        self.scheduler.add(group)
        return request_id

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Raise a typed error naming the field if the request is invalid for this model or can never
        fit; else return its resolved max_tokens. Runs before a request is queued and again when the
        engine loop adds it, so nothing out of the vocabulary reaches the model or the sampler."""
        if not prompt_ids:
            raise RequestTooLongError("prompt is empty", param="prompt")
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling params must be SamplingParams, got {type(params).__name__}", "sampling")
        params.validate()  # a dataclass can be changed after __post_init__ checked it
        vocab = self.info.vocab_size
        check_ids("prompt", prompt_ids, vocab)
        params.check_token_ids(vocab)
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise RequestTooLongError(
                f"prompt has {len(prompt_ids)} tokens; the context limit is {self.max_model_len}", param="prompt"
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise RequestTooLongError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"context limit of {self.max_model_len} tokens",
                param="max_tokens",
            )
        max_tokens = room if params.max_tokens is None else params.max_tokens
        blocks = params.n * self.block_manager.blocks_needed(len(prompt_ids) + max_tokens)
        if blocks > self.block_manager.num_blocks:
            raise RequestTooLongError(
                f"request needs up to {blocks} KV blocks (n={params.n}, {len(prompt_ids)} prompt + {max_tokens} "
                f"new tokens) but the pool has {self.block_manager.num_blocks}; it can never fit",
                param="max_tokens",
            )
        return max_tokens

    def _new_seq(self, prompt_ids: list[int], params: SamplingParams, index: int) -> Sequence:
        seq_id = self._seq_ids[0]
        self._seq_ids[0] += 1
        detok = IncrementalDetokenizer(self.tokenizer, prompt_ids, params.stop, params.include_stop_str_in_output)
        return Sequence(
            seq_id=seq_id,
            index=index,
            token_ids=list(prompt_ids),
            num_prompt_tokens=len(prompt_ids),
            detokenizer=detok,
            logprobs=[] if params.logprobs is not None else None,
            grammar=self.structured.new_state(params.guided) if params.guided is not None else None,
        )

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its KV blocks; returns its last output (finish_reason 'abort')."""
        group = self.groups.get(request_id)
        if group is None:
            return None
        self._end(group, "abort")
        return self._output(group)

    def _end(self, group: SequenceGroup, finish_reason: str) -> None:
        """Take a request out of the engine now: unscheduled, its KV blocks freed, unfinished outputs
        ended with `finish_reason`."""
        self.groups.pop(group.request_id, None)
        group.aborted = True
        self.scheduler.remove(group)
        for seq in group.seqs:
            if not seq.is_finished:
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, finish_reason
        group.metrics.finished_s = time.monotonic()

    # ---- the loop ----------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return bool(self.groups)

    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        self.num_preemptions += len(sched.preempted)
        if sched.is_empty:
            return []
        copies, self.sampler.pending_copies = self.sampler.pending_copies, []
        spans = prompt_logprob_spans(sched)
        step = build_step_input(sched, self.config.block_size, copies, spans)
        logits = self.worker.execute(step)
        return self._postprocess(sched, logits, spans)

    def _postprocess(
        self, sched: SchedulerOutput, logits: torch.Tensor, spans: Seq[PromptLogprobSpan] = ()
    ) -> list[RequestOutput]:
        now = time.monotonic()
        sampling = [item for item in sched.decodes + sched.prefills if item.completes_prefill]
        failed: dict[str, BaseException] = {}
        touched: dict[str, SequenceGroup] = {}
        if spans:  # prompt-logprob rows come after the sampling rows
            failed.update(record_prompt_logprobs(spans, logits[len(sampling) :]))
            touched.update({s.group.request_id: s.group for s in spans if s.group.request_id in failed})
            logits = logits[: len(sampling)]
        for item in sched.decodes + sched.prefills:
            item.seq.num_computed_tokens += item.num_tokens
            self.block_manager.cache_full_blocks(item.seq, item.seq.num_computed_tokens - item.num_tokens)
            if item.group.metrics.scheduled_s is None:
                item.group.metrics.scheduled_s = now
        touched.update({item.group.request_id: item.group for item in sampling})
        # a request whose prompt logprobs failed samples nothing: it ends with that error
        self.sampler.sample([(row, item) for row, item in enumerate(sampling) if item.group.request_id not in failed],
                            logits, failed)
        outputs = []
        for group in touched.values():
            try:
                if group.request_id in failed:
                    raise failed[group.request_id]
                if group.metrics.first_token_s is None:
                    group.metrics.first_token_s = now
                group.metrics.num_output_tokens = max(s.num_output_tokens for s in group.seqs)
                if group.is_finished:
                    group.metrics.finished_s = now
                    self.scheduler.remove(group)
                    self.groups.pop(group.request_id, None)
                outputs.append(self._output(group))
            except ENGINE_FAILURES:
                raise
            except Exception as e:
                outputs.append(self._fail(group, e))
        return outputs

    def _fail(self, group: SequenceGroup, error: BaseException) -> RequestOutput:
        """End one request whose processing raised: free its KV, leave the others running."""
        log.error("request %s failed in the engine and was ended: %r", group.request_id, error, exc_info=error)
        self._end(group, "error")
        message = f"{type(error).__name__}: {error}"
        try:
            out = self._output(group)
        except Exception:  # the output itself cannot be built: report the error alone
            out = RequestOutput(group.request_id, group.prompt_token_ids, [], True, group.metrics)
        out.finished, out.error = True, message
        return out

    # ---- results out -------------------------------------------------------------------------
    def _output(self, group: SequenceGroup) -> RequestOutput:
        return build_request_output(group, self._decode)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))  # type: ignore[attr-defined]

    # ---- conveniences ------------------------------------------------------------------------
    def generate(self, prompts: Seq[str | list[int]], params: SamplingParams | Seq[SamplingParams]) -> list[RequestOutput]:
        """Run prompts to completion (all admitted at once, continuously batched); outputs in order."""
        all_params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, all_params, strict=True)]
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished():
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[i] for i in ids]

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            num_free_blocks=bm.num_free_blocks,
            num_blocks=bm.num_blocks,
            kv_used_ratio=bm.used_ratio,
            num_preemptions=self.num_preemptions,
            prefix_cache_queried_tokens=self.scheduler.num_prefix_queried_tokens,
            prefix_cache_hit_tokens=self.scheduler.num_prefix_hit_tokens,
        )

    def keepalive_if_idle(self) -> None:
        """Between steps: keep an idle tensor-parallel group's peers from timing out."""
        self.worker.keepalive_if_idle()

    def dead_ranks(self) -> list[int]:
        return self.peers.dead_ranks() if self.peers is not None else []

    def shutdown(self) -> None:
        if self.peers is not None:
            try:
                self.worker.stop_peers()
            finally:
                self.peers.stop()
                self.peers = None
                self.worker.close()
