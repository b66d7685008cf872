"""`build_request_output`: what a request has produced since its last output, as the `RequestOutput` the engine returns.

Each call takes the deltas not yet emitted (text that never splits a UTF-8 character, token ids,
logprobs) and marks them emitted, copying only those: a stream costs O(n) over its length. The
request's final output also carries each completion's whole text, token ids and logprobs (once).
Beam search emits its beams only once they are final.
"""

from __future__ import annotations

from collections.abc import Callable

from inference.engine.sequence import Sequence, SequenceGroup
from inference.schema.outputs import CompletionOutput, RequestOutput


def build_request_output(group: SequenceGroup, decode: Callable[[list[int]], str]) -> RequestOutput:
    """The request's progress since its last output: text and token deltas per sequence (beam
    search streams nothing until it finishes), logprobs, and the prompt's logprobs when asked."""
    finished = group.is_finished
    completions = [_completion(seq, group, finished, decode) for seq in sorted(group.seqs, key=lambda s: s.index)]
    prompt_lps = None if group.prompt_logprobs is None else [None, *group.prompt_logprobs]
    return RequestOutput(group.request_id, group.prompt_token_ids, completions, finished, group.metrics,
                         prompt_logprobs=prompt_lps)


def _completion(seq: Sequence, group: SequenceGroup, finished: bool, decode: Callable[[list[int]], str]) -> CompletionOutput:
    stream = not group.params.use_beam_search
    delta_ids: list[int] = []
    text = delta_text = ""
    if stream or finished:
        delta_ids = seq.token_ids[seq.num_prompt_tokens + seq.num_tokens_emitted :]
        seq.num_tokens_emitted = seq.num_output_tokens
        if stream:
            delta_text = seq.detokenizer.take_delta(seq.is_finished)
            text = seq.detokenizer.text if finished else ""
        else:
            text = delta_text = decode(seq.output_token_ids)
    delta_lp = None
    if seq.logprobs is not None:
        delta_lp = seq.logprobs[seq.num_logprobs_emitted :]
        seq.num_logprobs_emitted = len(seq.logprobs)
    whole_lp = None if seq.logprobs is None else (list(seq.logprobs) if finished else [])
    return CompletionOutput(
        index=seq.index,
        text=text,
        token_ids=seq.output_token_ids if finished else [],
        num_tokens=seq.num_output_tokens,
        finish_reason=seq.finish_reason,
        stop_reason=seq.stop_reason,
        cumulative_logprob=seq.cumulative_logprob,
        logprobs=whole_lp,
        delta_text=delta_text,
        delta_token_ids=delta_ids,
        delta_logprobs=delta_lp,
    )
