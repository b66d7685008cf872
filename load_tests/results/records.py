"""What one run produced: a `ClientRecord` per request and the `RunInfo` around them.

Records are what the client measured, in ms and in seconds since the run start; everything else
(summary, time series, switch events, plots) is computed from them, so `report DIR` can re-render
from requests.jsonl alone. `RunInfo` carries the run's wall-clock start, its config and the
controller decisions fetched at the end; it is stored in summary.json under "run".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

RequestStatus = Literal["ok", "error", "cancelled"]
UNKNOWN_VARIANT = "unknown"


@dataclass(slots=True)
class ClientRecord:
    """One request as the client saw it (one line of requests.jsonl). Latencies in ms; times in s since
    the run start. The server's own record of a finished request is `deployments.slo.observation.RequestRecord`.

    `ready_s` is when it could first go out: its planned time, or when a concurrency slot freed up
    if it had to wait for one (None: the planned time). `itl_ms` holds the gaps between consecutive content chunks after the first one (so never the
    TTFT); `chunk_tokens` the tokens in each content chunk when the server said so per chunk.
    """

    request_id: int
    planned_send_s: float
    send_s: float
    ready_s: float | None = None
    slot_wait_ms: float = 0.0
    status: RequestStatus = "ok"
    http_status: int | None = None
    error: str | None = None
    variant: str = UNKNOWN_VARIANT
    model: str | None = None
    ttft_ms: float | None = None
    e2el_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    chunk_tokens: list[int] | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    token_source: Literal["usage", "chunks"] = "chunks"
    retry_after_s: float | None = None
    session_id: str | None = None

    @property
    def is_ok(self) -> bool:
        return self.status == "ok"

    @property
    def end_s(self) -> float:
        """When the response ended (or the request was given up), s since the run start."""
        return self.send_s + (self.e2el_ms or 0.0) / 1000.0

    @property
    def send_lag_ms(self) -> float:
        """How late the client itself sent this request (waits for a concurrency slot excluded)."""
        ready = self.planned_send_s if self.ready_s is None else self.ready_s
        return max(0.0, (self.send_s - ready) * 1000.0)

    def itl_per_token_ms(self) -> list[float]:
        """Per-token inter-token latencies: each chunk gap split evenly over the chunk's tokens.

        Without per-chunk token counts, every chunk is assumed to hold the same number of tokens
        (exact when the server sends one token, or a fixed number of tokens, per chunk).
        """
        if not self.itl_ms:
            return []
        if self.chunk_tokens is not None and len(self.chunk_tokens) == len(self.itl_ms) + 1:
            counts = [max(1, n) for n in self.chunk_tokens[1:]]
        else:
            counts = [max(1, round(self.output_tokens / (len(self.itl_ms) + 1)))] * len(self.itl_ms)
        return [gap / n for gap, n in zip(self.itl_ms, counts, strict=True) for _ in range(n)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ClientRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True, slots=True)
class ControllerDecision:
    """One entry of GET /controller/decisions; `time_s` is relative to the run start."""

    time_s: float
    weights: dict[str, float]
    replicas: dict[str, int]
    reason: str


@dataclass(slots=True)
class RunInfo:
    """The run around the records: wall-clock start, the config, and the controller's decisions."""

    start_unix: float
    duration_s: float
    config: dict[str, Any]
    model: str | None
    decisions: list[ControllerDecision] | None = None
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunInfo:
        decisions = raw.get("decisions")
        return cls(
            start_unix=float(raw["start_unix"]),
            duration_s=float(raw["duration_s"]),
            config=dict(raw.get("config") or {}),
            model=raw.get("model"),
            decisions=None if decisions is None else [ControllerDecision(**d) for d in decisions],
            interrupted=bool(raw.get("interrupted", False)),
        )


def write_records(path: Path, records: list[ClientRecord]) -> None:
    with path.open("w") as f:
        for record in records:
            f.write(record.to_json() + "\n")


def read_records(path: Path) -> list[ClientRecord]:
    """Read requests.jsonl; errors name the file and line."""
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(ClientRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a request record ({e})") from e
    return records
