"""The int8-compute benchmark: the W8A8 variant against the full model, same machine, same run.

    python -m load_tests.benchmarks.int8_compute [--model packaged:smollm2-135m-instruct] [--levels 1,16,32]
                                   [--max-tokens 64] [--repeats 3] [--lm-head] [--json]

Run it alone (load average below 0.5 first; it prints the load before and after). Prints:
  - the CPU (model name and the flags that decide int8 and bf16 speed) and the torch threads;
  - GEMMs at the model's own shapes, 1 and 32 rows: fp32, bf16, and int8 (`torch._int_mm` with
    the per-token activation quantization it needs, as `W8A8Linear` runs it);
  - the engine (`dtype: auto` for both) at each concurrency: output tok/s, TPOT p50, TTFT p50, for
    `full` and `int8-compute`, and int8's ratio to full, against issue 27's targets (>= 1.5x tok/s
    at 16 and 32 concurrent; batch-1 TPOT at most full's + 10%).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from typing import Any

import torch
import torch.nn.functional as F

from inference.compression.speed import SpeedResult, load_average, measure_speed
from inference.engine.llm_engine import LLMEngine
from inference.model.dtypes import cpu_model, time_ms
from inference.model.quant.w8a8_linear import W8A8Linear
from inference.schema.config.engine import EngineConfig


def gemm_table(shapes: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """fp32 / bf16 / W8A8 milliseconds for each (rows, in, out)."""
    rows_out = []
    with torch.inference_mode():
        for m, k, n in shapes:
            x, w = torch.randn(m, k), torch.randn(n, k)
            int8 = W8A8Linear(w, None, None)
            rows_out.append({
                "shape": f"{m} x {k} -> {n}",
                "fp32_ms": time_ms(functools.partial(F.linear, x, w), 20),
                "bf16_ms": time_ms(functools.partial(F.linear, x.bfloat16(), w.bfloat16()), 20),
                "int8_ms": time_ms(functools.partial(int8, x), 20),
            })
    return rows_out


def engine_speed(model: str, quantization: str, levels: tuple[int, ...], max_tokens: int, repeats: int) -> SpeedResult:
    engine = LLMEngine(EngineConfig(model=model, quantization=quantization,  # type: ignore[arg-type]
                                    kv_cache_tokens=16384, max_num_seqs=max(levels)))
    try:
        return measure_speed(engine, levels, max_tokens=max_tokens, repeats=repeats)
    finally:
        engine.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--levels", default="1,16,32", help="concurrencies (comma-separated)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lm-head", action="store_true", help="also measure the variant with an int8 LM head")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object too")
    args = parser.parse_args(argv)
    levels = tuple(int(v) for v in args.levels.split(","))
    name, flags = cpu_model()
    before = load_average()
    print(f"cpu: {name} [{' '.join(flags)}], {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average before {before}", flush=True)

    full = engine_speed(args.model, "none", levels, args.max_tokens, args.repeats)
    int8 = engine_speed(args.model, "int8-compute", levels, args.max_tokens, args.repeats)
    head = None
    if args.lm_head:  # the same variant with its LM head in int8 too
        from inference.model.quant import smoothquant

        smoothquant.INCLUDE_LM_HEAD = True
        head = engine_speed(args.model, "int8-compute", levels, args.max_tokens, args.repeats)

    from transformers import AutoConfig

    from inference.model.model_loader import resolve_model_dir

    config = AutoConfig.from_pretrained(resolve_model_dir(args.model))
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    qkv = hidden + 2 * config.num_key_value_heads * (hidden // config.num_attention_heads)
    shapes = [(m, k, n) for m in (1, 32) for k, n in ((hidden, qkv), (hidden, 2 * inter), (inter, hidden))]
    shapes.append((32, hidden, vocab))
    gemms = gemm_table(shapes)

    print("\nGEMM (best of 20, ms)        fp32      bf16      int8 (with act. quant)")
    for row in gemms:
        print(f"  {row['shape']:<24} {row['fp32_ms']:8.3f}  {row['bf16_ms']:8.3f}  {row['int8_ms']:8.3f}")
    print("\nengine (dtype auto)   full tok/s  int8 tok/s  ratio   full TPOT  int8 TPOT   full TTFT  int8 TTFT")
    for n in levels:
        ratio = int8.tok_s_at[n] / full.tok_s_at[n]
        print(f"  {n:>3} concurrent      {full.tok_s_at[n]:9.1f}  {int8.tok_s_at[n]:9.1f}  {ratio:5.2f}x"
              f"  {full.tpot_ms_at[n]:7.1f} ms {int8.tpot_ms_at[n]:7.1f} ms  {full.ttft_ms_at[n]:7.1f} ms {int8.ttft_ms_at[n]:7.1f} ms")
    if head is not None:
        print("int8-compute with an int8 LM head:")
        for n in levels:
            print(f"  {n:>3} concurrent      {head.tok_s_at[n]:9.1f} tok/s  {head.tok_s_at[n] / full.tok_s_at[n]:5.2f}x full"
                  f"  TPOT {head.tpot_ms_at[n]:7.1f} ms  TTFT {head.ttft_ms_at[n]:7.1f} ms")
    after = load_average()
    targets = []
    for n in (16, 32):
        if n in levels:
            targets.append(f"tok/s at {n}: {int8.tok_s_at[n] / full.tok_s_at[n]:.2f}x (target >= 1.5x)")
    if 1 in levels:
        targets.append(f"batch-1 TPOT: {int8.tpot_ms_at[1] / full.tpot_ms_at[1]:.2f}x full's (target <= 1.10x)")
    print("\n" + "; ".join(targets))
    print(f"load average after {after}")
    if args.json:
        print(json.dumps({"cpu": name, "flags": flags, "load_before": before, "load_after": after, "gemms": gemms,
                          "full": full.profile().model_dump(), "int8_compute": int8.profile().model_dump()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
