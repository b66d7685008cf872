"""Typed errors at the edge of the inference layer; the router maps them to HTTP once."""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error the inference layer raises on purpose."""


class ModelSourceError(InferenceError):
    """A model source could not be resolved: missing path, unknown packaged name, unreachable hub."""


class UnsupportedModelError(InferenceError):
    """The model's architecture (or an option asked for it) is not supported by the engine."""


class QualityCheckError(InferenceError):
    """A compressed variant could not be calibrated or failed its load-time quality check: it refuses
    to start rather than serve below its quality floor."""


class KVCacheTooSmallError(InferenceError):
    """The KV pool asked for does not fit in memory, or cannot hold even one full-length request."""


class InvalidSamplingParamsError(InferenceError, ValueError):
    """A sampling parameter is out of range; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.detail = message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.param, self.detail))


class InvalidRequestError(InferenceError, ValueError):
    """A request the engine cannot serve as asked; `param` names the offending field."""

    def __init__(self, message: str, param: str = "prompt") -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.param))


class RequestTooLongError(InvalidRequestError):
    """A request can never fit: its prompt plus max_tokens exceed the context or the KV pool."""


class RequestFailedError(InferenceError):
    """Processing this one request raised inside the engine; it was ended, the engine serves on."""


class EngineDeadError(InferenceError):
    """The engine loop or one of its tensor-parallel ranks has died; the engine must be replaced."""
