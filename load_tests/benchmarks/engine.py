"""The engine benchmark: our engine vs Hugging Face `generate`, same model, same dtype, same run.

    python -m load_tests.benchmarks.engine --model packaged:smollm2-135m-instruct [--device cuda] [--json] [--quick]
                              [--no-compile]

Scenarios (output lengths forced with ignore_eos / min_new_tokens so both do the same work):
  single     decode tok/s of one stream, 128 new tokens (time after the first token);
  uniform32  32 requests, 64-token prompts, 128 new tokens each: engine (all submitted at once,
             continuous batching) vs HF `generate` with one static batch of 32;
  mixed64    64 requests with seeded prompt lengths and output lengths 16..256: engine vs HF in
             static batches of 32, left-padded, each batch running until its longest request ends;
  shared_prefix  32 requests sharing a 1,000-token system prompt, TTFT p50 with the prefix cache
             on vs off (load_tests/benchmarks/prefix_cache.py; `python -m load_tests.benchmarks.prefix_cache` runs it alone).
The engine runs with its compiled decode step (`EngineConfig.compile`; its compile time is printed)
unless --no-compile; with it, single stream is also run with the step eager, as a second line.
Also prints the memory-bound limit for batch 1 on CPU: bytes of weights read per token / measured
read bandwidth of this machine (not measured on CUDA).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from inference.engine.llm_engine import LLMEngine
from inference.model.dtypes import resolve_dtype
from inference.model.model_runner import ModelRunner
from inference.schema.config.engine import DType, EngineConfig
from inference.schema.sampling import SamplingParams
from load_tests.benchmarks.prefix_cache import print_shared_prefix, run_shared_prefix


@dataclass(slots=True)
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


def make_workload(vocab: int, num: int, prompt_len: tuple[int, int], output_len: tuple[int, int], seed: int) -> Workload:
    rng = random.Random(seed)
    prompts = [[rng.randrange(10, vocab) for _ in range(rng.randint(*prompt_len))] for _ in range(num)]
    return Workload(prompts, [rng.randint(*output_len) for _ in range(num)])


def measure_read_bandwidth_gbs(num_bytes: int = 1 << 30) -> float:
    data = torch.ones(num_bytes // 4, dtype=torch.float32)
    data.sum()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return num_bytes / best / 1e9


def decode_weight_bytes(runner: ModelRunner) -> int:
    """Bytes of weights one batch-1 decode step reads: every layer's and the LM head's (packed
    4- or 8-bit ones as packed), and the final norm (the embedding row is noise). For the
    memory-bound limit."""
    modules: list[nn.Module] = [*runner.layers, *([runner.lm_head] if isinstance(runner.lm_head, nn.Module) else [])]
    total = runner.final_norm.numel() * runner.final_norm.element_size()
    for module in (m for top in modules for m in top.modules()):
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if getattr(module, "packed_linear", None) is not None:  # the fp32 / bf16 copy serves prompts only
            tensors = [t for t in tensors if t is not module.weight]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def engine_run(engine: LLMEngine, work: Workload) -> tuple[float, list[float]]:
    """Wall seconds for the whole workload, and per-request decode tok/s (after the first token)."""
    start = time.perf_counter()
    outs = engine.generate(
        work.prompts, [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in work.output_lens]
    )
    wall = time.perf_counter() - start
    rates = []
    for out in outs:
        m = out.metrics
        assert out.outputs[0].token_ids and len(out.outputs[0].token_ids) == m.num_output_tokens
        if m.tpot_s:
            rates.append(1.0 / m.tpot_s)
    return wall, rates


class _FirstTokenTimer:
    """A `generate` streamer that records when the first new token arrives."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_s: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.first_token_s = time.perf_counter()

    def end(self) -> None:
        pass


def hf_run(model, work: Workload, batch_size: int, pad_id: int) -> tuple[float, float | None]:  # type: ignore[no-untyped-def]
    """Wall seconds for the workload in static left-padded batches; decode tok/s when batch_size == 1."""
    start = time.perf_counter()
    decode_rate = None
    for b in range(0, len(work.prompts), batch_size):
        prompts = work.prompts[b : b + batch_size]
        new = max(work.output_lens[b : b + batch_size])
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        timer = _FirstTokenTimer() if len(prompts) == 1 else None
        t0 = time.perf_counter()
        model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
            pad_token_id=pad_id, streamer=timer,
        )
        if timer is not None and timer.first_token_s is not None and new > 1:
            decode_rate = (new - 1) / (time.perf_counter() - timer.first_token_s)
        del t0
    return time.perf_counter() - start, decode_rate


def run(model_source: str, dtype_name: DType, quick: bool, threads: int | None = None, log=print,  # type: ignore[no-untyped-def]
        device: str = "cpu", compile: bool = True, attention: str = "auto") -> dict:  # type: ignore[type-arg]
    from transformers import AutoModelForCausalLM

    from inference.model.model_loader import resolve_model_dir

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    scale = 4 if quick else 1
    n_single, n_uniform, n_mixed = 128 // scale, 32 // scale, 64 // scale
    log(f"loading {model_source} in the engine ...")
    engine = LLMEngine(
        EngineConfig(model=model_source, dtype=dtype_name, device=device, kv_cache_tokens=40960, max_num_seqs=64,  # type: ignore[arg-type]
                     max_num_batched_tokens=1024, num_threads=threads, compile=compile,
                     attention=attention)  # type: ignore[arg-type]
    )
    runner = engine.worker.runner
    assert runner is not None
    dtype = resolve_dtype(dtype_name, engine.worker.device)
    log(f"loading the same model in transformers ({dtype}) ...")
    hf = AutoModelForCausalLM.from_pretrained(resolve_model_dir(model_source), dtype=dtype).to(engine.worker.device).eval()  # type: ignore[arg-type]
    vocab = engine.info.vocab_size
    pad_id = engine.info.eos_token_ids[0] if engine.info.eos_token_ids else 0
    results: dict = {"model": model_source, "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                     "device": str(engine.worker.device), "compiled": runner.compiled is not None or runner.bucketed is not None,
                     "attention": "flex" if runner.flex else "sdpa",
                     "compile_s": round(runner.compile_s, 1)}

    warm = make_workload(vocab, 2, (16, 16), (8, 8), seed=1)
    engine_run(engine, warm)
    hf_run(hf, warm, 2, pad_id)

    log("single stream ...")
    single = make_workload(vocab, 1, (64, 64), (n_single, n_single), seed=2)
    _, engine_rates = engine_run(engine, single)
    _, hf_rate = hf_run(hf, single, 1, pad_id)
    results["single"] = {"engine": round(engine_rates[0], 1), "hf_generate": round(hf_rate or 0.0, 1)}
    if runner.compiled is not None:  # the same stream with the decode step eager: what compile buys
        compiled, runner.compiled = runner.compiled, None
        _, eager_rates = engine_run(engine, single)
        runner.compiled = compiled
        results["single_eager"] = {"engine": round(eager_rates[0], 1), "hf_generate": round(hf_rate or 0.0, 1)}

    log(f"uniform: {n_uniform} requests ...")
    uniform = make_workload(vocab, n_uniform, (64, 64), (128 // scale, 128 // scale), seed=3)
    wall_e, _ = engine_run(engine, uniform)
    wall_h, _ = hf_run(hf, uniform, n_uniform, pad_id)
    results["uniform32"] = {
        "engine": round(uniform.num_output_tokens / wall_e, 1),
        "hf_generate": round(uniform.num_output_tokens / wall_h, 1),
    }

    log(f"mixed: {n_mixed} requests ...")
    mixed = make_workload(vocab, n_mixed, (16, 256), (16, 256 // scale), seed=4)
    wall_e, _ = engine_run(engine, mixed)
    wall_h, _ = hf_run(hf, mixed, 32 // scale, pad_id)
    results["mixed64"] = {
        "engine": round(mixed.num_output_tokens / wall_e, 1),
        "hf_generate": round(mixed.num_output_tokens / wall_h, 1),
        "engine_wall_s": round(wall_e, 2),
        "hf_generate_wall_s": round(wall_h, 2),
    }

    # what a decode step reads (packed 4-bit layers count as packed): the engine's own limit
    weight_bytes = decode_weight_bytes(runner)
    results["weight_bytes"] = weight_bytes
    results["hf_weight_bytes"] = sum(p.numel() * p.element_size() for p in hf.parameters())
    if engine.worker.device.type == "cpu":  # the bandwidth probe reads host memory
        bandwidth = measure_read_bandwidth_gbs()
        results["read_bandwidth_gbs"] = round(bandwidth, 1)
        results["limit_bs1_tok_s"] = round(bandwidth * 1e9 / weight_bytes, 1)
    for key in ("single", "single_eager", "uniform32", "mixed64"):
        if key not in results:
            continue
        r = results[key]
        r["speedup"] = round(r["engine"] / r["hf_generate"], 2) if r["hf_generate"] else None
    engine.shutdown()
    results["shared_prefix"] = run_shared_prefix(engine.config, num_requests=n_uniform, log=log)
    return results


def print_table(r: dict) -> None:  # type: ignore[type-arg]
    compiled = f"compiled decode step ({r['compile_s']} s to compile)" if r["compiled"] else "eager decode step"
    print(f"model {r['model']}  dtype {r['dtype']}  device {r['device']}  threads {r['threads']}  attention {r['attention']}  {compiled}")
    print(f"{'scenario':<14}{'engine tok/s':>14}{'HF generate':>14}{'speedup':>10}")
    for key in ("single", "single_eager", "uniform32", "mixed64"):
        if key not in r:
            continue
        row = r[key]
        print(f"{key:<14}{row['engine']:>14}{row['hf_generate']:>14}{row['speedup']!s:>9}x")
    if "limit_bs1_tok_s" in r:
        print(
            f"batch-1 memory-bound limit: {r['limit_bs1_tok_s']} tok/s "
            f"({r['weight_bytes'] / 1e6:.0f} MB of weights read per token (HF: {r['hf_weight_bytes'] / 1e6:.0f} MB) / "
            f"{r['read_bandwidth_gbs']} GB/s measured read bandwidth); "
            f"single stream at {100 * r['single']['engine'] / r['limit_bs1_tok_s']:.0f}% of it"
        )
    print_shared_prefix(r["shared_prefix"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.benchmarks.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a quarter of the work (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both models run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: all cores)")
    parser.add_argument("--attention", default="auto", choices=["auto", "flex", "sdpa"],
                        help="the engine's attention path (auto: flex on CUDA, sdpa on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="the engine's compiled decode step (EngineConfig.compile); --no-compile: eager only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # compile progress
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    results = run(args.model, args.dtype, args.quick, args.threads,
                  log=lambda m: print(m, file=sys.stderr, flush=True), device=args.device, compile=args.compile,
                  attention=args.attention)
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
