"""Fixtures for the load-test tool's tests: the mock server as a subprocess on 127.0.0.1, and a
helper that runs `python -m load_tests ...` in this process and returns its exit code.

The mock picks a free port itself (`--port 0`) and prints its URL; it is stopped (SIGTERM, then
SIGKILL) when the test or module is done.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from load_tests.cli import main

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MockServer:
    url: str
    port: int


@contextmanager
def mock_server(*flags: str) -> Iterator[MockServer]:
    """Start `python -m load_tests mock-server --port 0 FLAGS...`; yield once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "load_tests", "mock-server", "--port", "0", *flags],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "mock-server listening on http://127.0.0.1:PORT"
        if "listening on" not in line:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"mock server did not start: {line!r} {err[-2000:]}")
        url = line.rsplit(" ", 1)[1].strip()
        yield MockServer(url=url, port=int(url.rsplit(":", 1)[1]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def start_mock() -> Iterator[Callable[..., MockServer]]:
    """Start mock servers inside a test; all are stopped at its end."""
    with ExitStack() as stack:
        yield lambda *flags: stack.enter_context(mock_server(*flags))


def run_tool(*args: str) -> int:
    """`python -m load_tests ARGS` in this process (quiet, short ready check); the exit code."""
    extra = ["--quiet"] if args and args[0] in ("run", "sweep") else []
    if extra and "--ready-check-timeout-sec" not in args:
        extra += ["--ready-check-timeout-sec", "10"]
    return main([*args, *extra])


def load_summary(result_dir: Path) -> dict[str, Any]:
    return json.loads((result_dir / "summary.json").read_text())


def load_records(result_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (result_dir / "requests.jsonl").read_text().splitlines() if line]
