"""`python -m load_tests profile`: measure every variant of a config through the served stack, write the
SLO controller's manifest.

    python -m load_tests profile --config cluster/configs/local-slo.yaml --quality variants/variants.json \\
        --quality-map int8=torch-int8 --out cluster/configs/local-slo-manifest.json

Starts a local Ray with the config's app (the controller off, so nothing moves traffic), measures
each variant pinned by name (`load_tests/profile.py`: closed loops at each concurrency, warmed up,
medians), and writes a manifest whose speed is what the controller will see and whose quality and
size come from a `sloserve compress` manifest (`--quality`; a config variant takes the entry of
its own name unless `--quality-map variant=entry` says otherwise). The load average before and
after is recorded in the manifest: measure alone (below ~0.5) or the figures mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cluster.commands.common import (
    add_config_argument,
    build_or_exit,
    load_or_exit,
    prefetch_models,
    set_ray_env,
)

DEFAULT_CONCURRENCIES = "1,4,8,16,32"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="manifest to write (variants.json format)")
    parser.add_argument("--quality", type=Path, required=True,
                        help="variants.json from `sloserve compress`: quality and size of each variant")
    parser.add_argument("--quality-map", default="",
                        help="config variant=entry in --quality, comma-separated (default: the same name)")
    parser.add_argument("--concurrency", default=DEFAULT_CONCURRENCIES, help="concurrency levels to measure")
    parser.add_argument("--input-len", type=int, default=32, help="prompt length, words")
    parser.add_argument("--output-len", type=int, default=32, help="output tokens per request (ignore_eos)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per concurrency (medians kept)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")


def _fail(message: str) -> int:
    print(f"python -m load_tests profile: {message}", file=sys.stderr)
    return 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: argparse.Namespace) -> int:
    from inference.schema.manifest import ManifestError, Measurement, VariantManifest

    config = load_or_exit(args.config)
    try:
        quality = VariantManifest.load(args.quality)
        levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
        mapping = dict(pair.split("=", 1) for pair in args.quality_map.split(",") if pair.strip())
    except ManifestError as e:
        return _fail(f"--quality: {e}")
    except ValueError:
        return _fail("--concurrency takes integers and --quality-map takes variant=entry pairs")
    if not levels or levels[0] < 1 or args.repeats < 1:
        return _fail("--concurrency needs levels >= 1 and --repeats >= 1")
    known = {e.name for e in quality.variants}
    missing = [f"{v.name} (-> {mapping.get(v.name, v.name)})" for v in config.variants
               if mapping.get(v.name, v.name) not in known]
    if missing:
        return _fail(f"--quality {args.quality} has no entry for {missing}; it has {sorted(known)} (see --quality-map)")
    config = config.model_copy(update={"controller": config.controller.model_copy(update={"enabled": False})})
    set_ray_env(config)  # the served stack measured as `sloserve up` runs it
    application = build_or_exit(config, args.config)
    prefetch_models(config)

    import ray
    from ray import serve

    from deployments.app import serve_run_options
    from load_tests.profile import profile_variant

    port = _free_port()
    # read before any of our own work: after the replicas start, the 1-minute average counts their loading
    load_before, when = round(os.getloadavg()[0], 2), datetime.now(UTC).isoformat(timespec="seconds")
    if load_before >= 0.5:
        print(f"warning: load average {load_before} before starting: other work is running", flush=True)
    ray.init(address="local", num_cpus=args.num_cpus or config.cluster.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application, **serve_run_options(config))
        entries = []
        for variant in config.variants:
            started = time.monotonic()
            print(f"profiling {variant.name} at concurrency {levels} ...", flush=True)
            speed = asyncio.run(profile_variant(f"http://127.0.0.1:{port}", f"{config.model.name}:{variant.name}",
                                                levels, args.input_len, args.output_len, args.repeats))
            source = quality.get(mapping.get(variant.name, variant.name))
            entries.append(source.model_copy(update={
                "name": variant.name, "path": _manifest_path(variant.source or config.model.source, args.out), "speed": speed,
                "quantization": variant.quantization, "dtype": variant.dtype,
                "options": {**source.options, "quality_from": f"{args.quality}:{source.name}"},
            }))
            print(f"  {variant.name}: {time.monotonic() - started:.0f} s", flush=True)
        how = (f"served: `python -m load_tests profile --config {args.config or 'packaged local.yaml'}` "
               f"(closed loops of N requests, {args.input_len}-word prompts, {args.output_len} tokens, ignore_eos)")
        measured = Measurement(when=when, how=how, load_avg_before=load_before,
                               load_avg_after=round(os.getloadavg()[0], 2), repeats=args.repeats)
        manifest = VariantManifest(base=quality.base, hardware=f"{quality.hardware}, served", measured=measured,
                                   variants=entries)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        manifest.save(args.out)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"wrote {args.out} (load average {measured.load_avg_before} -> {measured.load_avg_after})")
    return 0


def _manifest_path(source: str, out: Path) -> str:
    """A variant directory is written relative to the manifest (absolute paths of one machine would be
    committed otherwise); other sources (packaged names, hub ids) as given."""
    path = Path(source)
    return os.path.relpath(path, out.resolve().parent) if path.is_absolute() else source
