"""What the mock server serves: `VariantProfile`s and a `Schedule` of traffic weights over time.

`--variants full:ttft_ms=200,tpot_ms=20,error_rate=0.05` gives one profile per value.
`--schedule 0:full 5:int8 12:full=0.3,int8=0.7` gives weights from each time on (seconds since
the anchor: the first request, or the server start); without one, traffic is split evenly.
The schedule's steps are what /controller/decisions reports once their time has come.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class VariantProfile(BaseModel):
    """How one mock variant answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    ttft_ms: float = Field(default=50.0, ge=0.0, le=600_000.0, description="Time to first content chunk.")
    tpot_ms: float = Field(default=10.0, ge=0.0, le=60_000.0, description="Time per later output token.")
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share answered HTTP 500 at once.")
    stream_error_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share failing mid-stream.")
    tokens_per_chunk: int = Field(default=1, ge=1, le=1024, description="Output tokens per SSE chunk.")


def parse_variant(text: str) -> VariantProfile:
    """`name:key=value,key=value` -> VariantProfile; ValueError names the bad part."""
    name, _, rest = text.partition(":")
    fields: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--variants {text!r}: {item!r} is not key=value")
        fields[key.strip()] = value.strip()
    try:
        return VariantProfile(name=name, **fields)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in e.errors())
        keys = ", ".join(k for k in VariantProfile.model_fields if k != "name")
        raise ValueError(f"--variants {text!r}: {problems} (keys: {keys})") from e


@dataclass(frozen=True, slots=True)
class ScheduleStep:
    """From `at_s` seconds after the anchor on, traffic goes to variants by `weights`."""

    at_s: float
    weights: dict[str, float]


def parse_schedule(items: list[str], variants: list[str]) -> list[ScheduleStep]:
    """`["0:full", "5:full=0.3,int8=0.7"]` -> steps sorted by time; names must be known variants."""
    if not items:
        return [ScheduleStep(0.0, dict.fromkeys(variants, 1.0 / len(variants)))]
    steps = []
    for item in items:
        at, sep, spec = item.partition(":")
        try:
            at_s = float(at)
            weights = {spec.strip(): 1.0} if "=" not in spec else {
                k.strip(): float(w) for k, w in (part.split("=", 1) for part in spec.split(","))
            }
        except ValueError as e:
            raise ValueError(f"--schedule takes SECONDS:VARIANT or SECONDS:v1=w1,v2=w2; got {item!r}") from e
        unknown = sorted(set(weights) - set(variants))
        if not sep or at_s < 0 or unknown or sum(weights.values()) <= 0 or min(weights.values()) < 0:
            raise ValueError(f"--schedule {item!r}: needs a time >= 0 and weights >= 0 (not all 0) of the "
                             f"variants {variants}" + (f"; unknown {unknown}" if unknown else ""))
        steps.append(ScheduleStep(at_s, weights))
    steps.sort(key=lambda s: s.at_s)
    if steps[0].at_s > 0:
        steps.insert(0, ScheduleStep(0.0, dict.fromkeys(variants, 1.0 / len(variants))))
    return steps


class Schedule:
    """Weights over time since an anchor (set by `anchor(unix_time)`, once)."""

    def __init__(self, steps: list[ScheduleStep], seed: int) -> None:
        self.steps = steps
        self.anchor_unix: float | None = None
        self._rng = random.Random(seed)

    def anchor(self, unix_time: float) -> None:
        if self.anchor_unix is None:
            self.anchor_unix = unix_time

    def weights_at(self, unix_time: float) -> dict[str, float]:
        since = unix_time - (self.anchor_unix if self.anchor_unix is not None else unix_time)
        current = self.steps[0]
        for step in self.steps:
            if step.at_s <= since:
                current = step
        return current.weights

    def choose(self, unix_time: float) -> str:
        weights = self.weights_at(unix_time)
        names = [n for n, w in weights.items() if w > 0]
        return self._rng.choices(names, weights=[weights[n] for n in names])[0]

    def decisions(self, unix_time: float) -> list[dict[str, object]]:
        """The steps whose time has come, in /controller/decisions' shape."""
        if self.anchor_unix is None:
            return []
        return [
            {
                "time": self.anchor_unix + step.at_s,
                "weights": dict(step.weights),
                "replicas": {v: int(w > 0) for v, w in step.weights.items()},
                "reason": f"mock schedule step {i} (t+{step.at_s:g}s)",
            }
            for i, step in enumerate(self.steps)
            if self.anchor_unix + step.at_s <= unix_time
        ]
