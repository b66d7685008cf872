"""A real local Ray Serve app on CPU over 127.0.0.1, with tiny random models; stopped by the fixture."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.tiny_models import make_tiny_model_dir

METRICS_INTERVAL_ENV = "RAY_metrics_report_interval_ms"


@dataclass
class ServeApp:
    base_url: str
    app_name: str
    model_name: str
    metrics_url: str  # Ray's metrics export port of the node: what the PodMonitor scrapes in a pod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def ray_env(config: Any) -> Iterator[None]:
    """The config's `cluster.ray_env()` (Ray Serve's fast path) in the environment the local Ray starts
    from, as `sloserve up` runs it: Ray's processes inherit it. This test process imported Ray Serve
    already, so its own handles keep Serve's defaults, as a client service's may."""
    env = config.cluster.ray_env()
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)


@pytest.fixture(scope="package")
def serve_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 2048: room for a tools prompt (the tiny tokenizer is nearly byte-level)
    return make_tiny_model_dir(tmp_path_factory.mktemp("serve-tiny"), max_position_embeddings=2048)


@pytest.fixture(scope="package")
def serve_app(serve_model_dir: Path) -> Iterator[ServeApp]:
    import ray
    from ray import serve

    from deployments.app import build_app
    from inference.schema.config import parse_config

    engine = {"kv_cache_tokens": 8192, "block_size": 16, "max_num_seqs": 16, "max_num_batched_tokens": 128}
    config = parse_config(
        {
            "model": {"source": str(serve_model_dir), "name": "tiny", "max_model_len": 2048},
            "variants": [
                {"name": "full", "dtype": "float32", "engine": engine},
                {"name": "tp2", "dtype": "float32", "tp_size": 2, "weight": 0.0, "min_replicas": 0, "engine": engine},
                {"name": "spare", "dtype": "float32", "weight": 0.0, "min_replicas": 0, "engine": engine},
            ],
            "router": {"max_in_flight": 6, "request_timeout_s": 60},
        }
    )
    port, metrics_port = free_port(), free_port()
    # workers report metrics to the node's agent every second (default 10 s), so a test sees them soon
    os.environ[METRICS_INTERVAL_ENV] = "1000"
    with ray_env(config):
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
                 _metrics_export_port=metrics_port)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="sloserve", route_prefix="/")
        yield ServeApp(f"http://127.0.0.1:{port}", "sloserve", "tiny", f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop(METRICS_INTERVAL_ENV, None)


def wait_until(predicate, timeout_s: float, interval_s: float = 0.25) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # the thing is still coming up
            pass
        time.sleep(interval_s)
    return False


def variant_stats(base_url: str, variant: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{base_url}/v1/sloserve/stats", timeout=10).json()["variants"][variant]


def replica_actors(deployment: str, app_name: str = "sloserve") -> list[str]:
    """Names of a deployment's replica actors (not their rank actors), from Ray's named actors: a
    replacement replica has a new name; a killed one may be listed until Serve has cleaned it up."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(prefix) and "#rank" not in a["name"])


def replica_actor(deployment: str, app_name: str = "sloserve") -> str:
    """The name of a one-replica deployment's replica actor."""
    [name] = replica_actors(deployment, app_name)
    return name


def replaced(deployment: str, old: str, timeout_s: float = 60.0) -> bool:
    """Whether Serve has replaced replica `old` with a new one within `timeout_s`."""
    return wait_until(lambda: old not in (now := replica_actors(deployment)) and bool(now), timeout_s)
