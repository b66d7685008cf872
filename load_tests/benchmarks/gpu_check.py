"""`python -m load_tests.benchmarks.gpu_check`: a first hour on a CUDA machine in one command, one table.

    make gpu-check TORCH_INDEX=<your CUDA wheel index>     # runs this with --device cuda

1. `tests/gpu/` (pytest): the packaged model on CUDA, seeded sampling / beam search / prompt
   logprobs / guided decoding on CUDA, FlexAttention with CUDA graphs against SDPA, the KV pool from
   gpu_memory_utilization, int8-compute and fp8-compute, TP=2 over NCCL against TP=1 and a TP=2
   replica through Ray Serve where there are two GPUs, the engine benchmark;
2. the engine benchmark in full (`python -m load_tests.benchmarks.engine --device cuda --json`, not --quick):
   our engine against transformers `generate` per scenario;
3. a served benchmark: `sloserve up` with `full` and `int8-compute` on the device (half a GPU each, so one
   GPU holds both; the config is written to
   `--out`), each variant pinned by name at 1, 8 and 32 concurrent requests (closed loops,
   `load_tests.profile`), then stopped.

It prints one markdown table (and writes `gpu-check.json` and `gpu-check.md` to `--out`) to paste
into the docs. `--device cpu --quick` runs the same steps on a CPU machine (a smoke run: the GPU
tests are then skipped, which the table says). Only loopback traffic; every step is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from load_tests.profile import profile_variant
from load_tests.sloserve_process import SloserveUpError, sloserve_up

ROOT = Path(__file__).resolve().parents[2]
MODEL = "packaged:smollm2-135m-instruct"
NAME = "smollm2-135m-instruct"
LEVELS = (1, 8, 32)
SERVE_READY_S = 900.0


def _served_config(device: str) -> dict[str, Any]:
    engine = {"kv_cache_tokens": 16384, "max_num_seqs": 32, "max_num_batched_tokens": 512}
    common = {"dtype": "auto", "tp_size": 1, "num_replicas": 1, "min_replicas": 1, "max_replicas": 1,
              "device": device, "engine": engine}
    if device == "cuda":  # both variants' replicas on one GPU (a one-GPU machine is the common first box)
        common["num_gpus_per_rank"] = 0.5
    return {
        "model": {"source": MODEL, "name": NAME, "max_model_len": 2048},
        "variants": [{"name": "full", "weight": 1.0, **common},
                     {"name": "int8-compute", "quantization": "int8-compute", "weight": 0.0, **common}],
        "router": {"max_in_flight": 128, "request_timeout_s": 300},
        "cluster": {"http_host": "127.0.0.1"},
    }


def run_gpu_tests(log: Path) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "tests/gpu"], cwd=ROOT, text=True,
                          capture_output=True, timeout=3600)
    log.write_text(done.stdout + done.stderr)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", done.stdout)}
    return {"returncode": done.returncode, "counts": counts, "seconds": round(time.monotonic() - started, 1),
            "skipped_because": sorted(set(re.findall(r"SKIPPED \[\d+\] [^:]+(?::\d+)?: (.+)", done.stdout)))}


def run_engine_bench(device: str, quick: bool, log: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "load_tests.benchmarks.engine", "--device", device, "--json", *(["--quick"] if quick else [])]
    done = subprocess.run(command, cwd=ROOT, text=True, capture_output=True, timeout=3600)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"error": f"load_tests.benchmarks.engine exited {done.returncode} (log: {log})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_served_bench(device: str, out: Path, levels: tuple[int, ...]) -> dict[str, Any]:
    config = out / "gpu-check-served.yaml"
    config.write_text(yaml.safe_dump(_served_config(device), sort_keys=False))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    served: dict[str, Any] = {}
    try:
        with sloserve_up(config, port, out / "sloserve-up.log", ready_timeout_s=SERVE_READY_S):
            for variant in ("full", "int8-compute"):
                profile = asyncio.run(profile_variant(base, f"{NAME}:{variant}", levels, log=lambda _: None))
                served[variant] = profile.model_dump(mode="json")
                print(f"  served {variant}: " + ", ".join(f"@{k} {v} tok/s" for k, v in profile.tok_s_at.items()),
                      flush=True)
    except SloserveUpError as e:
        return {"error": str(e)}
    return served


def _device_name(device: str) -> str:
    """The GPUs (nvidia-smi) or the CPU model, and the torch installed (this tool imports no torch)."""
    from importlib.metadata import version

    torch_version = version("torch")
    if device == "cuda":
        try:
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], text=True,
                                   capture_output=True, timeout=30, check=True).stdout.split("\n")
            gpus = [n.strip() for n in names if n.strip()]
            return f"{gpus[0]} x{len(gpus)}, torch {torch_version}"
        except (OSError, subprocess.SubprocessError, IndexError):
            return f"no GPU found by nvidia-smi, torch {torch_version}"
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch_version}"


def table(report: dict[str, Any]) -> str:
    lines = [f"gpu-check {report['when']} on {report['device_name']} (--device {report['device']}"
             f"{', --quick' if report['quick'] else ''})", "",
             "| check | result |", "| --- | --- |"]
    tests = report["gpu_tests"]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(tests["counts"].items())) or "nothing collected"
    why = f"; skipped: {'; '.join(tests['skipped_because'])}" if tests["skipped_because"] else ""
    lines.append(f"| tests/gpu | {counts} in {tests['seconds']} s (exit {tests['returncode']}){why} |")
    bench = report["engine_bench"]
    if "error" in bench:
        lines.append(f"| engine benchmark | {bench['error']} |")
    else:
        compiled = f"compiled in {bench.get('compile_s')} s" if bench.get("compiled") else "eager"
        lines.append(f"| engine | attention {bench.get('attention')}, decode step {compiled}, {bench.get('dtype')} |")
        for scenario in ("single", "uniform32", "mixed64"):
            row = bench.get(scenario) or {}
            lines.append(f"| engine {scenario}, tok/s (transformers generate) | {row.get('engine')} "
                         f"({row.get('hf_generate')}): {row.get('speedup')}x |")
    served = report["served"]
    if "error" in served:
        lines.append(f"| served | {served['error']} |")
    else:
        for level in report["levels"]:
            key = str(level)
            full, int8 = served["full"], served["int8-compute"]
            ratio = int8["tok_s_at"][key] / full["tok_s_at"][key]
            lines.append(f"| served @{level}: tok/s full / int8-compute (TPOT p50 ms) | {full['tok_s_at'][key]} / "
                         f"{int8['tok_s_at'][key]} = {ratio:.2f}x ({full['tpot_ms_at'][key]} / "
                         f"{int8['tpot_ms_at'][key]}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load_tests.benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="the engine benchmark's quick mode, served at 1 and 8 only")
    p.add_argument("--out", type=Path, default=Path("results/gpu-check"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    levels = LEVELS[:2] if args.quick else LEVELS
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device,
                              "device_name": _device_name(args.device), "quick": args.quick, "levels": list(levels)}
    print("1/3 tests/gpu ...", flush=True)
    report["gpu_tests"] = run_gpu_tests(args.out / "tests-gpu.log")
    print("2/3 engine benchmark ...", flush=True)
    report["engine_bench"] = run_engine_bench(args.device, args.quick, args.out / "engine-bench.log")
    print(f"3/3 served benchmark at {list(levels)} concurrent ...", flush=True)
    report["served"] = run_served_bench(args.device, args.out, levels)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1))
    text = table(report)
    (args.out / "gpu-check.md").write_text(text + "\n")
    print(text)
    failed = report["gpu_tests"]["returncode"] not in (0, 5) or "error" in report["engine_bench"] or "error" in report["served"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
