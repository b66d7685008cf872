"""The app builder: the one place the Serve graph is wired from an `AppConfig`.

    serve run deployments.app:app config_path=cluster/configs/local.yaml
    serve deploy <serve config whose import_path is deployments.app:app, args: {config: {...}}>

Graph: `router` (ingress) -> `llm-<variant>` per variant. A replica of a tp_size N variant
reserves N bundles (STRICT_PACK, deployments/replica/placement.py): rank 0 in the replica actor, which fills
bundle 0 (one GPU on CUDA), ranks 1..N-1 as actors filling the others.
With `controller.enabled`, `slo-controller` too: Serve deploys only what the ingress's init
arguments reach, so it is bound as the router's last argument (the router never calls it; the
controller finds the router by name) and the app must run with `serve_run_options(config)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from deployments.controller.slo_controller import SLOControllerDeployment, load_manifest
from deployments.replica.llm_server import LLMServerDeployment
from deployments.replica.placement import (
    PLACEMENT_STRATEGY,
    llm_deployment_name,
    placement_bundles,
    replica_actor_options,
)
from deployments.router.router import RouterDeployment
from deployments.router.serve_request_router import AffinityRequestRouter
from inference.schema.config import AppConfig, ConfigError, VariantConfig, load_config, parse_config
from inference.schema.config.engine import EngineConfig, ExecutionSettings


def engine_config_for(config: AppConfig, variant: VariantConfig) -> EngineConfig:
    """The variant's engine: its `ExecutionSettings` keys and its `engine:` section are the engine's fields."""
    return EngineConfig(
        **variant.model_dump(include=set(ExecutionSettings.model_fields)),
        **variant.engine.model_dump(),
        model=variant.source or config.model.source,
        max_model_len=config.model.max_model_len,
        chat_template=config.model.chat_template,
        num_threads=max(1, int(variant.num_cpus_per_rank)),
    )


def server_options(config: AppConfig, variant: VariantConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": llm_deployment_name(variant.name),
        "num_replicas": variant.num_replicas,
        "max_ongoing_requests": variant.max_ongoing_requests,
        # a bounded queue in front of the replicas: past it Serve raises BackPressureError -> 429
        "max_queued_requests": config.router.max_in_flight,
        "request_router_config": RequestRouterConfig(
            request_router_class=AffinityRequestRouter,  # type: ignore[arg-type]
            request_router_kwargs={"max_load_gap": config.router.affinity_max_load_gap},
        ),
        # rank 0 runs in this actor: it fills bundle 0 exactly (its GPU on CUDA)
        "ray_actor_options": replica_actor_options(variant),
        "placement_group_bundles": placement_bundles(variant),
        "placement_group_strategy": PLACEMENT_STRATEGY,
        "graceful_shutdown_timeout_s": config.cluster.graceful_shutdown_timeout_s,
        "max_surge_percent": config.cluster.max_surge_percent,
    }
    return options


def controller_app(config: AppConfig, config_path: str | Path | None = None) -> Application | None:
    """The SLO controller (one replica, no CPU reserved) when `controller.enabled`. Its manifest is
    read and checked here, so a bad `controller.manifest` fails before any model loads."""
    if not config.controller.enabled:
        return None
    _, manifest = load_manifest(config, config_path)
    return SLOControllerDeployment.options(num_replicas=1, ray_actor_options={"num_cpus": 0}).bind(
        config.model_dump_json(), manifest.model_dump_json()
    )


def serve_run_options(config: AppConfig) -> dict[str, Any]:
    """`serve.run` keyword arguments: name, route, and external scaling for the controller."""
    return {
        "name": config.cluster.app_name,
        "route_prefix": config.cluster.route_prefix,
        "external_scaler_enabled": config.controller.enabled,
    }


def build_app(config: AppConfig, config_path: str | Path | None = None) -> Application:
    """`config_path`: the config file, where a relative `controller.manifest` is looked up first."""
    for index, variant in enumerate(config.variants):
        if variant.num_replicas < 1:
            raise ConfigError(
                f"variants.{index}.num_replicas: Serve starts every deployment with at least one replica, "
                f"got {variant.num_replicas} for {variant.name!r}; the controller may later scale it to min_replicas"
            )
    controller = controller_app(config, config_path)
    servers = {
        v.name: LLMServerDeployment.options(**server_options(config, v)).bind(
            v.name, config.model.name, engine_config_for(config, v).model_dump_json()
        )
        for v in config.variants
    }
    bound = config.router.max_in_flight
    return RouterDeployment.options(
        num_replicas=config.router.num_replicas,
        ray_actor_options={"num_cpus": 0},
        # well above the router's own bound, so the router itself answers 429 (OpenAI error body)
        # instead of Serve's proxy dropping requests with a plain 503 while it probes the replica
        max_ongoing_requests=max(4 * bound, bound + 64),
        max_queued_requests=4 * bound,
        graceful_shutdown_timeout_s=config.cluster.graceful_shutdown_timeout_s,
        max_surge_percent=config.cluster.max_surge_percent,
    ).bind(config.model_dump_json(), servers, controller)


def app(args: dict[str, Any]) -> Application:
    """Application builder for `serve run` / `serve deploy`: args `config` (a dict) or `config_path`."""
    if "config" in args:
        return build_app(parse_config(args["config"], "serve args 'config'"))
    return build_app(load_config(args.get("config_path")), args.get("config_path"))
