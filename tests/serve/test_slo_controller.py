"""The SLO controller on a real local Serve app (tiny models, two variants, loopback HTTP).

The manifest written here makes `full` slow on paper (about 1 req/s under the SLO) and `fast`
quick, so a few requests per second put `full` at risk: the controller shifts traffic to `fast`
at once; with the (short) quality budget spent it adds a `full` replica through Serve's external
scaling API. Killing the controller replica leaves the router's weights as they were; Serve starts
a new controller, which carries on from them: once calm it restores `full` and removes the extra
replica.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import free_port, ray_env, wait_until

APP, PREFIX = "slo", "/slo"


def _profile(tok_s: float, ttft_ms: float) -> dict[str, Any]:
    tpot = 1000.0 / tok_s
    return {"tok_s_bs1": tok_s, "ttft_ms_p50": ttft_ms,
            "tpot_ms_at": {"1": tpot, "2": tpot * 1.2, "4": tpot * 2.0, "8": tpot * 4.0}}


def _manifest(path: Path) -> Path:
    entry = {"method": "none", "params": 1000, "bytes": 4000}
    manifest = {
        "base": "tiny", "hardware": "test: made-up profiles, full slow and fast quick",
        "variants": [
            entry | {"name": "full", "path": "full", "quality": {"agreement": 1.0, "kl": 0.0},
                     "speed": _profile(tok_s=5.0, ttft_ms=200.0)},
            entry | {"name": "fast", "path": "fast", "quality": {"agreement": 0.9, "kl": 0.1},
                     "speed": _profile(tok_s=500.0, ttft_ms=5.0)},
        ],
    }
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def slo_app(serve_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import ray
    from ray import serve

    from deployments.app import build_app, serve_run_options
    from inference.schema.config import parse_config

    engine = {"kv_cache_tokens": 2048, "block_size": 16, "max_num_seqs": 16, "max_num_batched_tokens": 128}
    config = parse_config({
        "model": {"source": str(serve_model_dir), "name": "tiny", "max_model_len": 256},
        "variants": [
            {"name": "full", "dtype": "float32", "max_replicas": 2, "engine": engine},
            {"name": "fast", "dtype": "float32", "weight": 0.0, "engine": engine},
        ],
        "router": {"max_in_flight": 32, "request_timeout_s": 60},
        "slo": {"default_class": "interactive", "classes": {"interactive": {"ttft_p95_ms": 3000, "tpot_p95_ms": 400}}},
        "controller": {
            "enabled": True, "manifest": str(_manifest(tmp_path_factory.mktemp("slo") / "variants.json")),
            "interval_s": 1.0, "window_s": 6.0, "recent_window_s": 2.0, "min_samples": 5,
            "restore_hold_s": 4.0, "restore_step": 0.5, "scale_down_hold_s": 6.0, "replica_cold_start_s": 5.0,
            "max_total_replicas": 3, "quality_budget": 0.02, "quality_budget_window_s": 20.0,
        },
        "cluster": {"app_name": APP, "route_prefix": PREFIX},
    })
    owner = not ray.is_initialized()  # the package's serve_app may already run Ray and Serve
    port = free_port()
    if owner:
        with ray_env(config):
            ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    else:
        port = int(_serve_client().http_config.port)
    try:
        serve.run(build_app(config), **serve_run_options(config))
        yield f"http://127.0.0.1:{port}{PREFIX}"
    finally:
        serve.delete(APP)
        if owner:
            serve.shutdown()
            ray.shutdown()


def _decisions(base_url: str) -> dict[str, Any]:
    return httpx.get(f"{base_url}/controller/decisions", timeout=10).json()  # type: ignore[no-any-return]


def _send_load(base_url: str, rate_rps: float, duration_s: float) -> list[str]:
    """Requests at a steady rate from threads; returns the variant of each answer."""
    variants: list[str] = []
    body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 12, "ignore_eos": True}

    def one() -> None:
        r = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
        variants.append(r.headers.get("x-sloserve-variant", f"HTTP {r.status_code}"))

    threads = []
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        threads.append(threading.Thread(target=one))
        threads[-1].start()
        time.sleep(1.0 / rate_rps)
    for t in threads:
        t.join(timeout=60)
    return variants


def _serve_client() -> Any:
    from ray import serve

    return serve.context._get_global_client()


def _controller_pid() -> int:
    details = _serve_client().get_serve_details()
    replicas = details["applications"][APP]["deployments"]["slo-controller"]["replicas"]
    running = [r["pid"] for r in replicas if r["state"] == "RUNNING"]
    assert len(running) == 1, replicas
    return int(running[0])


def _target(variant: str) -> int:
    details = _serve_client().get_serve_details()
    return int(details["applications"][APP]["deployments"][f"llm-{variant}"]["target_num_replicas"])


def test_controller_degrades_under_load_survives_a_kill_and_restores(slo_app: str) -> None:
    assert _decisions(slo_app)["weights"] == {"full": 1.0, "fast": 0.0}

    answered = _send_load(slo_app, rate_rps=4.0, duration_s=12.0)
    assert "fast" in answered and all(v in ("full", "fast") for v in answered), answered
    log = _decisions(slo_app)
    assert log["weights"]["fast"] > 0.5, log
    assert any(d["reason"] in ("degrade", "degrade_scale_up") for d in log["decisions"]), log
    assert any(d["replicas"]["full"] == 2 for d in log["decisions"]), log  # quality budget spent: +1 full
    assert wait_until(lambda: _target("full") == 2, 10)
    degraded = log["weights"]

    pid = _controller_pid()
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    assert _decisions(slo_app)["weights"] == degraded  # the router keeps the last weights
    assert wait_until(lambda: _controller_pid() != pid, 60, interval_s=0.5)

    # the new controller carries on from the router's weights and Serve's targets
    assert wait_until(lambda: _decisions(slo_app)["weights"]["full"] == 1.0, 60, interval_s=0.5), _decisions(slo_app)
    assert wait_until(lambda: _target("full") == 1, 60, interval_s=0.5), _decisions(slo_app)
    reasons = [d["reason"] for d in _decisions(slo_app)["decisions"]]
    assert "restore" in reasons and "scale_down" in reasons, reasons
