"""What a soak run does and when: `SoakConfig` (from the CLI) and `fault_plan` (pure).

A run is bounded: `duration_s` of load, then at most one request deadline of drain. Faults are
replica kills (every `kill_every_s`, or at `kill_at_s`) and one redeploy of the same config, by
default in the middle of the run, moved off any kill so the two are told apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from load_tests.config import check_target

FaultKind = Literal["kill", "redeploy"]


class SoakConfig(BaseModel):
    """Everything one soak run needs; echoed into soak.json."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    config_path: Path = Field(default=Path("cluster/configs/local.yaml"), description="The sloserve app config.")
    base_url: str | None = Field(default=None, description="A running server; none: start the app here.")
    ray_address: str | None = Field(default=None, description="Ray of the running server (with base_url).")
    port: int = Field(default=0, ge=0, le=65535, description="HTTP port of a self-started app; 0 = a free one.")
    num_cpus: int | None = Field(default=None, ge=1, le=4096, description="CPUs of a self-started Ray.")
    duration_s: float = Field(default=900.0, gt=0.0, le=86_400.0, description="Load duration.")
    request_rate: float | None = Field(default=None, gt=0.0, le=10_000.0, description="None: measured capacity x fraction.")
    capacity_fraction: float = Field(default=0.8, gt=0.0, le=1.0)
    capacity_step_s: float = Field(default=10.0, gt=0.0, le=600.0, description="Time per concurrency level of the ramp.")
    max_capacity_concurrency: int = Field(default=32, ge=1, le=1024)
    kill_every_s: float | None = Field(default=None, gt=0.0, le=86_400.0)
    kill_at_s: list[float] = Field(default_factory=list, max_length=1000)
    redeploy: bool = True
    redeploy_at_s: float | None = Field(default=None, ge=0.0, le=86_400.0, description="None: the middle.")
    redeploy_timeout_s: float = Field(default=600.0, gt=0.0, le=7200.0, description="Bound after the load ends.")
    request_deadline_s: float = Field(default=120.0, gt=0.0, le=3600.0, description="A request past it is hung.")
    warmup_s: float = Field(default=60.0, ge=0.0, le=86_400.0, description="Replica age of its RSS baseline.")
    rss_every_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    max_rss_growth_pct: float = Field(default=5.0, gt=0.0, le=1000.0)
    input_len: int = Field(default=64, ge=1, le=100_000)
    output_len: int = Field(default=32, ge=1, le=100_000)
    seed: int = 0
    result_dir: Path | None = None
    allow_remote: bool = False
    quiet: bool = False

    @model_validator(mode="after")
    def _check(self) -> SoakConfig:
        if self.base_url is not None:
            check_target(self.base_url, self.allow_remote)
            if self.ray_address is None:
                raise ValueError("--base-url needs --ray-address too: replicas are killed and redeployed through Ray")
        elif self.ray_address is not None:
            raise ValueError("--ray-address needs --base-url (the server of that cluster)")
        late = [t for t in self.kill_at_s if not 0 < t < self.duration_s]
        if late:
            raise ValueError(f"--kill-at-s {late}: every kill must be inside the run (0, {self.duration_s})")
        if self.redeploy_at_s is not None and not self.redeploy_at_s < self.duration_s:
            raise ValueError(f"--redeploy-at-s {self.redeploy_at_s} is not inside the run of {self.duration_s} s")
        return self

    @property
    def self_started(self) -> bool:
        return self.base_url is None


@dataclass(frozen=True, slots=True)
class FaultEvent:
    at_s: float
    kind: FaultKind


def kill_times(config: SoakConfig) -> list[float]:
    """Explicit times, else every `kill_every_s` while enough of the run is left to see recovery."""
    if config.kill_at_s:
        return sorted(config.kill_at_s)
    if config.kill_every_s is None:
        return []
    settle_s = min(60.0, config.kill_every_s / 2)
    times, t = [], config.kill_every_s
    while t <= config.duration_s - settle_s:
        times.append(t)
        t += config.kill_every_s
    return times


def fault_plan(config: SoakConfig) -> list[FaultEvent]:
    kills = kill_times(config)
    events = [FaultEvent(t, "kill") for t in kills]
    if config.redeploy:
        at = config.redeploy_at_s
        if at is None:
            at = config.duration_s / 2
            spacing = config.kill_every_s or config.duration_s / 2
            if any(abs(at - k) < spacing / 4 for k in kills):
                at += spacing / 2  # halfway to the next kill
        events.append(FaultEvent(at, "redeploy"))
    return sorted(events, key=lambda e: e.at_s)
