"""Errors at the serving edge and their one mapping to HTTP (OpenAI error bodies).

Replica errors arrive wrapped by Ray (`RayTaskError` with the original as `.cause`); they are
unwrapped here, so the router maps each kind of failure once. A 5xx body says what kind of failure
it was and the request id, never the exception's text: the router logs the details under that id.
An unknown model is 404 `model_not_found`, as OpenAI and vLLM answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference.schema.errors import (
    EngineDeadError,
    InvalidRequestError,
    InvalidSamplingParamsError,
    RequestFailedError,
)


class OverloadedError(Exception):
    """Admission refused: the router's in-flight bound (or a replica queue) is full."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeoutError(Exception):
    """A request ran past its timeout and was aborted."""


class UnknownModelError(InvalidRequestError):
    """The `model` names no served model or variant."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model")


@dataclass(slots=True)
class HTTPFailure:
    status: int
    message: str
    kind: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def unwrap(error: BaseException) -> BaseException:
    """The original exception behind Ray's wrappers."""
    seen = 0
    while seen < 5 and getattr(error, "cause", None) is not None and type(error).__name__.startswith("RayTaskError"):
        error = error.cause  # type: ignore[attr-defined]
        seen += 1
    return error


def classify(error: BaseException, retry_after_s: int = 1, request_id: str | None = None) -> HTTPFailure:
    error = unwrap(error)
    name = type(error).__name__
    ref = f" (request id {request_id})" if request_id else ""
    if isinstance(error, OverloadedError):
        return HTTPFailure(429, str(error), "rate_limit_error", code="overloaded",
                           headers={"Retry-After": str(error.retry_after_s)})
    if name == "BackPressureError":
        return HTTPFailure(429, "all replicas of the variant are busy; retry later", "rate_limit_error",
                           code="overloaded", headers={"Retry-After": str(retry_after_s)})
    if isinstance(error, RequestTimeoutError):
        return HTTPFailure(504, str(error), "timeout_error", code="timeout")
    if isinstance(error, UnknownModelError):
        return HTTPFailure(404, str(error), "invalid_request_error", "model", "model_not_found")
    if isinstance(error, InvalidSamplingParamsError):
        return HTTPFailure(400, str(error), "invalid_request_error", error.param)
    if isinstance(error, InvalidRequestError):
        return HTTPFailure(400, str(error), "invalid_request_error", error.param)
    if isinstance(error, RequestFailedError):
        return HTTPFailure(500, f"the request failed while it was generated{ref}", "server_error",
                           code="request_failed")
    if isinstance(error, EngineDeadError) or name in (
        "RayActorError", "ActorDiedError", "ActorUnavailableError", "DeploymentUnavailableError",
    ):
        return HTTPFailure(503, f"the replica serving this request failed; retry{ref}", "server_error",
                           code="replica_unavailable", headers={"Retry-After": str(retry_after_s)})
    return HTTPFailure(500, f"internal error{ref}", "server_error", code="internal_error")


def status_label(error: BaseException) -> str:
    """The `status` label of sloserve_requests_total for a failed request."""
    code = classify(error).status
    return {429: "rejected", 504: "timeout", 400: "bad_request", 404: "bad_request", 503: "unavailable"}.get(code, "error")


log = logging.getLogger("ray.serve")


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict"})


def _param_of(loc: Any) -> str | None:
    """A pydantic error location as the OpenAI `param`: field names and indices, without the
    tags pydantic adds for union members ('list[int]', 'constrained-str') or dict keys ('[key]')."""
    parts = []
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, str) and (not part.isidentifier() or part in _UNION_TAGS):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def request_id_of(http: Request) -> str:
    """The id HTTPGuard gave this request (logged with any failure, returned as x-request-id)."""
    return str(http.scope.get("state", {}).get("request_id") or "")


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first: dict[str, Any] = dict(exc.errors()[0]) if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = _param_of(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        message, param = f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(), None
    elif first.get("type") == "extra_forbidden":
        message = f"'{param}' is not supported by this server"
    elif first.get("type") == "missing":
        message = f"'{param}' is required"
    else:
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 for unknown paths, 405 for wrong methods, ... in the OpenAI error shape."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(error_body(str(exc.detail), kind, None, code), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def failure_response(error: BaseException, retry_after_s: int, request_id: str = "", engine_id: str = "") -> JSONResponse:
    failure = classify(error, retry_after_s, request_id or None)
    if failure.status >= 500:
        log.error("request %s (engine id %s) failed with %d: %r", request_id, engine_id or "-", failure.status, error)
    return JSONResponse(
        error_body(failure.message, failure.kind, failure.param, failure.code),
        status_code=failure.status,
        headers=failure.headers,
    )


def as_invalid(error: Exception) -> Exception:
    """A pydantic error while building the GenerateRequest, as a 400 naming the field."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        first = error.errors()[0]
        raised = first.get("ctx", {}).get("error")
        if isinstance(raised, InvalidRequestError):  # a validator's own error names its field
            return raised
        param = _param_of(first["loc"])
        return InvalidRequestError(f"{param}: {first['msg']}" if param else first["msg"], param or "body")
    return error


def register_error_handlers(app: FastAPI) -> None:
    """Validation errors and HTTP errors (404, 405, ...) as OpenAI error bodies."""
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
