"""No request body takes a replica down, and limits act before work: the issue-11 probes against
the real Serve app. Ids outside the vocabulary are 400s naming the field (the replica keeps its
pid and serves what follows); an unknown model is 404; a 20 MB body is 413 in under a second
while a stream through the same router keeps flowing; a huge prompt is refused before it is
tokenized; API keys from the environment variable guard a router."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from ray import serve

from tests.serve.conftest import ServeApp, replica_actor

BAD_ID = 1_000_000_000
TEST_KEYS_ENV = "SLOSERVE_TEST_API_KEYS"


def _replica_pid() -> str:
    """The replica's actor name: Serve gives a replacement replica a new one."""
    return replica_actor("llm-full")


def _error(response: httpx.Response, status: int) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "min_tokens": 2, "stop_token_ids": [BAD_ID]}, "stop_token_ids"),
        ({"prompt": "hi", "logit_bias": {str(BAD_ID): 5}}, "logit_bias"),
        ({"prompt": [1, 2, BAD_ID]}, "prompt"),
        ({"prompt": "hi", "stop_token_ids": [-1]}, "stop_token_ids"),
        ({"prompt": "hi", "n": 17}, "n"),
        ({"prompt": "hi", "best_of": 3}, None),
        ({"prompt": "hi", "stop": ["x"] * 17}, "stop"),
    ],
)
def test_ids_and_bounds_are_400s_naming_the_field_and_the_replica_serves_on(serve_app: ServeApp, body: dict, param: str | None) -> None:  # type: ignore[type-arg]
    pid = _replica_pid()
    r = httpx.post(f"{serve_app.base_url}/v1/completions", json={"model": "tiny:full", "max_tokens": 4, **body}, timeout=30)
    error = _error(r, 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"].split(".")[0] == param and param in error["message"]

    async def burst() -> list[int]:
        limit = asyncio.Semaphore(4)  # under the router's admission bound of 6

        async def one(client: httpx.AsyncClient, i: int) -> int:
            async with limit:
                resp = await client.post("/v1/completions", json={"model": "tiny:full", "prompt": f"after {i}", "max_tokens": 4})
                return resp.status_code

        async with httpx.AsyncClient(base_url=serve_app.base_url, timeout=30) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(8))), 60)

    assert asyncio.run(burst()) == [200] * 8
    assert _replica_pid() == pid  # never restarted


def test_unknown_model_is_404_model_not_found(serve_app: ServeApp) -> None:
    for path, body in (("/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"model": "tiny:nope", "prompt": "hi"})):
        error = _error(httpx.post(serve_app.base_url + path, json=body, timeout=30), 404)
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "model", "model_not_found")


def test_unknown_path_and_method_get_openai_error_bodies(serve_app: ServeApp) -> None:
    assert _error(httpx.get(f"{serve_app.base_url}/v1/nothing", timeout=30), 404)["code"] == "not_found"
    assert _error(httpx.put(f"{serve_app.base_url}/v1/completions", json={}, timeout=30), 405)["code"] == "method_not_allowed"


class _Stream:
    """A streaming completion in a thread, recording when each chunk arrived."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.times: list[float] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": "tiny:spare", "prompt": "Keep going", "max_tokens": 200, "ignore_eos": True, "stream": True}
        try:
            with httpx.Client(timeout=60) as client, client.stream("POST", f"{self.base_url}/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        self.times.append(time.monotonic())
        finally:
            self.done.set()

    def __enter__(self) -> _Stream:
        self.thread.start()
        deadline = time.monotonic() + 30
        while len(self.times) < 3 and time.monotonic() < deadline and not self.done.is_set():
            time.sleep(0.01)
        assert len(self.times) >= 3, "the stream did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.wait(60)

    def gaps_between(self, start: float, end: float) -> list[float]:
        inside = [t for t in self.times if start <= t <= end + 1.0]
        return [b - a for a, b in itertools.pairwise(inside)]


def _twenty_mb_chat() -> bytes:
    content = "a" * (20 * 1024 * 1024)
    return ('{"model": "tiny", "messages": [{"role": "user", "content": "' + content + '"}]}').encode()


def test_a_20_mb_body_is_413_in_under_a_second_and_a_stream_keeps_flowing(serve_app: ServeApp) -> None:
    payload = _twenty_mb_chat()

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(payload), 1 << 20):
            yield payload[start : start + (1 << 20)]

    with _Stream(serve_app.base_url) as stream, httpx.Client(timeout=30) as client:
        timings = []
        for content in (payload, chunked()):  # with Content-Length, then chunked (no length)
            started = time.monotonic()
            r = client.post(f"{serve_app.base_url}/v1/chat/completions", content=content,
                            headers={"content-type": "application/json"})
            elapsed = time.monotonic() - started
            timings.append(elapsed)
            assert _error(r, 413)["code"] == "request_too_large"
            assert elapsed < 1.0, timings
            gaps = stream.gaps_between(started, started + elapsed)
            assert not gaps or max(gaps) < 1.0, gaps
    assert len(stream.times) >= 150  # the stream ran to its end (200 tokens, a few chunks may merge)
    print(f"20 MB body -> 413 in {timings[0]:.3f} s (Content-Length), {timings[1]:.3f} s (chunked)")


def test_a_huge_prompt_is_refused_before_tokenizing(serve_app: ServeApp) -> None:
    started = time.monotonic()
    r = httpx.post(f"{serve_app.base_url}/v1/chat/completions", timeout=30,
                   json={"model": "tiny", "messages": [{"role": "user", "content": "word " * 600_000}]})  # 3 MB
    error = _error(r, 400)
    assert error["param"] == "messages" and "limit" in error["message"]
    assert time.monotonic() - started < 2.0


def test_sixty_thousand_messages_are_refused_before_each_is_validated_and_a_stream_keeps_flowing(serve_app: ServeApp) -> None:
    from inference.schema.requests import MAX_MESSAGES

    # 2 MB of JSON, under the body limit: each message was validated, then pickled to the replica
    # and templated there before the context check refused it (a ~0.5 s stall of the router's loop)
    messages = [{"role": "user", "content": "a"}] * 60_000
    with _Stream(serve_app.base_url) as stream:
        started = time.monotonic()
        r = httpx.post(f"{serve_app.base_url}/v1/chat/completions", json={"model": "tiny", "messages": messages}, timeout=30)
        elapsed = time.monotonic() - started
        error = _error(r, 400)
        assert error["param"] == "messages" and str(MAX_MESSAGES) in error["message"] and "60000" in error["message"]
        gaps = stream.gaps_between(started, started + elapsed)
    print(f"60,000 messages -> 400 in {elapsed:.3f} s; longest gap in a concurrent stream {max(gaps, default=0):.3f} s")
    assert elapsed < 1.0
    assert not gaps or max(gaps) < 0.3, gaps


@pytest.fixture(scope="module")
def guarded(serve_app: ServeApp) -> Iterator[str]:
    """A second router (its own app on /guarded) over the same replicas, whose process has API keys in
    the environment variable its config names: the keys are read exactly where `sloserve up` reads them."""
    from deployments.router.router import RouterDeployment
    from inference.schema.config import parse_config

    config = parse_config({"model": {"name": "tiny", "max_model_len": 256}, "variants": [{"name": "full"}],
                           "router": {"api_keys_env": TEST_KEYS_ENV, "max_in_flight": 4}})
    servers = {"full": serve.get_deployment_handle("llm-full", app_name="sloserve")}
    runtime_env = {"env_vars": {TEST_KEYS_ENV: "key-one, key-two"}}
    router = RouterDeployment.options(name="router-guarded", ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env})
    serve.run(router.bind(config.model_dump_json(), servers), name="guarded", route_prefix="/guarded")
    try:
        yield f"{serve_app.base_url}/guarded"
    finally:
        serve.delete("guarded")


def test_api_keys_guard_every_path_but_health(guarded: str) -> None:
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    assert httpx.get(f"{guarded}/health", timeout=30).status_code == 200
    for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/metrics"),
                         ("GET", "/controller/decisions"), ("GET", "/v1/sloserve/stats"), ("GET", "/docs")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"}):
            r = httpx.request(method, guarded + path, json=body if method == "POST" else None, headers=headers, timeout=30)
            assert _error(r, 401)["code"] == "invalid_api_key", (path, headers)
    for key in ("key-one", "key-two"):
        r = httpx.post(f"{guarded}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
    assert httpx.get(f"{guarded}/metrics", headers={"Authorization": "Bearer key-two"}, timeout=30).status_code == 200


def test_handles_inside_the_cluster_need_no_key(guarded: str) -> None:
    from inference.schema.requests import GenerateRequest
    from inference.schema.sampling import SamplingParams

    handle = serve.get_app_handle("guarded")
    request = GenerateRequest(prompt="hi", sampling=SamplingParams(max_tokens=2, ignore_eos=True))  # a random model may stop
    response = handle.generate.remote(request).result(timeout_s=30)
    assert response.usage.completion_tokens == 2
