"""Admission control and client disconnects: bounded, never a hang, never a lost request, KV freed."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.serve.conftest import ServeApp, variant_stats, wait_until


def test_burst_above_the_admission_bound_gets_completions_or_429s_and_nothing_hangs(serve_app: ServeApp) -> None:
    num_requests = 24  # the router admits 6 at once

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
        r = await client.post(
            "/v1/completions",
            json={"model": "tiny:full", "prompt": f"request {i}", "max_tokens": 48, "ignore_eos": True, "temperature": 0},
        )
        return r.status_code, dict(r.headers), (r.json() if r.headers.get("content-type", "").startswith("application/json") else {"raw": r.text})

    async def burst() -> list[tuple[int, dict, dict]]:  # type: ignore[type-arg]
        async with httpx.AsyncClient(base_url=serve_app.base_url, timeout=60) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(num_requests))), 90)

    results = asyncio.run(burst())
    statuses = [s for s, _, _ in results]
    assert len(results) == num_requests
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 6
    for status, headers, body in results:
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            assert body["error"]["type"] == "rate_limit_error"
        else:
            assert body["usage"]["completion_tokens"] == 48
    metrics = httpx.get(f"{serve_app.base_url}/metrics", timeout=10).text
    assert 'sloserve_rejected_total{reason="overloaded"}' in metrics


def test_client_disconnect_mid_stream_frees_kv_at_the_replica(serve_app: ServeApp) -> None:
    body = {"model": "tiny:spare", "prompt": "Tell me everything", "max_tokens": 240, "ignore_eos": True, "stream": True}
    seen = 0
    with httpx.Client(base_url=serve_app.base_url, timeout=30) as client, client.stream(
        "POST", "/v1/completions", json=body
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                json.loads(line[6:])
                seen += 1
            if seen == 3:
                assert variant_stats(serve_app.base_url, "spare")["num_running"] == 1
                break  # leaving the context closes the connection mid-stream
    stats: dict = {}  # type: ignore[type-arg]

    def freed() -> bool:
        stats.update(variant_stats(serve_app.base_url, "spare"))
        return stats["num_running"] == 0 and stats["num_free_blocks"] == stats["num_blocks"]

    assert wait_until(freed, 15), stats

