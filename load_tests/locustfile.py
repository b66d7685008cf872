"""A Locust user for any OpenAI-compatible server (sloserve included), for people who prefer Locust.

    pip install 'sloserve[locust]'   # or: pip install locust
    locust -f load_tests/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 2 --run-time 60s

Each user streams chat (or completion) requests and reports, besides the request itself (whose
Locust time ends at the response headers), E2E, TTFT
(first non-empty content), ITL (gap between later content chunks, never the TTFT) and TPOT
((E2E - TTFT) / (tokens - 1), tokens from the streamed usage) as their own entries, named by the
variant that answered. Settings come from environment variables, read only here: LOADTEST_MODEL,
LOADTEST_ENDPOINT (chat|completions), LOADTEST_OUTPUT_LEN, LOADTEST_SLO_CLASS, LOADTEST_PROMPTS
(a JSONL prompt file; default the shipped set), LOADTEST_ALLOW_REMOTE=1. Like `python -m
load_tests run`, it refuses non-loopback hosts unless allowed, and runs without --run-time.
This file needs locust; nothing else in load_tests imports it.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from locust import HttpUser, between, events, task
from locust.exception import StopUser

from deployments.http.headers import VARIANT_HEADER

MODEL = os.environ.get("LOADTEST_MODEL", "")
ENDPOINT = os.environ.get("LOADTEST_ENDPOINT", "chat")
OUTPUT_LEN = int(os.environ.get("LOADTEST_OUTPUT_LEN", "64"))
SLO_CLASS = os.environ.get("LOADTEST_SLO_CLASS", "")
PROMPTS_FILE = Path(os.environ.get("LOADTEST_PROMPTS", Path(__file__).parent / "data" / "prompts.jsonl"))
ALLOW_REMOTE = os.environ.get("LOADTEST_ALLOW_REMOTE", "") == "1"

_PROMPTS = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines() if line.strip()]
_next_prompt = itertools.cycle(_PROMPTS)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _refusal(host: str | None, run_time: Any) -> str | None:
    hostname = urlsplit(host or "").hostname or ""
    if not ALLOW_REMOTE and not _is_loopback(hostname):
        return f"refusing to load-test {hostname!r}: loopback only (set LOADTEST_ALLOW_REMOTE=1)"
    if not run_time:
        return "every run must be bounded: pass --run-time (e.g. --run-time 60s)"
    return None


@events.init.add_listener
def _refuse_unsafe_runs(environment: Any, **_: Any) -> None:
    """Checked before any user is spawned, so nothing is sent when refused."""
    problem = _refusal(environment.host, getattr(environment.parsed_options, "run_time", None))
    if problem is not None:
        print(f"error: {problem}", flush=True)
        sys.exit(2)


def _content(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if "text" in choices[0]:
        return choices[0].get("text") or ""
    return (choices[0].get("delta") or {}).get("content") or ""


class OpenAIStreamUser(HttpUser):
    """Streams one request after another, with a short think time."""

    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        if not ALLOW_REMOTE and not _is_loopback(urlsplit(self.host or "").hostname or ""):
            raise StopUser()  # the host was changed after start (web UI): still loopback only

    def _fire(self, kind: str, name: str, ms: float) -> None:
        self.environment.events.request.fire(request_type=kind, name=name, response_time=ms,
                                             response_length=0, exception=None, context={})

    @task
    def stream_one(self) -> None:
        prompt = next(_next_prompt)
        body: dict[str, Any] = {"model": MODEL, "max_tokens": prompt.get("output_len", OUTPUT_LEN),
                                "stream": True, "stream_options": {"include_usage": True}}
        if ENDPOINT == "chat":
            body["messages"] = prompt.get("messages") or [{"role": "user", "content": prompt["prompt"]}]
        else:
            body["prompt"] = prompt.get("prompt") or prompt["messages"][-1]["content"]
        path = "/v1/chat/completions" if ENDPOINT == "chat" else "/v1/completions"
        headers = {"x-sloserve-slo-class": SLO_CLASS} if SLO_CLASS else {}
        start = time.perf_counter()
        first = last = None
        itls: list[float] = []
        tokens, variant = 0, "?"
        with self.client.post(path, json=body, headers=headers, stream=True, catch_response=True,
                              name=f"POST {path}") as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            variant = resp.headers.get(VARIANT_HEADER) or "?"
            for raw in resp.iter_lines():
                line = raw.decode() if isinstance(raw, bytes) else raw
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                now, chunk = time.perf_counter(), json.loads(line[5:])
                if chunk.get("error"):
                    resp.failure(f"stream error: {chunk['error']}")
                    return
                if variant == "?" and ":" in str(chunk.get("model", "")):
                    variant = str(chunk["model"]).rsplit(":", 1)[1]
                tokens = int((chunk.get("usage") or {}).get("completion_tokens") or tokens)
                if _content(chunk):
                    if first is None:
                        first = now
                    else:
                        itls.append((now - (last or now)) * 1000.0)
                    last = now
            if first is None:
                resp.failure("no content in the response")
                return
        end = time.perf_counter()
        self._fire("E2E", variant, (end - start) * 1000.0)
        self._fire("TTFT", variant, (first - start) * 1000.0)
        for gap in itls:
            self._fire("ITL", variant, gap)
        tokens = tokens or len(itls) + 1
        if tokens > 1:
            self._fire("TPOT", variant, (end - first) * 1000.0 / (tokens - 1))
