"""The Serve config (`serveConfigV2`) of the RayService: the app of `deployments.app:app`.

The application builder receives the whole validated `AppConfig` as `args.config`, so the cluster
runs exactly the rendered config. Deployment overrides repeat what the builder derives from that
config (replica counts, the replica actor's resources and placement group bundles, both from
deployments/replica/placement.py) so the manifest shows, and tests check, that each replica's tp_size bundles
fit a worker pod and that rank 0 holds a GPU of its own. Takes an `AppConfig`; returns a JSON-able dict.
"""

from __future__ import annotations

from typing import Any

from deployments.replica.placement import (
    PLACEMENT_STRATEGY,
    llm_deployment_name,
    placement_bundles,
    replica_actor_options,
)
from inference.schema.config import AppConfig, KubernetesConfig

IMPORT_PATH = "deployments.app:app"
ROUTER_DEPLOYMENT = "router"
CONTROLLER_DEPLOYMENT = "slo-controller"


def embedded_config(config: AppConfig, k8s: KubernetesConfig) -> dict[str, Any]:
    """The AppConfig as the builder receives it: Serve listens on all pod interfaces, and the
    `kubernetes` section is the resolved one (profile preset + file) the manifests were made from."""
    cluster = config.cluster.model_copy(update={"http_host": "0.0.0.0", "address": None})
    return config.model_copy(update={"cluster": cluster, "kubernetes": k8s}).model_dump(mode="json")


def _deployments(config: AppConfig) -> list[dict[str, Any]]:
    deployments: list[dict[str, Any]] = [{"name": ROUTER_DEPLOYMENT, "num_replicas": config.router.num_replicas}]
    for variant in config.variants:
        deployments.append(
            {
                "name": llm_deployment_name(variant.name),
                "num_replicas": variant.num_replicas,
                "max_ongoing_requests": variant.max_ongoing_requests,
                "ray_actor_options": replica_actor_options(variant),
                "placement_group_bundles": placement_bundles(variant),
                "placement_group_strategy": PLACEMENT_STRATEGY,
            }
        )
    if config.controller.enabled:
        deployments.append({"name": CONTROLLER_DEPLOYMENT, "num_replicas": 1})
    return deployments


def build_serve_config(config: AppConfig, k8s: KubernetesConfig) -> dict[str, Any]:
    """A Serve multi-application config (ServeDeploySchema) with the one sloserve application."""
    application: dict[str, Any] = {
        "name": config.cluster.app_name,
        "route_prefix": config.cluster.route_prefix,
        "import_path": IMPORT_PATH,
        "runtime_env": {"env_vars": dict(sorted(k8s.runtime_env_vars.items()))},
        "args": {"config": embedded_config(config, k8s)},
        "deployments": _deployments(config),
    }
    if config.controller.enabled:
        # The SLO controller sets replica counts through Serve's external scaling API.
        application["external_scaler_enabled"] = True
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": config.cluster.http_port},
        "applications": [application],
    }
