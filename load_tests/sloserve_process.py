"""`sloserve up` in a child process, as a user runs it: for the served benchmarks and the end-to-end tests.

`start` launches `python -m cluster.cli up --config CONFIG --port PORT` in its own process group
(so a Ctrl-C reaches all of it), its output in a log file; `wait_for_output` waits for a line it
prints; `stop` sends SIGINT as Ctrl-C would and kills it if it has not stopped within
`STOP_TIMEOUT_S`. `sloserve_up(...)` is the running server between the two: ready once it prints
"sloserve is serving", stopped on exit. Failures raise `SloserveUpError`, whose message names the
log and whose note holds the log's tail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVING_LINE = "sloserve is serving"
STOP_TIMEOUT_S = 90.0
LOG_TAIL_CHARS = 3000


class SloserveUpError(RuntimeError):
    """`sloserve up` exited before it was ready, was not ready in time, or did not stop."""


def _error(message: str, log: Path) -> SloserveUpError:
    error = SloserveUpError(f"{message} (log: {log})")
    error.add_note(log.read_text()[-LOG_TAIL_CHARS:])
    return error


def start(config: str | Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`sloserve up --config config --port port` started in its own process group, its output in `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "up", "--config", str(config), "--port", str(port)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def wait_for_output(proc: subprocess.Popen[bytes], log: Path, text: str, timeout_s: float,
                    poll_s: float = 1.0) -> None:
    """Return once `text` is in the log; raise if the process exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        if proc.poll() is not None:
            raise _error(f"sloserve up exited {proc.returncode} before printing {text!r}", log)
        if time.monotonic() > deadline:
            raise _error(f"sloserve up did not print {text!r} within {timeout_s:.0f} s", log)
        time.sleep(poll_s)


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGINT to its process group, as Ctrl-C would; if it has not stopped in STOP_TIMEOUT_S, SIGKILL and raise."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise _error(f"sloserve up did not stop within {STOP_TIMEOUT_S:.0f} s of SIGINT: killed", log) from None


@contextmanager
def sloserve_up(config: str | Path, port: int, log: Path,
                ready_timeout_s: float = 240.0) -> Iterator[subprocess.Popen[bytes]]:
    """The running `sloserve up`, serving once entered; on exit it has stopped, and its `returncode` is set."""
    proc = start(config, port, log)
    try:
        wait_for_output(proc, log, SERVING_LINE, ready_timeout_s)
        yield proc
    finally:
        stop(proc, log)
