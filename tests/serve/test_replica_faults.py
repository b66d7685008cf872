"""Killing a replica, or one TP rank of a replica, mid-stream: an error for the client, never a hang;
Serve replaces the replica and later requests succeed. Processes are found and killed through
Ray's own API (named actors: Serve's replicas, and each replica's rank actors named after it)."""

from __future__ import annotations

import threading
import time

import httpx
import ray

from tests.serve.conftest import ServeApp, replaced, replica_actor, wait_until


def _stream_and_kill(serve_app: ServeApp, variant: str, kill) -> tuple[int, str, float]:  # type: ignore[no-untyped-def]
    """Stream a long request, kill something after a few chunks; return (chunks, tail, seconds to end)."""
    body = {"model": f"tiny:{variant}", "prompt": "Go on and on", "max_tokens": 240, "ignore_eos": True, "stream": True}
    chunks, tail = 0, ""
    started = time.monotonic()
    with httpx.Client(base_url=serve_app.base_url, timeout=httpx.Timeout(60, read=45)) as client:
        try:
            with client.stream("POST", "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {\"id\""):
                        chunks += 1
                        if chunks == 3:
                            threading.Thread(target=kill).start()
                    elif line.startswith("data: "):
                        tail = line
        except httpx.HTTPError as e:  # a dropped connection is an error too, as long as it is not a hang
            tail = f"transport error: {e!r}"
    return chunks, tail, time.monotonic() - started


def _healthy_again(serve_app: ServeApp, variant: str) -> bool:
    def ok() -> bool:
        r = httpx.post(f"{serve_app.base_url}/v1/completions",
                       json={"model": f"tiny:{variant}", "prompt": "hi", "max_tokens": 4}, timeout=30)
        return r.status_code == 200
    return wait_until(ok, 120, interval_s=1.0)


def _named_actors(prefix: str) -> dict[str, str]:
    """name -> namespace of the named actors whose name starts with `prefix`."""
    return {a["name"]: a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)}


def _kill(name: str) -> None:
    ray.kill(ray.get_actor(name, namespace=_named_actors(name)[name]), no_restart=True)


def test_killing_a_replica_mid_stream_errors_then_serve_replaces_it(serve_app: ServeApp) -> None:
    replica = replica_actor("llm-spare")
    chunks, tail, seconds = _stream_and_kill(serve_app, "spare", lambda: _kill(replica))
    assert chunks >= 3
    assert "[DONE]" not in tail and ("error" in tail), tail
    assert seconds < 60
    assert _healthy_again(serve_app, "spare")
    assert replaced("llm-spare", replica)


def test_killing_a_tp_rank_mid_stream_errors_then_serve_replaces_the_replica(serve_app: ServeApp) -> None:
    replica = replica_actor("llm-tp2")
    [rank] = _named_actors(f"{replica}#rank")
    chunks, tail, seconds = _stream_and_kill(serve_app, "tp2", lambda: _kill(rank))
    assert chunks >= 3
    assert "[DONE]" not in tail and "error" in tail, tail
    assert seconds < 60
    assert _healthy_again(serve_app, "tp2")
    assert replaced("llm-tp2", replica)
