"""`sloserve compress`: make compressed variants of a model, measure them, write `variants.json`.

    sloserve compress --model packaged:smollm2-135m-instruct \
        --methods bnb-int8,bnb-nf4,torch-int8,prune-structured,distill-24,distill-20 --out variants/ \
        [--quick] [--budget-minutes 10]

Writes one directory per variant (`full/` too) and `variants.json` beside them, and
`quality_vs_speed.png` with the Pareto front. Torch is imported in `run`, not at import time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

DEFAULT_METHODS = "bnb-int8,bnb-nf4,torch-int8,prune-magnitude,prune-structured,distill"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct", help="the full model (any model source)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated methods, each optionally '+torch-int8' (default: {DEFAULT_METHODS})")
    parser.add_argument("--out", type=Path, required=True, help="output directory (variants + variants.json)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and evaluation sets (smoke run)")
    parser.add_argument("--concurrency", default="1,4,8,16,32", help="concurrency levels to measure speed at")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per concurrency (medians are kept)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="wall-clock budget of each training run (distillation, healing), resumable; "
                             "default: the method's own (9 min for distill-N on 2 cores)")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request when measuring speed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for compression and evaluation")
    parser.add_argument("--reuse", action="store_true",
                        help="keep variant directories already in --out and only re-measure them")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import torch

    from inference.compression.pareto import plot_pareto, throughput
    from inference.compression.pipeline import CompressJob, run_compress

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        levels = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        print(f"--concurrency must be comma-separated integers, got {args.concurrency!r}", file=sys.stderr)
        return 2
    job = CompressJob(source=args.model, methods=methods, out_dir=args.out, quick=args.quick,
                      concurrencies=levels, max_tokens=args.max_tokens, seed=args.seed, reuse=args.reuse,
                      repeats=args.repeats, budget_minutes=args.budget_minutes)
    started = time.monotonic()
    try:
        manifest = run_compress(job)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plot = plot_pareto(manifest, args.out / "quality_vs_speed.png")
    print(f"{'variant':<28}{'params':>12}{'MB disk':>9}{'MB mem':>8}{'tok/s@1':>9}{'tok/s@N':>13}"
          f"{'agree':>7}{'KL':>7}{'QA':>6}{'ppl':>7}")
    for e in manifest.variants:
        n, tok_s = throughput(e)
        q = e.quality
        print(f"{e.name:<28}{e.params:>12,}{e.bytes / 1e6:>9.1f}{(e.resident_bytes or 0) / 1e6:>8.1f}"
              f"{e.speed.tok_s_bs1:>9.1f}{tok_s:>8.1f} @{n:<3}{q.agreement:>7.3f}{q.kl:>7.3f}"
              f"{q.task_accuracy or 0:>6.2f}{q.ppl or 0:>7.1f}")
    print(f"wrote {args.out / 'variants.json'} and {plot} in {time.monotonic() - started:.0f} s")
    return 0
