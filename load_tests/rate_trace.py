"""Rate-trace files: piecewise-constant request rates over time, read once for every user.

A `RateTrace` is (start_s, rate) segments up to `duration_s`, in requests/s (`rps`) or in
`full_replica` units (multiples of what one replica of the best variant sustains under the SLO).
Files: YAML `{name, unit, duration_s, segments: [{t_s, rate}]}` (the built-in ones live in
`load_tests/traces/`) or CSV with a `t_s` column and an `rps` or `full_replica` column (the last
row's `t_s` ends it). The simulator replays them; the load generator turns them into phases.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

RateUnit = Literal["rps", "full_replica"]
TRACES_DIR = Path(__file__).parent / "traces"
BUILTIN_TRACES = ("step3x", "burst", "diurnal", "steady", "steady-noisy")  # load_tests/traces/<name>.yaml


class TraceError(ValueError):
    """A trace name is unknown or a trace file is malformed (the message says where)."""


@dataclass(frozen=True, slots=True)
class RateTrace:
    name: str
    unit: RateUnit
    segments: tuple[tuple[float, float], ...]  # (start_s, rate), ascending, first at 0
    duration_s: float

    def spans(self) -> list[tuple[float, float, float]]:
        """(start_s, end_s, rate) of each segment: it ends where the next starts, the last at duration_s."""
        ends = [*(t for t, _ in self.segments[1:]), self.duration_s]
        return [(start_s, end_s, rate) for (start_s, rate), end_s in zip(self.segments, ends, strict=True)]

    def in_rps(self, full_replica_rps: float) -> RateTrace:
        if self.unit == "rps":
            return self
        scaled = tuple((t, r * full_replica_rps) for t, r in self.segments)
        return replace(self, unit="rps", segments=scaled)

    @property
    def peak(self) -> float:
        return max(r for _, r in self.segments)

    def steps_and_after(self, min_ratio: float = 1.5) -> list[tuple[float, float, float]]:
        """(start_s, end_s, back_end_s) of each step: the step, then until the next step or the end."""
        steps = self.steps(min_ratio)
        return [(s, e, steps[i + 1][0] if i + 1 < len(steps) else self.duration_s) for i, (s, e) in enumerate(steps)]

    def steps(self, min_ratio: float = 1.5) -> list[tuple[float, float]]:
        """(start_s, end_s) of segments whose rate rose by at least `min_ratio` over the one before."""
        spans = self.spans()
        return [
            (start_s, end_s)
            for i, (start_s, end_s, rate) in enumerate(spans)
            if i > 0 and spans[i - 1][2] > 0 and rate >= min_ratio * spans[i - 1][2]
        ]


def _checked(name: str, unit: str, segments: list[tuple[float, float]], duration_s: float) -> RateTrace:
    if unit not in ("rps", "full_replica"):
        raise TraceError(f"trace {name}: unit must be 'rps' or 'full_replica', got {unit!r}")
    if not segments or segments[0][0] != 0:
        raise TraceError(f"trace {name}: segments must start at t_s 0")
    if any(b[0] <= a[0] for a, b in itertools.pairwise(segments)):
        raise TraceError(f"trace {name}: t_s must increase")
    if any(r < 0 for _, r in segments) or duration_s <= segments[-1][0]:
        raise TraceError(f"trace {name}: rates must be >= 0 and duration_s past the last t_s")
    return RateTrace(name, unit, tuple(segments), float(duration_s))  # type: ignore[arg-type]


def rate_trace_of(raw: dict[str, Any], path: Path) -> RateTrace:
    """The segments YAML already read from `path` (a mapping with `segments`) as a checked trace."""
    try:
        segments = [(float(s["t_s"]), float(s["rate"])) for s in raw["segments"]]
        return _checked(raw.get("name", path.stem), raw.get("unit", "rps"), segments, float(raw["duration_s"]))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, TraceError):
            raise
        raise TraceError(f"trace file {path} is malformed: {e!r}") from e


def load_rate_trace(spec: str) -> RateTrace:
    """A built-in trace by name, or a YAML/CSV trace file."""
    path = TRACES_DIR / f"{spec}.yaml" if spec in BUILTIN_TRACES else Path(spec)
    if not path.is_file():
        raise TraceError(f"unknown trace {spec!r}: use one of {BUILTIN_TRACES} or a .yaml/.csv file")
    try:
        if path.suffix == ".csv":
            rows = list(csv.DictReader(path.read_text().splitlines()))
            unit = "full_replica" if rows and "full_replica" in rows[0] else "rps"
            points = [(float(r["t_s"]), float(r[unit])) for r in rows]
            return _checked(path.stem, unit, points[:-1], points[-1][0])
        raw = yaml.safe_load(path.read_text())
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        if isinstance(e, TraceError):
            raise
        raise TraceError(f"trace file {path} is malformed: {e!r}") from e
    return rate_trace_of(raw, path)
