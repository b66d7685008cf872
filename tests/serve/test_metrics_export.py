"""The serving metrics reach the dashboards: after real requests, every metric the rendered Grafana
dashboard queries is on the endpoint the rendered PodMonitor scrapes (Ray's metrics export port of
the node), with data."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
from ray import serve

from cluster.k8s.rayservice import METRICS_PORT
from tests.k8s.conftest import ROOT, render_profile
from tests.serve.conftest import ServeApp

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (\S+)$")


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((ROOT / "k8s/cpu-dev/monitoring/sloserve-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return set(re.findall(r"ray_sloserve_[a-z0-9_]+", " ".join(exprs)))


def samples(text: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            found.setdefault(match.group(1), []).append(float(match.group(2)))
    return found


def missing(names: set[str], scraped: dict[str, list[float]]) -> list[str]:
    """Names without a sample; counters and histograms also need a sample above 0."""
    return sorted(
        n for n in names
        if n not in scraped or (n.endswith(("_total", "_bucket")) and max(scraped[n]) <= 0)
    )


def _traffic(serve_app: ServeApp) -> None:
    async def burst() -> list[int]:
        body = {"model": "tiny:full", "prompt": "Count", "max_tokens": 24, "ignore_eos": True}
        async with httpx.AsyncClient(base_url=serve_app.base_url, timeout=60) as client:
            replies = await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(10)))
        return [r.status_code for r in replies]

    with httpx.Client(base_url=serve_app.base_url, timeout=60) as client:
        for stream in (False, True):
            body = {"model": "tiny", "prompt": "Hello there", "max_tokens": 4, "stream": stream}
            assert client.post("/v1/completions", json=body).status_code == 200
    statuses = asyncio.run(asyncio.wait_for(burst(), 90))  # past max_in_flight 6: some 429s
    assert 429 in statuses and 200 in statuses, statuses
    router = serve.get_app_handle(serve_app.app_name)
    weights = {"full": 1.0, "tp2": 0.0, "spare": 0.0}  # the fixture's own: other tests rely on them
    router.set_weights.remote(weights, "metrics-test").result(timeout_s=30)


def test_counters_the_dashboard_queries_are_exported_at_zero_before_their_first_event(serve_app: ServeApp) -> None:
    """No "No data" panels on a quiet cluster: the controller's decisions and the rejections exist at 0
    (or more) before anything was decided or refused, for every reason the router can record."""
    from deployments.slo.decision import REASON_CODES
    from deployments.telemetry.metrics import REJECT_REASONS

    wanted = {f'ray_sloserve_controller_decisions_total{{reason="{r}"}}' for r in REASON_CODES}
    wanted |= {f'ray_sloserve_rejected_total{{reason="{r}"}}' for r in REJECT_REASONS}
    deadline, absent = time.monotonic() + 45, wanted
    while absent and time.monotonic() < deadline:
        text = httpx.get(serve_app.metrics_url, timeout=10).text
        present = {f'{name}{{reason="{reason}"}}' for name, reason in re.findall(
            r'^(ray_sloserve_(?:controller_decisions|rejected)_total)\{[^}]*reason="([^"]+)"', text, re.M)}
        absent = wanted - present
        if absent:
            time.sleep(1.0)
    assert not absent, f"counters not exported before their first event: {sorted(absent)}"


def test_every_dashboard_metric_is_on_the_scraped_port_with_data(serve_app: ServeApp) -> None:
    pod_monitor = render_profile("cpu-dev").pod_monitor
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert METRICS_PORT == 8080  # KubeRay starts Ray with --metrics-export-port=8080, the pods' `metrics` port
    names = dashboard_metric_names()
    assert {"ray_sloserve_ttft_seconds_bucket", "ray_sloserve_queue_depth", "ray_sloserve_controller_weight",
            "ray_sloserve_prefix_cache_hit_ratio"} <= names
    _traffic(serve_app)
    deadline, absent = time.monotonic() + 45, sorted(names)
    while absent and time.monotonic() < deadline:
        time.sleep(1.0)
        absent = missing(names, samples(httpx.get(serve_app.metrics_url, timeout=10).text))
    assert not absent, f"dashboard metrics not exported with data: {absent}"
