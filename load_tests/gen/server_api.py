"""The server calls around a run: wait until it answers, pick the model, read controller decisions.

`wait_ready` polls GET /v1/models until it answers (or the timeout) and returns the model ids;
`fetch_decisions` reads GET /controller/decisions (sloserve's controller, or the mock's switch
schedule) and returns them relative to the run start, or None when there is no controller (404)
or the answer is not in the expected shape.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from load_tests.config import LoadTestError
from load_tests.results.records import ControllerDecision

DECISIONS_PATH = "/controller/decisions"


async def wait_ready(client: httpx.AsyncClient, root_url: str, timeout_s: float) -> list[str]:
    """Model ids from /v1/models, retrying until `timeout_s`; raises LoadTestError when nobody answers."""
    deadline = time.monotonic() + timeout_s
    last_problem = "no attempt"
    while True:
        try:
            resp = await client.get(f"{root_url}/v1/models", timeout=5.0)
            if resp.status_code == 200:
                data = resp.json().get("data") or []
                return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
            last_problem = f"HTTP {resp.status_code}"
        except (httpx.HTTPError, ValueError) as e:
            last_problem = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise LoadTestError(
                f"no OpenAI-compatible server answering at {root_url}/v1/models after {timeout_s:.0f} s "
                f"({last_problem}); is it running? (sloserve up, or python -m load_tests mock-server)"
            )
        await asyncio.sleep(0.25)


def _parse_decision(raw: Any, start_unix: float) -> ControllerDecision:
    if not isinstance(raw, dict):
        raise ValueError("a decision is not an object")
    return ControllerDecision(
        time_s=float(raw["time"]) - start_unix,
        weights={str(k): float(v) for k, v in (raw.get("weights") or {}).items()},
        replicas={str(k): int(v) for k, v in (raw.get("replicas") or {}).items()},
        reason=str(raw.get("reason", "")),
    )


async def fetch_decisions(
    client: httpx.AsyncClient, root_url: str, start_unix: float
) -> tuple[list[ControllerDecision] | None, str]:
    """(decisions sorted by time, a note for the log). None when the endpoint is absent or malformed."""
    try:
        resp = await client.get(f"{root_url}{DECISIONS_PATH}", timeout=10.0)
    except httpx.HTTPError as e:
        return None, f"controller decisions unavailable ({type(e).__name__})"
    if resp.status_code != 200:
        return None, f"no controller decisions (HTTP {resp.status_code}); switches inferred from answers"
    try:
        raw = resp.json()["decisions"]
        decisions = sorted((_parse_decision(d, start_unix) for d in raw), key=lambda d: d.time_s)
    except (ValueError, KeyError, TypeError) as e:
        return None, f"controller decisions not in the expected shape ({e}); switches inferred"
    return decisions, f"{len(decisions)} controller decisions read"
