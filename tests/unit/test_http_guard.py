"""`HTTPGuard` as plain ASGI (no Ray): API keys, the body limit with and without Content-Length,
and 500s that carry a request id and nothing of the exception."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from deployments.http.errors import UnknownModelError, classify
from deployments.http.guard import GuardSettings, HTTPGuard, is_authorized
from inference.schema.config import API_KEYS_ENV, RouterConfig
from inference.schema.errors import RequestFailedError

SECRET = "/opt/secret/path/model.bin: CUDA error 700"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"size": len(body)})


async def boom(_: Request) -> PlainTextResponse:
    raise RuntimeError(SECRET)


async def ok(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_app(settings: GuardSettings) -> Starlette:
    app = Starlette(routes=[Route("/v1/completions", echo, methods=["POST"]), Route("/v1/boom", boom),
                            Route("/health", ok), Route("/metrics", ok)])
    app.add_middleware(HTTPGuard)  # type: ignore[arg-type]
    app.state.guard = settings
    return app


def call(app: Starlette, method: str, path: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(asyncio.wait_for(go(), 30))


def assert_openai_error(response: httpx.Response, status: int, code: str | None) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code
    return error  # type: ignore[no-any-return]


def test_keys_are_read_from_the_named_variable_only() -> None:
    router = RouterConfig()
    assert router.api_keys_env == API_KEYS_ENV == "SLOSERVE_API_KEYS"
    assert router.api_keys({API_KEYS_ENV: " k1, ,k2 "}) == {"k1", "k2"}
    assert router.api_keys({API_KEYS_ENV: ""}) == frozenset()
    assert router.api_keys({}) == frozenset()
    assert RouterConfig(api_keys_env=None).api_keys({API_KEYS_ENV: "k1"}) == frozenset()
    assert RouterConfig(api_keys_env="OTHER_KEYS").api_keys({"OTHER_KEYS": "x"}) == {"x"}


@pytest.mark.parametrize(
    ("header", "allowed"),
    [(None, False), ("Bearer k1", True), ("bearer k2", True), ("Bearer k3", False), ("Basic k1", False),
     ("Bearer", False), ("Bearer k1x", False), ("k1", False)],
)
def test_bearer_keys_are_compared_exactly(header: str | None, allowed: bool) -> None:
    assert is_authorized(header, frozenset({"k1", "k2"})) is allowed


def test_with_keys_everything_but_health_needs_one() -> None:
    app = make_app(GuardSettings(api_keys=frozenset({"k1"})))
    assert call(app, "GET", "/health").status_code == 200
    for path in ("/metrics", "/v1/boom"):
        response = call(app, "GET", path)
        assert_openai_error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_openai_error(call(app, "POST", "/v1/completions", json={"a": 1}, headers={"Authorization": "Bearer k2"}),
                        401, "invalid_api_key")
    response = call(app, "POST", "/v1/completions", json={"a": 1}, headers={"Authorization": "Bearer k1"})
    assert response.status_code == 200 and response.json() == {"size": len(b"{\"a\":1}")}
    assert call(app, "GET", "/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_ops_endpoints_can_be_left_open() -> None:
    app = make_app(GuardSettings(api_keys=frozenset({"k1"}), protect_ops_endpoints=False))
    assert call(app, "GET", "/metrics").status_code == 200
    assert call(app, "POST", "/v1/completions", json={}).status_code == 401


def test_without_keys_nothing_needs_one() -> None:
    app = make_app(GuardSettings())
    assert call(app, "POST", "/v1/completions", json={"a": 1}).status_code == 200


def test_a_declared_body_over_the_limit_is_413_before_it_is_read() -> None:
    app = make_app(GuardSettings(max_body_bytes=1024))
    assert call(app, "POST", "/v1/completions", content=b"x" * 1024).json() == {"size": 1024}
    assert_openai_error(call(app, "POST", "/v1/completions", content=b"x" * 1025), 413, "request_too_large")


def test_a_chunked_body_is_read_only_up_to_the_limit() -> None:
    sent = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(1000):  # 1 MB offered, 64 KiB allowed
            sent.append(1)
            yield b"y" * 1000

    app = make_app(GuardSettings(max_body_bytes=64 * 1024))
    response = call(app, "POST", "/v1/completions", content=chunks())
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413, "request_too_large")
    assert len(sent) < 100  # stopped reading soon after the limit

    async def small() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"z" * 100

    assert call(app, "POST", "/v1/completions", content=small()).json() == {"size": 1000}


def test_an_unhandled_error_is_a_500_with_a_request_id_and_no_internals(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(GuardSettings())
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        response = call(app, "GET", "/v1/boom", headers={"x-request-id": "abc-123"})
    error = assert_openai_error(response, 500, "internal_error")
    assert "abc-123" in error["message"] and SECRET not in response.text and "RuntimeError" not in response.text
    assert "abc-123" in caplog.text and SECRET in caplog.text  # the details are in the log, under the id


def test_classified_failures_reveal_nothing_and_unknown_model_is_404() -> None:
    for error in (RuntimeError(SECRET), RequestFailedError(SECRET), KeyError(SECRET)):
        failure = classify(error, 1, "req-9")
        assert failure.status == 500 and SECRET not in failure.message and "req-9" in failure.message
    failure = classify(UnknownModelError("model 'x' does not exist"), 1, "req-9")
    assert (failure.status, failure.code, failure.param) == (404, "model_not_found", "model")
