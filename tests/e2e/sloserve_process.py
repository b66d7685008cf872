"""`sloserve up` as a user runs it, for the end-to-end tests: in its own process group, ready once it
prints "sloserve is serving", stopped with SIGINT as Ctrl-C would, killed if it has not stopped
within a minute (and then the test fails)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def sloserve_up(config: str | Path, port: int, log: Path,
                ready_timeout_s: float = 240) -> Iterator[subprocess.Popen[bytes]]:
    """The running `sloserve up --config config --port port`, its output in `log`; on exit it has
    stopped, and its `returncode` is set."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "up", "--config", str(config), "--port", str(port)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + ready_timeout_s
        while "sloserve is serving" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            raise
