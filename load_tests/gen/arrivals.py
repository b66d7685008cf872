"""When requests are planned to be sent: Poisson/gamma arrivals at a fixed rate or along a trace.

A trace (`--trace FILE.yaml`) is a list of phases, each a constant rate, a linear ramp, and/or an
instant burst, which gives step and burst shapes; rate-trace files (`segments`, the simulator's
format, read by `load_tests.rate_trace`) are turned into phases. Arrivals are drawn as a unit-rate
renewal process (exponential gaps for Poisson, gamma gaps of shape `burstiness` otherwise) and mapped
through the inverse of the cumulative rate, so a Poisson trace is an exact non-homogeneous Poisson process.
`planned_offsets` yields seconds since the run start, lazily and in order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from load_tests.rate_trace import RateTrace, rate_trace_of

ArrivalKind = Literal["poisson", "gamma", "constant"]


class TracePhase(BaseModel):
    """One phase: `rate` req/s (ramping linearly to `rate_end` if given), plus `burst` requests at its start."""

    model_config = ConfigDict(extra="forbid")
    duration_s: float = Field(gt=0.0, le=7 * 86400.0)
    rate: float = Field(default=0.0, ge=0.0, le=1_000_000.0)
    rate_end: float | None = Field(default=None, ge=0.0, le=1_000_000.0)
    burst: int = Field(default=0, ge=0, le=1_000_000, description="Requests sent at once at phase start.")

    @property
    def end_rate(self) -> float:
        return self.rate if self.rate_end is None else self.rate_end


class TraceSpec(BaseModel):
    """A rate-over-time shape; `repeat` plays the phases that many times."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="trace", max_length=200)
    arrival: ArrivalKind = "poisson"
    burstiness: float = Field(default=1.0, gt=0.0, le=1000.0, description="Gamma shape when arrival=gamma.")
    phases: list[TracePhase] = Field(min_length=1, max_length=10_000)
    repeat: int = Field(default=1, ge=1, le=10_000)

    @model_validator(mode="after")
    def _some_load(self) -> TraceSpec:
        if all(p.rate == 0.0 and p.end_rate == 0.0 and p.burst == 0 for p in self.phases):
            raise ValueError(f"trace {self.name!r} sends nothing: every phase has rate 0 and no burst")
        return self

    @property
    def all_phases(self) -> list[TracePhase]:
        return self.phases * self.repeat

    @property
    def total_duration_s(self) -> float:
        return sum(p.duration_s for p in self.all_phases)

    def scaled(self, factor: float) -> TraceSpec:
        """The same shape with every rate and burst multiplied by `factor`."""
        phases = [p.model_copy(update={"rate": p.rate * factor,
                                       "rate_end": None if p.rate_end is None else p.rate_end * factor,
                                       "burst": round(p.burst * factor)}) for p in self.phases]
        return self.model_copy(update={"phases": phases})


def _from_segments(trace: RateTrace, scale: float | None) -> dict[str, Any]:
    """A rate-trace file (`segments: [{t_s, rate}]`, `duration_s`, `unit`) as phases."""
    if trace.unit == "full_replica" and scale is None:
        raise ValueError(f"trace {trace.name} is in units of one full replica's capacity: pass --trace-scale "
                         "with the req/s that 1.0 means on this server")
    phases = [{"duration_s": end_s - start_s, "rate": rate} for start_s, end_s, rate in trace.spans()]
    return {"name": trace.name, "phases": phases}


def load_trace(path: str | Path, scale: float | None = None) -> TraceSpec:
    """Read a trace YAML (phases, or the simulator's segments); `scale` multiplies its rates.
    Errors name the file and the bad field."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"cannot read trace {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"trace {path} is not valid YAML: {e}") from e
    if isinstance(raw, dict) and "segments" in raw:
        raw = _from_segments(rate_trace_of(raw, Path(path)), scale)
    try:
        trace = TraceSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in e.errors())
        raise ValueError(f"trace {path}: {problems}") from e
    return trace if scale is None else trace.scaled(scale)


def _unit_gaps(kind: ArrivalKind, burstiness: float, rng: np.random.Generator) -> Iterator[float]:
    """Gaps of a renewal process with mean 1."""
    while True:
        if kind == "constant":
            yield 1.0
        elif kind == "gamma" and burstiness != 1.0:
            yield float(rng.gamma(shape=burstiness, scale=1.0 / burstiness))
        else:
            yield float(rng.exponential(1.0))


def _phase_time(phase: TracePhase, work: float) -> float:
    """Seconds into `phase` at which its cumulative rate reaches `work` (which is <= the phase's total)."""
    r0, r1, d = phase.rate, phase.end_rate, phase.duration_s
    if r0 == r1:
        return work / r0
    a = (r1 - r0) / (2.0 * d)
    return (-r0 + math.sqrt(max(r0 * r0 + 4.0 * a * work, 0.0))) / (2.0 * a)


def _trace_offsets(trace: TraceSpec, rng: np.random.Generator) -> Iterator[float]:
    gaps = _unit_gaps(trace.arrival, trace.burstiness, rng)
    pending = next(gaps)  # operational time left until the next arrival
    start = 0.0
    for phase in trace.all_phases:
        yield from (start for _ in range(phase.burst))
        total = (phase.rate + phase.end_rate) / 2.0 * phase.duration_s
        used = 0.0
        while total > 0.0 and used + pending <= total:
            used += pending
            yield start + min(_phase_time(phase, used), phase.duration_s)
            pending = next(gaps)
        pending -= total - used
        start += phase.duration_s


def planned_offsets(
    request_rate: float,
    burstiness: float,
    trace: TraceSpec | None,
    seed: int,
) -> Iterator[float]:
    """Planned send times (s since start), non-decreasing; infinite unless a trace ends it."""
    rng = np.random.default_rng(seed)
    if trace is not None:
        yield from _trace_offsets(trace, rng)
        return
    if math.isinf(request_rate):
        while True:
            yield 0.0
    kind: ArrivalKind = "poisson" if burstiness == 1.0 else "gamma"
    t = 0.0
    for gap in _unit_gaps(kind, burstiness, rng):
        t += gap / request_rate
        yield t
