"""`HTTPGuard`: the ASGI layer in front of the router's routes — API keys, body limit, no leaked internals.

In this order, before any route runs: (1) API keys: when keys are configured every path but
`/health` (and, if `protect_ops_endpoints` is off, the operations endpoints) needs
`Authorization: Bearer <key>`, compared in constant time, else 401; (2) the body limit: a declared
`Content-Length` over it is answered 413 without reading the body, and a body sent without one
(chunked) is read only up to the limit; (3) anything a route raises unhandled becomes a 500 whose
body carries a request id and nothing else, the details logged under that id. Every refusal is an
OpenAI error body. Handle callers inside the cluster never pass through here.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from deployments.http.errors import error_body
from deployments.telemetry.hop_trace import TRACE

log = logging.getLogger("ray.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})
OPS_PATHS = frozenset({"/metrics", "/controller/decisions", "/v1/sloserve/stats", "/docs", "/docs/oauth2-redirect",
                       "/redoc", "/openapi.json"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True, slots=True)
class GuardSettings:
    api_keys: frozenset[str] = frozenset()
    protect_ops_endpoints: bool = True
    max_body_bytes: int = 4 * 1024 * 1024


class _BodyTooLarge(Exception):
    pass


def request_id_of(scope: Scope) -> str:
    """The request's id: Serve's `x-request-id` (set by its proxy) when well formed, else a new one."""
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


def is_authorized(header: str | None, keys: frozenset[str]) -> bool:
    """`Authorization: Bearer <key>` names one of `keys`; every key is compared, in constant time."""
    if header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    given_bytes = given.strip().encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_bytes, key.encode())
    return found


async def send_error(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class HTTPGuard:
    """ASGI middleware; reads its `GuardSettings` from `app.state.guard` (set by the Router at start)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: GuardSettings = getattr(getattr(scope.get("app"), "state", None), "guard", None) or GuardSettings()
        request_id = request_id_of(scope)
        TRACE.stamp(request_id, "router.asgi")
        scope.setdefault("state", {})["request_id"] = request_id
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        path = _route_path(scope)

        needs_key = settings.api_keys and path not in OPEN_PATHS and (settings.protect_ops_endpoints or path not in OPS_PATHS)
        if needs_key and not is_authorized(headers.get("authorization"), settings.api_keys):
            message = ("missing API key: send 'Authorization: Bearer <key>'" if "authorization" not in headers
                       else "invalid API key")
            await send_error(send, 401, error_body(message, "invalid_request_error", None, "invalid_api_key"),
                             {"WWW-Authenticate": "Bearer"})
            return

        limit = settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            await send_error(send, 413, _too_large(limit))
            return
        try:
            body_messages = await _read_body(receive, limit)
        except _BodyTooLarge:
            await send_error(send, 413, _too_large(limit))
            return

        async def replay() -> Message:
            return body_messages.pop(0) if body_messages else await receive()

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, replay, tracking_send)
        except Exception:
            log.exception("request %s: unhandled error in the router", request_id)
            if not started:
                await send_error(send, 500, error_body(f"internal error (request id {request_id})", "server_error",
                                                       None, "internal_error"))


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path.rstrip("/") or "/"


def _too_large(limit: int) -> dict[str, Any]:
    return error_body(f"request body is larger than the limit of {limit} bytes", "invalid_request_error", None,
                      "request_too_large")


async def _read_body(receive: Receive, limit: int) -> list[Message]:
    """The request's body messages, read until the end or past `limit` bytes (then _BodyTooLarge)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages  # a disconnect: let the app see it
        size += len(message.get("body", b""))
        if size > limit:
            raise _BodyTooLarge
        if not message.get("more_body", False):
            return messages
