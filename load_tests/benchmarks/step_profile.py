"""Where one engine step's time goes: a wall-clock split of decode steps and a torch profile.

    python -m load_tests.benchmarks.step_profile [--model packaged:smollm2-135m-instruct] [--batch 1 32]
                                     [--steps 20] [--compile/--no-compile] [--torch-profile]
                                     [--quantization int8-compute]

For each batch size, admits that many requests (64-token prompts, greedy, ignore_eos), runs the
prefill, then times `--steps` decode steps split the way `LLMEngine.step` runs them: schedule,
build the step input, forward (`worker.execute`), postprocess (sampling, stop checks,
detokenizing, outputs). The sampler alone is timed again on the same logits. Medians, ms.
`--torch-profile` adds the top ops of one decode step by self CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from inference.engine.llm_engine import LLMEngine
from inference.engine.step_input import build_step_input
from inference.sampling.prompt_logprobs import prompt_logprob_spans
from inference.sampling.sampler import SampleRow, sample
from inference.schema.config.engine import EngineConfig
from inference.schema.sampling import SamplingParams

PARTS = ("schedule", "step_input", "forward", "postprocess", "(sampler alone)", "total")


def _timed_step(engine: LLMEngine) -> dict[str, float]:
    """One `LLMEngine.step`, the same calls in the same order, with a clock between them."""
    t0 = time.perf_counter()
    sched = engine.scheduler.schedule()
    t1 = time.perf_counter()
    spans = prompt_logprob_spans(sched)
    step = build_step_input(sched, engine.config.block_size, [], spans)
    t2 = time.perf_counter()
    logits = engine.worker.execute(step)
    t3 = time.perf_counter()
    rows = [SampleRow(i.group.params, None, i.seq.output_token_ids, []) for i in sched.decodes]
    sample(logits, rows)
    t4 = time.perf_counter()
    engine._postprocess(sched, logits, spans)
    t5 = time.perf_counter()
    return {"schedule": t1 - t0, "step_input": t2 - t1, "forward": t3 - t2, "(sampler alone)": t4 - t3,
            "postprocess": t5 - t4, "total": (t5 - t0) - (t4 - t3)}


def profile_batch(engine: LLMEngine, batch: int, steps: int, torch_profile: bool, log=print) -> dict[str, float]:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_tokens=steps + 8, temperature=0.0, ignore_eos=True)
    for r in range(batch):
        engine.add_request([10 + (r * 7 + i) % 400 for i in range(64)], params)
    while any(g.seqs[0].num_computed_tokens < len(g.prompt_token_ids) for g in engine.groups.values()):
        engine.step()  # prefill (possibly chunked)
    for _ in range(3):
        engine.step()  # warm
    samples = [_timed_step(engine) for _ in range(steps)]
    medians = {p: statistics.median(s[p] for s in samples) * 1e3 for p in PARTS}
    log(f"batch {batch}: " + "  ".join(f"{p} {medians[p]:.2f}" for p in PARTS) + " (ms, median)")
    if torch_profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.step()
        log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    for request_id in list(engine.groups):
        engine.abort(request_id)
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.benchmarks.step_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default="none", help="load-time quantization (e.g. int8-compute)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="the compiled decode step (EngineConfig.compile)")
    parser.add_argument("--torch-profile", action="store_true")
    args = parser.parse_args(argv)
    engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, max_num_seqs=max(args.batch),
                                    num_threads=args.threads, compile=args.compile,
                                    quantization=args.quantization))
    try:
        print(f"model {args.model}  dtype {engine.info.dtype}  threads {torch.get_num_threads()}  "
              f"compile {args.compile}", flush=True)
        for batch in args.batch:
            profile_batch(engine, batch, args.steps, args.torch_profile)
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
