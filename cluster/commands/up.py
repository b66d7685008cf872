"""`sloserve up`: a local Ray, the app deployed from the config, HTTP on the config's host:port."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

from cluster.commands.common import (
    add_config_argument,
    build_or_exit,
    load_or_exit,
    prefetch_models,
    set_ray_env,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: cluster.http_port)")
    parser.add_argument("--host", default=None, help="HTTP host (default: cluster.http_host, 127.0.0.1)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")


def warn_leaked_shm(shm: Path | None = None) -> int:
    """Print a warning when /dev/shm holds DeepSpeed's CPU all-reduce buffers (sloserve before
    2026-12-01 and DeepSpeed itself never removed them: 64 MiB of RAM each, 17 GiB on a test
    machine, and Ray's memory monitor then killed the Serve controller). Returns their bytes."""
    from inference.parallel.worker import DEEPSPEED_SHM_PREFIX, SHM_DIR

    shm = SHM_DIR if shm is None else shm
    pattern = f"{DEEPSPEED_SHM_PREFIX}*"
    try:
        found = [p.stat().st_size for p in shm.glob(pattern)]
    except OSError:
        return 0
    total = sum(found)
    if total >= 1 << 20:
        print(f"warning: {len(found)} DeepSpeed all-reduce buffers ({total / (1 << 30):.1f} GiB of RAM) are left in "
              f"{shm}, from processes that have exited; with no sloserve or DeepSpeed job running, "
              f"free them with: rm {shm}/{pattern}", flush=True)
    return total


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    host = args.host or config.cluster.http_host
    port = args.port or config.cluster.http_port
    set_ray_env(config)  # before Ray Serve is imported (build_or_exit) and before Ray starts
    application = build_or_exit(config, args.config)  # checks the controller's manifest before models load
    prefetch_models(config)

    import ray
    from ray import serve

    from deployments.app import serve_run_options

    warn_leaked_shm()
    started = time.monotonic()
    print("starting a local Ray ...", flush=True)
    ray.init(address="local", num_cpus=args.num_cpus or config.cluster.num_cpus, include_dashboard=False, log_to_driver=True)
    stop = threading.Event()
    serving = threading.Event()

    def on_signal(*_: object) -> None:
        # Ctrl-C while deploying must stop too: serve.run's wait swallowed the default KeyboardInterrupt
        # (seen: a SIGINT during "deploying" was lost and the server came up anyway). The event ends
        # the run either way; raising also cuts the deploy short where the wait lets it through.
        stop.set()
        if not serving.is_set():
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        serve.start(http_options={"host": host, "port": port})
        names = ", ".join(f"{v.name} (tp={v.tp_size}, weight={v.weight})" for v in config.variants)
        print(f"deploying {config.cluster.app_name}: variants {names} ...", flush=True)
        serve.run(application, **serve_run_options(config))
        serving.set()
        if stop.is_set():  # interrupted while deploying
            raise KeyboardInterrupt
        url = f"http://{host}:{port}"
        print(f"\nsloserve is serving {config.model.name} at {url}/v1  (ready in {time.monotonic() - started:.0f} s)")
        print(f"  models:  {config.model.name}, " + ", ".join(f"{config.model.name}:{v.name}" for v in config.variants))
        print(f"  try:     curl {url}/v1/chat/completions -H 'content-type: application/json' \\")
        print(f"             -d '{{\"model\": \"{config.model.name}\", \"temperature\": 0, \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'")
        print("  metrics: " + f"{url}/metrics    stop: Ctrl-C\n", flush=True)
        stop.wait()
        print("\nshutting down ...", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted while deploying: shutting down ...", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    print("stopped.")
    return 0
