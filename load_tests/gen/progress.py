"""Progress lines during a run, on stderr: what was sent, what came back, how fast, how late.

`RunProgress` is updated by the runner as requests start and finish; `report_every` prints one
line per interval until cancelled. Nothing here affects the measurements.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from load_tests.results.records import ClientRecord


@dataclass(slots=True)
class RunProgress:
    """Counters of one run, for humans."""

    total: int | None
    window_s: float | None
    start_perf: float = field(default_factory=time.perf_counter)
    sent: int = 0
    done: int = 0
    failed: int = 0
    recent_ttft_ms: list[float] = field(default_factory=list)

    def on_sent(self) -> None:
        self.sent += 1

    def on_done(self, record: ClientRecord) -> None:
        self.done += 1
        if not record.is_ok:
            self.failed += 1
        elif record.ttft_ms is not None:
            self.recent_ttft_ms.append(record.ttft_ms)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start_perf
        of_total = f"/{self.total}" if self.total is not None else ""
        of_window = f"/{self.window_s:.0f}s" if self.window_s is not None else "s"
        ttft = ""
        if self.recent_ttft_ms:
            ttft = f"  ttft p50 {statistics.median(self.recent_ttft_ms):.0f} ms"
            self.recent_ttft_ms.clear()
        return (
            f"[{elapsed:6.1f}{of_window}] sent {self.sent}{of_total}  done {self.done}  "
            f"failed {self.failed}  in flight {self.sent - self.done}{ttft}"
        )


async def report_every(progress: RunProgress, interval_s: float, out: TextIO = sys.stderr) -> None:
    """Print a progress line every `interval_s` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        print(progress.line(), file=out, flush=True)
