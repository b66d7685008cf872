"""The typed configuration of one load-test run: `RunConfig`, `GoodputTargets`, and the target check.

The CLI (options.py) turns flags into a `RunConfig`; everything downstream reads only this. Models
forbid unknown keys and bound every number; cross-field rules (a run must be bounded, targets must
be loopback unless allowed) fail with messages that name the values. Environment variables
(`OPENAI_API_KEY`) are read here and nowhere else.
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from load_tests.gen.arrivals import TraceSpec

EndpointKind = Literal["chat", "completions"]
ENDPOINT_PATHS: dict[EndpointKind, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
SLO_METRICS = ("ttft", "tpot", "e2el")


class LoadTestError(ValueError):
    """A user-facing problem with flags, files or the target; the CLI prints it and exits 2."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class GoodputTargets(_Strict):
    """Per-request latency targets (`--goodput ttft:MS tpot:MS e2el:MS`, vLLM's goodput); unset ones are
    not checked. Every request is held to them, unlike the server's per-class p95 targets (`SLOTarget`)."""

    ttft_ms: float | None = Field(default=None, gt=0.0, le=86_400_000.0, description="Time to first token.")
    tpot_ms: float | None = Field(default=None, gt=0.0, le=86_400_000.0, description="Time per output token.")
    e2el_ms: float | None = Field(default=None, gt=0.0, le=86_400_000.0, description="End-to-end latency.")

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2el_ms))

    def targets(self) -> dict[str, float]:
        """The set targets by metric name (`ttft`, `tpot`, `e2el`), in ms."""
        raw = {"ttft": self.ttft_ms, "tpot": self.tpot_ms, "e2el": self.e2el_ms}
        return {k: v for k, v in raw.items() if v is not None}


class RunConfig(_Strict):
    """Everything one `run` needs; built from flags by options.py, echoed into summary.json."""

    base_url: str = Field(default="http://127.0.0.1:8000", description="Server root, without /v1.")
    endpoint: EndpointKind = Field(default="chat", description="chat -> /v1/chat/completions.")
    model: str | None = Field(default=None, description="Model name; default: the first of /v1/models.")
    request_rate: float = Field(default=math.inf, gt=0.0, description="Poisson rate, requests/s; inf = all at once.")
    burstiness: float = Field(default=1.0, gt=0.0, le=1000.0, description="Gamma shape; 1 = Poisson.")
    max_concurrency: int | None = Field(default=None, ge=1, le=100_000, description="Requests in flight at most.")
    num_prompts: int | None = Field(default=None, ge=1, le=10_000_000, description="Requests to send at most.")
    duration_s: float | None = Field(default=None, gt=0.0, le=7 * 86400.0, description="Send window, seconds.")
    trace: TraceSpec | None = Field(default=None, description="Rate over time (overrides request_rate).")
    input_len: int = Field(default=32, ge=1, le=1_000_000, description="Synthetic prompt length, words.")
    output_len: int = Field(default=64, ge=1, le=1_000_000, description="max_tokens of each request.")
    prompt_file: str | None = Field(default=None, description="JSONL prompt file, or 'builtin'.")
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)
    ignore_eos: bool = Field(default=False, description="Send vLLM's ignore_eos (not all servers accept it).")
    slo: GoodputTargets = Field(default_factory=GoodputTargets)
    metric_percentiles: list[float] = Field(default_factory=lambda: [50.0, 90.0, 99.0], min_length=1)
    result_dir: Path | None = Field(default=None, description="Where files go; none = print only.")
    plots: bool = Field(default=True, description="Write the PNG plots into result_dir.")
    label: str | None = Field(default=None, max_length=200)
    metadata: dict[str, str] = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    api_key: str | None = Field(default=None, description="Bearer token; default $OPENAI_API_KEY.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    slo_class: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    num_sessions: int = Field(default=0, ge=0, le=1_000_000, description="x-session-id values to rotate.")
    allow_remote: bool = Field(default=False, description="Allow a non-loopback target.")
    fail_on_slo: bool = Field(default=False, description="Exit 1 when SLO attainment is below slo_target.")
    slo_target: float = Field(default=1.0, gt=0.0, le=1.0, description="Least attainment that passes.")
    request_timeout_s: float = Field(default=300.0, gt=0.0, le=86400.0)
    drain_timeout_s: float | None = Field(
        default=None, ge=0.0, le=86400.0,
        description="Wait for stragglers after sending stops; default 30 s, or the request timeout "
        "when only --num-prompts bounds the run.",
    )
    ready_check_timeout_s: float = Field(default=30.0, ge=0.0, le=86400.0)
    window_s: float | None = Field(default=None, gt=0.0, le=86400.0, description="Time-series window.")
    progress_interval_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    quiet: bool = Field(default=False, description="No progress lines.")

    @model_validator(mode="after")
    def _checks(self) -> RunConfig:
        if self.num_prompts is None and self.duration_s is None and self.trace is None:
            raise ValueError("a run must be bounded: give --num-prompts and/or --duration (or --trace)")
        open_ended = self.num_prompts is None and self.trace is None and math.isinf(self.request_rate)
        if open_ended and self.max_concurrency is None:
            raise ValueError(
                "--duration with --request-rate inf needs --max-concurrency or --num-prompts "
                "(otherwise it would send without limit)"
            )
        if self.fail_on_slo and not self.slo.is_set:
            raise ValueError("--fail-on-slo needs --goodput targets, e.g. --goodput ttft:500 tpot:50")
        if any(not 0.0 < p <= 100.0 for p in self.metric_percentiles):
            raise ValueError(f"--metric-percentiles must be in (0, 100], got {self.metric_percentiles}")
        check_target(self.base_url, self.allow_remote)
        return self

    @property
    def root_url(self) -> str:
        return normalize_base_url(self.base_url)

    @property
    def api_key_or_env(self) -> str | None:
        return self.api_key or os.environ.get("OPENAI_API_KEY")

    @property
    def drain_s(self) -> float:
        if self.drain_timeout_s is not None:
            return self.drain_timeout_s
        return self.request_timeout_s if self.send_window_s is None else 30.0

    @property
    def send_window_s(self) -> float | None:
        """Seconds during which requests may be sent: --duration, else the trace's length."""
        if self.duration_s is not None:
            return self.duration_s
        return self.trace.total_duration_s if self.trace is not None else None

    def public_dict(self) -> dict[str, object]:
        """The config as written to summary.json: no API key or auth header value, valid JSON."""
        data = self.model_dump(mode="json", exclude={"api_key"})
        if math.isinf(self.request_rate):
            data["request_rate"] = "inf"  # as vLLM writes it: JSON has no infinity
        data["headers"] = {
            k: ("<redacted>" if k.lower() in ("authorization", "api-key", "x-api-key") else v)
            for k, v in self.headers.items()
        }
        return data


def normalize_base_url(url: str) -> str:
    """`http://h:p/v1/` -> `http://h:p`: endpoints and /controller/decisions hang off the root."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_target(url: str, allow_remote: bool) -> None:
    """Raise unless the URL is http(s) on a loopback address, or remote targets are allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadTestError(f"--base-url must look like http://127.0.0.1:8000, got {url!r}")
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise LoadTestError(
            f"refusing to load-test {parts.hostname!r}: only loopback addresses by default "
            "(pass --allow-remote to target another host)"
        )
