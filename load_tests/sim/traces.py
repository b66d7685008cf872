"""Rate traces for the controller simulator, and the requests they make.

A `RateTrace` is piecewise constant: (start_s, rate) segments up to `duration_s`. Rates are in
requests/s (`rps`) or in `full_replica` units — multiples of what one replica of the best variant
sustains under the SLO — which keeps the built-in traces (`step3x`, `burst`, `diurnal`,
`steady-noisy`, files in `load_tests/traces/` that the load generator reads too) meaningful on
any manifest. Files: YAML `{unit, duration_s, segments: [{t_s,
rate}]}` or CSV with a `t_s` column and an `rps` or `full_replica` column (last row's `t_s` ends
it). `make_requests` draws Poisson arrivals with lengths and SLO classes from a seeded RNG, so
every policy replays the same requests.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml

RateUnit = Literal["rps", "full_replica"]
MEDIAN_PROMPT_TOKENS, MEDIAN_OUTPUT_TOKENS = 200.0, 110.0


class TraceError(ValueError):
    """A trace name is unknown or a trace file is malformed (the message says where)."""


@dataclass(frozen=True, slots=True)
class RateTrace:
    name: str
    unit: RateUnit
    segments: tuple[tuple[float, float], ...]  # (start_s, rate), ascending, first at 0
    duration_s: float

    def rate_at(self, t_s: float) -> float:
        rate = self.segments[0][1]
        for start_s, r in self.segments:
            if start_s > t_s:
                break
            rate = r
        return rate

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
        ends = [*(t for t, _ in self.segments[1:]), self.duration_s]
        return [
            (start_s, ends[i])
            for i, (start_s, rate) in enumerate(self.segments)
            if i > 0 and self.segments[i - 1][1] > 0 and rate >= min_ratio * self.segments[i - 1][1]
        ]


TRACES_DIR = Path(__file__).parents[1] / "traces"
BUILTIN_TRACES = ("step3x", "burst", "diurnal", "steady", "steady-noisy")  # load_tests/traces/<name>.yaml


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


def load_trace(spec: str) -> RateTrace:
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
        segments = [(float(s["t_s"]), float(s["rate"])) for s in raw["segments"]]
        return _checked(raw.get("name", path.stem), raw.get("unit", "rps"), segments, float(raw["duration_s"]))
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        if isinstance(e, TraceError):
            raise
        raise TraceError(f"trace file {path} is malformed: {e!r}") from e


@dataclass(frozen=True, slots=True)
class SimRequest:
    id: int
    arrival_s: float
    slo_class: str
    prompt_tokens: int
    output_tokens: int


def make_requests(trace: RateTrace, class_mix: dict[str, float], seed: int) -> list[SimRequest]:
    """Poisson arrivals of an `rps` trace; log-normal lengths; classes drawn from `class_mix`."""
    assert trace.unit == "rps", "convert the trace with in_rps() first"
    rng = random.Random(seed)
    classes, shares = list(class_mix), list(class_mix.values())
    bounds = [*(t for t, _ in trace.segments[1:]), trace.duration_s]
    out: list[SimRequest] = []
    for (start_s, rate), end_s in zip(trace.segments, bounds, strict=True):
        t = start_s
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end_s:
                break
            prompt = min(1500, max(8, round(rng.lognormvariate(math.log(MEDIAN_PROMPT_TOKENS), 0.6))))
            output = min(400, max(4, round(rng.lognormvariate(math.log(MEDIAN_OUTPUT_TOKENS), 0.5))))
            cls = rng.choices(classes, shares)[0]
            out.append(SimRequest(len(out), t, cls, prompt, output))
    return out
