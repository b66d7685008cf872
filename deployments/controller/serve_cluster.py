"""What the SLO controller reads from and applies to Ray Serve: replicas per variant, and targets.

`ServeCluster(app_name).read(variants)` returns each variant deployment's (`llm-<variant>`)
running, ready and target replica counts, from the Serve controller's instance details (the
data behind `serve.status()` and the dashboard's `GET /api/serve/applications/`).
`ServeCluster.scale(variant, n)` sets a target through Serve's external scaling API: the
application must be deployed with `external_scaler_enabled: true`.

Why the Serve controller's `update_deployment_replicas` and not the dashboard's
`POST /api/v1/applications/{app}/deployments/{dep}/scale`: that endpoint is a thin wrapper over
the same actor call. Calling it directly needs no dashboard (`sloserve up` runs Ray without one:
it costs a process and memory on small machines), no dashboard address to discover from inside
a replica, and no HTTP hop that can fail on its own; errors arrive as typed exceptions. The cost
is a private method name, so Ray is pinned and the serve tests exercise this path for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray.actor import ActorHandle
from ray.serve._private.common import DeploymentID, ReplicaState
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.exceptions import ExternalScalerDisabledError
from ray.serve.schema import ApplicationStatus, ServeInstanceDetails

from deployments.replica.placement import llm_deployment_name

STARTED = (ReplicaState.STARTING, ReplicaState.UPDATING, ReplicaState.RECOVERING, ReplicaState.RUNNING)


class ClusterReadError(RuntimeError):
    """Serve does not (yet) show the application or one of its variant deployments."""


class ScalingDisabledError(RuntimeError):
    """The application was deployed without `external_scaler_enabled: true`."""


@dataclass(frozen=True, slots=True)
class VariantReplicas:
    """One variant's replicas: started (ready or starting, not stopping), ready, and Serve's target."""

    running: int
    ready: int
    target: int


@dataclass(frozen=True, slots=True)
class AppReplicas:
    """The replicas of every variant of the application; whether it accepts external scaling, and
    whether Serve is still deploying it (a first deploy or a config update in progress)."""

    variants: dict[str, VariantReplicas]
    external_scaler_enabled: bool
    deploying: bool

    def counts(self) -> dict[str, tuple[int, int]]:
        """variant -> (running, ready), the argument of `Router.observe`."""
        return {n: (r.running, r.ready) for n, r in self.variants.items()}

    def targets(self) -> dict[str, int]:
        return {n: r.target for n, r in self.variants.items()}


class ServeCluster:
    """The Serve controller actor, as the SLO controller uses it (async; no dashboard)."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self._actor: ActorHandle | None = None

    def _controller(self) -> ActorHandle:
        if self._actor is None:
            self._actor = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return self._actor

    async def read(self, variants: Sequence[str]) -> AppReplicas:
        try:
            raw = await self._controller().get_serve_instance_details.remote()
        except ray.exceptions.RayActorError:
            self._actor = None  # Serve restarted its controller: look it up again next time
            raise
        app = ServeInstanceDetails(**raw).applications.get(self.app_name)
        if app is None:
            raise ClusterReadError(f"Serve shows no application {self.app_name!r}")
        found: dict[str, VariantReplicas] = {}
        for name in variants:
            deployment = app.deployments.get(llm_deployment_name(name))
            if deployment is None:
                raise ClusterReadError(f"Serve shows no deployment {llm_deployment_name(name)!r} in {self.app_name!r}")
            states = [r.state for r in deployment.replicas]
            found[name] = VariantReplicas(
                running=sum(s in STARTED for s in states),
                ready=sum(s == ReplicaState.RUNNING for s in states),
                target=deployment.target_num_replicas,
            )
        deploying = app.status in (ApplicationStatus.NOT_STARTED, ApplicationStatus.DEPLOYING)
        return AppReplicas(found, bool(app.external_scaler_enabled), deploying)

    async def scale(self, variant: str, target: int) -> None:
        """Set the variant's replica target; Serve starts or stops replicas asynchronously."""
        deployment = DeploymentID(name=llm_deployment_name(variant), app_name=self.app_name)
        try:
            await self._controller().update_deployment_replicas.remote(deployment, target)
        except ExternalScalerDisabledError as e:
            raise ScalingDisabledError(
                f"application {self.app_name!r} was deployed without external_scaler_enabled: "
                "replica targets are not applied (use `sloserve up`, or set it in the Serve config)"
            ) from e
        except ray.exceptions.RayActorError:
            self._actor = None
            raise
