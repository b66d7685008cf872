"""Per-hop timestamps of requests on the serving path, to see where time to first token goes.

Off unless the environment variable SLOSERVE_HOP_TRACE names a file (read here, once per
process); then every process on the path (the bench's client, the router, the replicas) appends
one JSON line per stamp: `{"id": request id, "hop": name, "t": time.monotonic(), "pid", "thread"}`, plus links
(the router names the engine request id an HTTP request became). `time.monotonic` is one
system-wide clock on Linux, so stamps of processes on one host compare. Off, a stamp costs one
attribute check. `hop_breakdown` turns a trace file into per-hop durations (docs/serving-path.md).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import IO

TRACE_ENV = "SLOSERVE_HOP_TRACE"

# The hops of one streamed request, in path order: (key kind, hop). "http" hops are keyed by the
# HTTP request id (x-request-id), "engine" hops by the GenerateRequest's request_id.
HTTP_HOPS = ("client.send", "router.asgi", "router.route")
ENGINE_HOPS = ("router.call", "replica.received", "replica.tokenized", "engine.arrival", "engine.scheduled",
               "engine.first_token", "replica.first_output", "router.first_chunk")
HTTP_TAIL_HOPS = ("router.first_sse", "client.first_token")


class HopTrace:
    """Appends stamps to one file, shared by every process that has the variable set."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.enabled = bool(path)
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environ(cls) -> HopTrace:
        return cls(os.environ.get(TRACE_ENV) or None)

    def stamp(self, request_id: str, hop: str, t: float | None = None, **links: str) -> None:
        if not self.enabled:
            return
        record = {"id": request_id, "hop": hop, "t": time.monotonic() if t is None else t,
                  "pid": os.getpid(), "thread": threading.current_thread().name, **links}
        line = json.dumps(record) + "\n"
        with self._lock:
            if self._file is None:
                assert self.path is not None
                self._file = open(self.path, "a", buffering=1)  # noqa: SIM115  # line-buffered, kept open
            self._file.write(line)  # one short O_APPEND write per line: lines of processes do not interleave


TRACE = HopTrace.from_environ()


def read_trace(path: str | Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _chains(records: Iterable[dict[str, object]]) -> dict[str, dict[str, float]]:
    """{the request's first id (the HTTP id for HTTP requests): {hop: t}}, the HTTP hops joined to
    the engine hops by the router's link; the first stamp of a hop counts (the first chunk)."""
    stamps: dict[str, dict[str, float]] = defaultdict(dict)
    engine_of: dict[str, str] = {}
    for r in records:
        request_id, hop, t = str(r["id"]), str(r["hop"]), float(r["t"])  # type: ignore[arg-type]
        stamps[request_id].setdefault(hop, t)
        if "engine_id" in r:
            engine_of[request_id] = str(r["engine_id"])
    linked = set(engine_of.values())
    chains = {}
    for request_id, hops in stamps.items():
        if request_id in engine_of:
            chains[request_id] = {**hops, **stamps.get(engine_of[request_id], {})}
        elif "router.call" in hops and request_id not in linked:  # a handle request
            chains[request_id] = dict(hops)
    return chains


def hop_breakdown(records: Iterable[dict[str, object]], http: bool) -> dict[str, float]:
    """Median milliseconds between consecutive hops, in path order, over the HTTP requests'
    chains (`http`) or the handle requests' ones."""
    order = HTTP_HOPS + ENGINE_HOPS + HTTP_TAIL_HOPS
    gaps: dict[str, list[float]] = defaultdict(list)
    for chain in _chains(records).values():
        if ("router.asgi" in chain) != http:
            continue
        present = [h for h in order if h in chain]
        for a, b in itertools.pairwise(present):
            gaps[f"{a} -> {b}"].append(1e3 * (chain[b] - chain[a]))
    return {name: round(sorted(v)[len(v) // 2], 3) for name, v in gaps.items()}


def engine_ttft_s(records: Iterable[dict[str, object]]) -> dict[str, float]:
    """Per traced request (by its first id): the engine's own time from arrival to first token."""
    return {
        request_id: chain["engine.first_token"] - chain["engine.arrival"]
        for request_id, chain in _chains(records).items()
        if "engine.first_token" in chain and "engine.arrival" in chain
    }
