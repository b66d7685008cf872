"""Errors at the serving edge and their one mapping to HTTP (OpenAI error bodies).

Replica errors arrive wrapped by Ray (`RayTaskError` with the original as `.cause`); they are
unwrapped here, so the router maps each kind of failure once. A 5xx body says what kind of failure
it was and the request id, never the exception's text: the router logs the details under that id.
An unknown model is 404 `model_not_found`, as OpenAI and vLLM answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.errors import (
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
