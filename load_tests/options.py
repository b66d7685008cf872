"""The flags of `run` (and `sweep`), named as in `vllm bench serve` where it has them, and
`config_from_args(args) -> RunConfig`.

Parsing of the small flag languages lives here: `--goodput ttft:500 tpot:50`, `--header K:V`,
`--metadata K=V`, `--metric-percentiles 50,90,99`. Every problem becomes a `LoadTestError` whose
message names the flag and the value given.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from pydantic import ValidationError

from load_tests.config import SLO_METRICS, GoodputTargets, LoadTestError, RunConfig
from load_tests.gen.arrivals import load_trace

_ENDPOINTS = {"chat": "chat", "completions": "completions",
              "/v1/chat/completions": "chat", "/v1/completions": "completions"}


def parse_goodput(items: list[str] | None) -> GoodputTargets:
    """`["ttft:500", "tpot:50"]` -> GoodputTargets(ttft_ms=500, tpot_ms=50)."""
    targets: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        if not sep or name not in SLO_METRICS:
            raise LoadTestError(f"--goodput takes {'/'.join(SLO_METRICS)}:MS, e.g. ttft:500; got {item!r}")
        try:
            targets[f"{name}_ms"] = float(value)
        except ValueError as e:
            raise LoadTestError(f"--goodput {item!r}: {value!r} is not a number of ms") from e
    try:
        return GoodputTargets(**targets)
    except ValidationError as e:
        raise LoadTestError(f"--goodput {items}: targets must be positive ms") from e


def parse_pairs(items: list[str] | None, flag: str, separators: str) -> dict[str, str]:
    """`["K:V", ...]` (or K=V) -> dict; the first separator found splits."""
    out: dict[str, str] = {}
    for item in items or []:
        cut = min((i for i in (item.find(s) for s in separators) if i > 0), default=-1)
        if cut < 0:
            raise LoadTestError(f"{flag} takes KEY{separators[0]}VALUE, got {item!r}")
        out[item[:cut].strip()] = item[cut + 1 :].strip()
    return out


def parse_percentiles(text: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError as e:
        raise LoadTestError(f"--metric-percentiles takes numbers like 50,90,99; got {text!r}") from e


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    target = p.add_argument_group("target")
    target.add_argument("--base-url", default=None, help="server root (default http://HOST:PORT)")
    target.add_argument("--host", default="127.0.0.1")
    target.add_argument("--port", type=int, default=8000)
    target.add_argument("--endpoint", default="chat", choices=sorted(_ENDPOINTS), help="chat or completions")
    target.add_argument("--model", default=None, help="default: the first model of /v1/models")
    target.add_argument("--api-key", default=None, help="bearer token (default $OPENAI_API_KEY)")
    target.add_argument("--header", action="append", metavar="K:V", help="extra request header (repeatable)")
    target.add_argument("--slo-class", default=None, help="x-sloserve-slo-class: interactive or batch")
    target.add_argument("--num-sessions", type=int, default=0, help="rotate this many x-session-id values")
    target.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    load = p.add_argument_group("load (a run stops at --num-prompts or --duration, whichever first)")
    load.add_argument("--request-rate", type=float, default=math.inf, help="req/s, Poisson (default inf)")
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 = Poisson")
    load.add_argument("--max-concurrency", type=int, default=None)
    load.add_argument("--num-prompts", type=int, default=None)
    load.add_argument("--duration", type=float, default=None, help="seconds during which requests are sent")
    load.add_argument("--trace", default=None, metavar="FILE.yaml", help="rate over time (step/burst shapes)")
    load.add_argument("--trace-scale", type=float, default=None, help="multiply the trace's rates by this")
    load.add_argument("--drain-timeout", type=float, default=None,
                      help="s to wait for stragglers, then cancel (default 30; --request-timeout if only "
                           "--num-prompts bounds the run)")
    load.add_argument("--request-timeout", type=float, default=300.0)
    load.add_argument("--ready-check-timeout-sec", type=float, default=30.0)
    load.add_argument("--seed", type=int, default=0)
    prompts = p.add_argument_group("prompts")
    prompts.add_argument("--input-len", "--random-input-len", type=int, default=32, help="synthetic prompt words")
    prompts.add_argument("--output-len", "--random-output-len", type=int, default=64, help="max_tokens")
    prompts.add_argument("--prompt-file", "--dataset-path", default=None, help="JSONL file, or 'builtin'")
    prompts.add_argument("--temperature", type=float, default=0.0)
    prompts.add_argument("--ignore-eos", action="store_true", help="send vLLM's ignore_eos")
    results = p.add_argument_group("results")
    results.add_argument("--goodput", nargs="+", metavar="METRIC:MS", help="SLO, e.g. ttft:500 tpot:50 e2el:5000")
    results.add_argument("--metric-percentiles", default="50,90,99")
    results.add_argument("--result-dir", default=None)
    results.add_argument("--no-plots", action="store_true", help="skip the PNGs (report DIR draws them later)")
    results.add_argument("--label", default=None)
    results.add_argument("--metadata", nargs="+", metavar="KEY=VALUE")
    results.add_argument("--window-s", type=float, default=None, help="time-series window (default: auto)")
    results.add_argument("--fail-on-slo", action="store_true", help="exit 1 when attainment < --slo-target")
    results.add_argument("--slo-target", type=float, default=1.0, help="least SLO attainment that passes")
    results.add_argument("--quiet", "--disable-tqdm", action="store_true", help="no progress lines")
    results.add_argument("--progress-interval", type=float, default=5.0)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{where + ': ' if where else ''}{item['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(lines)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """Build and validate the RunConfig; `overrides` replace single fields (used by sweep)."""
    try:
        if args.trace_scale is not None and not args.trace_scale > 0:
            raise ValueError(f"--trace-scale must be > 0, got {args.trace_scale}")
        trace = load_trace(args.trace, args.trace_scale) if args.trace else None
    except ValueError as e:
        raise LoadTestError(str(e)) from e
    fields: dict[str, Any] = {
        "base_url": args.base_url or f"http://{args.host}:{args.port}",
        "endpoint": _ENDPOINTS[args.endpoint],
        "model": args.model,
        "request_rate": args.request_rate,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "num_prompts": args.num_prompts,
        "duration_s": args.duration,
        "trace": trace,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "prompt_file": args.prompt_file,
        "temperature": args.temperature,
        "ignore_eos": args.ignore_eos,
        "slo": parse_goodput(args.goodput),
        "metric_percentiles": parse_percentiles(args.metric_percentiles),
        "result_dir": args.result_dir,
        "plots": not args.no_plots,
        "label": args.label,
        "metadata": parse_pairs(args.metadata, "--metadata", "="),
        "seed": args.seed,
        "api_key": args.api_key,
        "headers": parse_pairs(args.header, "--header", ":="),
        "slo_class": args.slo_class,
        "num_sessions": args.num_sessions,
        "allow_remote": args.allow_remote,
        "fail_on_slo": args.fail_on_slo,
        "slo_target": args.slo_target,
        "request_timeout_s": args.request_timeout,
        "drain_timeout_s": args.drain_timeout,
        "ready_check_timeout_s": args.ready_check_timeout_sec,
        "window_s": args.window_s,
        "progress_interval_s": args.progress_interval,
        "quiet": args.quiet,
    }
    fields.update(overrides)
    try:
        return RunConfig(**fields)
    except ValidationError as e:
        raise LoadTestError(_describe(e)) from e
