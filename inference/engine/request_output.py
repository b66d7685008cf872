"""`build_request_output`: what a request has produced so far, as the `RequestOutput` the engine returns.

Each call takes the deltas not yet emitted (text that never splits a UTF-8 character, token ids,
logprobs) and marks them emitted; beam search emits its beams only once they are final.
"""

from __future__ import annotations

from collections.abc import Callable

from inference.engine.sequence import SequenceGroup
from inference.schema.outputs import CompletionOutput, RequestOutput


def build_request_output(group: SequenceGroup, decode: Callable[[list[int]], str]) -> RequestOutput:
    """The request's progress since its last output: text and token deltas per sequence (beam
    search streams nothing until it finishes), logprobs, and the prompt's logprobs when asked."""
    finished = group.is_finished
    completions = []
    stream_beams = not group.params.use_beam_search
    for seq in sorted(group.seqs, key=lambda s: s.index):
        done = seq.is_finished
        if stream_beams or finished:
            text_delta = seq.detokenizer.take_delta(done) if stream_beams else ""
            text = seq.detokenizer.text if stream_beams else decode(seq.output_token_ids)
            if not stream_beams:
                text_delta = text
        else:
            text, text_delta = "", ""
        out_ids = seq.output_token_ids
        delta_ids = out_ids[seq.num_tokens_emitted :] if (stream_beams or finished) else []
        seq.num_tokens_emitted = len(out_ids)
        delta_lp = None
        if seq.logprobs is not None:
            delta_lp = seq.logprobs[seq.num_logprobs_emitted :]
            seq.num_logprobs_emitted = len(seq.logprobs)
        completions.append(
            CompletionOutput(
                index=seq.index,
                text=text,
                token_ids=list(out_ids),
                finish_reason=seq.finish_reason,
                stop_reason=seq.stop_reason,
                cumulative_logprob=seq.cumulative_logprob,
                logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                delta_text=text_delta,
                delta_token_ids=list(delta_ids),
                delta_logprobs=delta_lp,
            )
        )
    prompt_lps = None if group.prompt_logprobs is None else [None, *group.prompt_logprobs]
    return RequestOutput(group.request_id, group.prompt_token_ids, completions, finished, group.metrics,
                         prompt_logprobs=prompt_lps)
