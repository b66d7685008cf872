"""The Kubernetes section: what `sloserve render-k8s` writes (RayService, pods, secrets, security)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from inference.schema.config.base import API_KEYS_ENV, StrictModel

_DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_QUANTITY = r"^[1-9][0-9]*(Mi|Gi|Ti)$"


class SecretEnvConfig(StrictModel):
    """An environment variable of the Ray pods filled from a Kubernetes Secret key, never inline."""

    env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$", max_length=128, description="Variable name in the pods.")
    secret_name: str = Field(pattern=_DNS1123_SUBDOMAIN, max_length=253, description="Secret in the namespace.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key inside the Secret.")
    optional: bool = Field(default=True, description="Start the pods even when the Secret or key is missing.")


class TolerationConfig(StrictModel):
    """A pod toleration, e.g. of the taint that keeps other pods off GPU nodes."""

    key: str = Field(min_length=1, max_length=316)
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class WorkerGroupConfig(StrictModel):
    """Pods of one KubeRay worker group; requests equal limits. Unset replica bounds are computed."""

    num_cpus: int = Field(default=4, ge=1, le=1024, description="CPUs per pod (Ray's CPU count there).")
    memory: str = Field(default="8Gi", pattern=_QUANTITY, description="Memory per pod, e.g. '8Gi'.")
    num_gpus: int | None = Field(
        default=None, ge=1, le=64, description="GPUs per pod (GPU group); default: largest tp_size of the CUDA variants."
    )
    min_workers: int | None = Field(default=None, ge=0, le=10_000, description="Default: pods min_replicas need.")
    max_workers: int | None = Field(default=None, ge=0, le=10_000, description="Default: pods max_replicas need.")
    tolerations: list[TolerationConfig] = Field(default_factory=list, max_length=32)
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroupConfig:
        if self.min_workers is not None and self.max_workers is not None and self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) must be <= max_workers ({self.max_workers})")
        return self


class PodSecurityConfig(StrictModel):
    """Hardening of the Ray pods and who may reach them (DESIGN.md, Security and limits)."""

    run_as_user: int = Field(default=1000, ge=1, le=2**31 - 1, description="UID of the Ray image's `ray` user; never 0.")
    run_as_group: int = Field(default=100, ge=1, le=2**31 - 1, description="GID of the Ray image's `users` group.")
    read_only_root_filesystem: bool = Field(
        default=True, description="Read-only image; Ray writes only to emptyDir volumes at /tmp, /home/ray/.cache, /dev/shm."
    )
    tmp_size: str = Field(default="10Gi", pattern=_QUANTITY, description="/tmp emptyDir (Ray sessions, logs, spilling).")
    network_policy: bool = Field(
        default=True, description="A NetworkPolicy: from outside the namespace only the serve port is reachable."
    )
    operator_namespace: str = Field(
        default="kuberay-system", pattern=_DNS1035, max_length=63,
        description="Namespace of the KubeRay operator, the one outside client of the dashboard (8265).",
    )
    prometheus_namespace: str = Field(
        default="monitoring", pattern=_DNS1035, max_length=63,
        description="Namespace Prometheus scrapes from (the metrics port is opened to it by monitoring/).",
    )


class KubernetesConfig(StrictModel):
    """The KubeRay RayService that `sloserve render-k8s` writes; unset fields take the profile's preset."""

    name: str = Field(default="sloserve", pattern=_DNS1035, max_length=47, description="RayService name.")
    namespace: str = Field(default="sloserve", pattern=_DNS1035, max_length=63)
    image: str = Field(default="sloserve:0.1.0-py311-cpu", min_length=1, description="Image built by k8s/Dockerfile.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    head_num_cpus: int = Field(default=1, ge=1, le=256, description="Head pod CPUs (Ray sees 0: no replicas there).")
    head_memory: str = Field(default="4Gi", pattern=_QUANTITY)
    cpu_group: WorkerGroupConfig = Field(default_factory=WorkerGroupConfig, description="Router, controller, CPU variants.")
    gpu_group: WorkerGroupConfig = Field(default_factory=WorkerGroupConfig, description="CUDA variants.")
    gpu_resource: str = Field(default="nvidia.com/gpu", min_length=1, description="Extended resource of a GPU.")
    num_cpus_per_ingress_replica: float = Field(
        default=1.0, ge=0.0, le=64.0, description="CPUs counted per router/controller replica when sizing pods."
    )
    secrets: list[SecretEnvConfig] = Field(
        default_factory=lambda: [
            SecretEnvConfig(env="HF_TOKEN", secret_name="sloserve-secrets", key="hf-token"),
            SecretEnvConfig(env=API_KEYS_ENV, secret_name="sloserve-secrets", key="api-keys"),
        ],
        max_length=32,
    )
    runtime_env_vars: dict[str, str] = Field(
        default_factory=lambda: {"TOKENIZERS_PARALLELISM": "false"},
        description="Serve runtime_env env_vars; no secrets here (use `secrets`).",
    )
    upgrade_strategy: Literal["NewCluster", "None"] = Field(
        default="NewCluster", description="NewCluster: a new RayCluster takes traffic once its app is RUNNING."
    )
    cluster_deletion_delay_s: int = Field(default=60, ge=0, le=86_400, description="Old RayCluster kept after switch.")
    initializing_timeout_s: int = Field(
        default=3600, ge=60, le=604_800, description="Time a RayService may take to become ready (model loads)."
    )
    autoscaler_idle_timeout_s: int = Field(default=300, ge=1, le=86_400, description="Idle time before pod removal.")
    autoscaler_upscaling_mode: Literal["Default", "Conservative", "Aggressive"] = "Default"
    shm_size: str = Field(default="1Gi", pattern=_QUANTITY, description="/dev/shm of workers (object store, gloo).")
    cache_size: str = Field(default="10Gi", pattern=_QUANTITY, description="Model cache emptyDir per pod.")
    prometheus_labels: dict[str, str] = Field(
        default_factory=lambda: {"release": "prometheus"}, description="Labels Prometheus selects PodMonitors by."
    )
    scrape_interval_s: int = Field(default=15, ge=1, le=3600)
    security: PodSecurityConfig = Field(
        default_factory=PodSecurityConfig, description="Non-root pods, read-only root filesystem, NetworkPolicy."
    )
    metrics_prefix: str = Field(
        default="ray_", pattern=r"^[a-z_]*$", description="Prefix Ray's metrics export adds to app metrics."
    )

    @model_validator(mode="after")
    def _no_secret_values(self) -> KubernetesConfig:
        envs = [s.env for s in self.secrets]
        repeated = sorted({e for e in envs if envs.count(e) > 1})
        if repeated:
            raise ValueError(f"secrets: env names must be unique, repeated: {repeated}")
        for name in self.runtime_env_vars:
            if {"TOKEN", "SECRET", "PASSWORD", "KEY", "KEYS"} & set(name.upper().split("_")):
                raise ValueError(f"runtime_env_vars: {name!r} looks like a secret; list it under `secrets` instead")
        return self
