"""`SLOController`: the Serve deployment (one replica) that runs the SLO policy on the live cluster.

Every `controller.interval_s` it reads each variant's replicas from Serve (`serve_cluster`), asks
every router replica for its latency windows (`Router.observe`, merged by `slo.merge`), runs the
pure `slo.policy.decide` with the `PolicyState` it keeps, pushes the weights to every router
replica (`Router.set_weights`: the decision log of `GET /controller/decisions` and
`sloserve_controller_decisions_total{reason}`) and sets changed replica targets through Serve's
external scaling API. A thin shim: every choice is the policy's. It waits while Serve deploys
the application (a first deploy or a config update). A failing interval is logged and the next
one runs. If this replica dies the routers keep their last weights; Serve starts a new
one, which resumes from the routers' weights, Serve's replica targets and the policy's learned
state (long-run rate, mean output length, latency corrections, quality budget) that this one left
with the routers (`Router.remember`, every `REMEMBER_EVERY_S` and after every change).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Deployment

from deployments.controller.serve_cluster import AppReplicas, ScalingDisabledError, ServeCluster
from deployments.slo.decision import Decision, PolicyState
from deployments.slo.merge import merge_observations
from deployments.slo.policy import decide
from deployments.slo.settings import PolicyInputs
from inference.model.dtypes import cpu_label
from inference.schema.config import AppConfig, ConfigError
from inference.schema.manifest import ManifestError, VariantManifest

log = logging.getLogger("ray.serve")
CONTROLLER_DEPLOYMENT = "slo-controller"
ROUTER_DEPLOYMENT = "router"
REMEMBER_EVERY_S = 5.0  # how often the routers get the policy's learned state (and after every change)
HISTORY = 500  # decisions kept by the controller (the routers keep their own log of applied ones)
WEIGHT_TOLERANCE = 1e-6
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "cluster" / "configs"


def load_manifest(config: AppConfig, config_path: str | Path | None = None) -> tuple[Path, VariantManifest]:
    """The manifest `controller.manifest` names: a relative path is looked up next to the config
    file, then in the working directory, then among the packaged configs (cluster/configs/: how a
    RayService rendered from local.yaml finds its manifest in the image). Raises ConfigError naming `controller.manifest` when it is
    unset, missing, invalid, or lacks a configured variant."""
    if config.controller.manifest is None:
        raise ConfigError("controller.manifest: the SLO controller is enabled but no manifest (variants.json) is set")
    given = Path(config.controller.manifest).expanduser()
    if given.is_absolute():
        candidates = [given]
    else:
        candidates = [Path(config_path).resolve().parent / given] if config_path else []
        candidates.append(Path.cwd() / given)
        candidates.append(PACKAGED_CONFIGS / given)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        looked = ", ".join(str(c) for c in candidates)
        raise ConfigError(f"controller.manifest: {str(given)!r} not found (looked at {looked})")
    try:
        manifest = VariantManifest.load(path)
    except ManifestError as e:
        raise ConfigError(f"controller.manifest: {e}") from e
    known = {v.name for v in manifest.variants}
    missing = [v.name for v in config.variants if v.name not in known]
    if missing:
        raise ConfigError(
            f"controller.manifest: variants {missing} are configured but not in {path} (it has {sorted(known)})"
        )
    return path, manifest


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=WEIGHT_TOLERANCE) for k in a)


class SLOController:
    """One replica; the control loop starts with it. Handle methods: `decisions()`, `status()`."""

    def __init__(self, config_json: str, manifest_json: str) -> None:
        self.config = AppConfig.model_validate_json(config_json)
        self.manifest = VariantManifest.model_validate_json(manifest_json)
        self.names = [v.name for v in self.config.variants]
        self.inputs = PolicyInputs.of(self.config)
        app_name = serve.get_replica_context().app_name
        self.router = serve.get_deployment_handle(ROUTER_DEPLOYMENT, app_name)
        self.cluster = ServeCluster(app_name)
        self.state: PolicyState | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.num_intervals = 0
        self.num_failures = 0
        self.last_error: str | None = None
        self.scaling_disabled = False
        self.remembered_s = -math.inf
        self.started_unix = time.time()
        self.cpu = cpu_label()
        self.manifest_cpu_matches = self.cpu in self.manifest.hardware
        if not self.manifest_cpu_matches:
            log.warning(
                "slo-controller: the manifest was measured on %r, this is %r: planning from its speeds, "
                "corrected online from the latency observed here (the corrections are in the decision log)",
                self.manifest.hardware, self.cpu)
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        interval_s = self.config.controller.interval_s
        while True:
            started = time.monotonic()
            try:
                async with asyncio.timeout(max(3 * interval_s, 30.0)):
                    await self._step()
                self.last_error = None
            except Exception as e:  # log and carry on: the next interval reads everything afresh
                self.num_failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("slo-controller: interval failed (%s); trying again next interval", self.last_error)
            self.num_intervals += 1
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    async def _resume(self, replicas: AppReplicas) -> PolicyState:
        """Start from what the cluster does now: the router's weights, Serve's replica targets, what
        an earlier controller learned (from the router); and as if a burst had just ended (a
        restarted controller does not know when the last one was, so it waits `scale_down_hold_s`
        before removing replicas)."""
        state = PolicyState.initial(self.inputs.variants)
        weights: dict[str, float] = await self.router.get_weights.remote()
        learned: dict[str, Any] | None = await self.router.recall.remote()
        targets = {v.name: min(max(replicas.variants[v.name].target, v.min_replicas), v.max_replicas)
                   for v in self.config.variants}
        if learned:
            log.info("slo-controller: resuming with the learned state the routers kept: %s", learned)
        state = state.with_learned(learned)
        return replace(state, weights=weights, replica_targets=targets, last_burst_s=time.monotonic())

    async def _step(self) -> Decision | None:
        replicas = await self.cluster.read(self.names)
        if replicas.deploying:  # Serve sets the replicas now; a variant not up yet is no SLO event
            return None
        if self.state is None:
            self.state = await self._resume(replicas)
        parts = await self.router.broadcast("observe", replicas.counts()).results_async(timeout_s=10.0)
        observation = merge_observations(parts, time.monotonic())
        c = self.inputs
        decision, self.state = decide(observation, self.state, c.slo, self.manifest, c.controller, c.variants)
        pushed = await self._push_weights(decision)
        now = time.monotonic()
        if pushed or now - self.remembered_s >= REMEMBER_EVERY_S:
            await self.router.broadcast("remember", self.state.learned()).results_async(timeout_s=10.0)
            self.remembered_s = now
        scaled = await self._scale(decision, replicas)
        entry = decision.as_dict() | {"time": time.time(), "pushed": pushed, "scaled": scaled}
        self.history.append(entry)
        if decision.reason_code != "hold":
            log.info("slo-controller: %s: %s", decision.reason_code, decision.reason)
        return decision

    async def _push_weights(self, decision: Decision) -> bool:
        """Send the decision to every router replica when it changes something, or when a router's
        weights differ from it (a restarted or added router replica)."""
        weights = dict(decision.weights)
        changed = decision.weights_changed or decision.replicas_changed or decision.reason_code != "hold"
        if not changed:
            current = await self.router.broadcast("get_weights").results_async(timeout_s=10.0)
            changed = not all(_same(w, weights) for w in current)
        if changed:
            details = {"replicas": dict(decision.replica_targets), "reason_code": decision.reason_code,
                       "detail": decision.reason, "at_risk": decision.at_risk,
                       "expected_quality": round(decision.expected_quality, 4)}
            await self.router.broadcast(
                "set_weights", weights, reason=decision.reason_code, details=details
            ).results_async(timeout_s=10.0)
        return changed

    async def _scale(self, decision: Decision, replicas: AppReplicas) -> dict[str, int]:
        """Set the targets that differ from Serve's; return them."""
        if self.scaling_disabled:
            return {}
        changes = {n: t for n, t in decision.replica_targets.items() if replicas.variants[n].target != t}
        for name, target in changes.items():
            try:
                await self.cluster.scale(name, target)
            except ScalingDisabledError as e:
                self.scaling_disabled = True
                log.warning("slo-controller: %s", e)
                return {}
            log.info("slo-controller: %s replicas %d -> %d", name, replicas.variants[name].target, target)
        return changes

    # ---- handle API ----------------------------------------------------------------------------
    def decisions(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest decisions (holds included), oldest first."""
        return list(self.history)[-limit:]

    def status(self) -> dict[str, Any]:
        return {
            "started_unix": self.started_unix, "num_intervals": self.num_intervals,
            "num_failures": self.num_failures, "last_error": self.last_error,
            "scaling_disabled": self.scaling_disabled,
            "manifest_hardware": self.manifest.hardware, "cpu": self.cpu,
            "manifest_cpu_matches": self.manifest_cpu_matches,
            "corrections": ({n: [c.tpot, c.ttft] for n, c in self.state.corrections.items()}
                            if self.state else None),
            "weights": dict(self.state.weights) if self.state else None,
            "replica_targets": dict(self.state.replica_targets) if self.state else None,
        }

    def check_health(self) -> None:
        """Serve restarts the replica if the control loop has stopped."""
        if self.task.done():
            raise RuntimeError(f"slo-controller loop stopped: {self.task!r}")


SLOControllerDeployment: Deployment = serve.deployment(name=CONTROLLER_DEPLOYMENT)(SLOController)
