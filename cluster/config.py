"""The one configuration of a sloserve deployment: `AppConfig`, loaded from YAML.

Every part of the system reads its own section: the app builder (model, variants, router),
the SLO controller (slo, controller), the local launcher and k8s renderer (cluster). Models
forbid unknown keys, bound every number, and check cross-field rules with messages that name
the values, so a bad file fails before any model is loaded. Pure pydantic: no Ray, no torch.
Secrets never live in the file: it names the environment variable that holds them, and
`RouterConfig.api_keys()` is the one place that variable is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference.config import QuantizationName, check_kv_pool

DType = Literal["auto", "bfloat16", "float16", "float32"]
Device = Literal["cpu", "cuda"]
LoadTimeQuantization = QuantizationName

DEFAULT_MODEL = "packaged:smollm2-135m-instruct"
API_KEYS_ENV = "SLOSERVE_API_KEYS"  # the variable the default Kubernetes Secret fills (kubernetes.secrets)


class ConfigError(ValueError):
    """A configuration file is missing, not YAML, or invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(_Strict):
    """The base model every variant derives from."""

    source: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        description="'packaged:<name>', a local Hugging Face directory, a .gguf file, or a hub id.",
    )
    name: str = Field(
        default="smollm2-135m-instruct",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Public model name in the OpenAI API (`model` field); variants answer as '<name>:<variant>'.",
    )
    max_model_len: int = Field(
        default=2048, ge=16, le=131072, description="Longest prompt + output, in tokens, a request may use."
    )


class EngineSettings(_Strict):
    """Engine knobs of one variant's replicas."""

    kv_cache_tokens: int = Field(
        default=16384, ge=64, le=4_194_304, description="KV pool capacity in tokens, preallocated per replica."
    )
    block_size: int = Field(default=16, ge=1, le=256, description="Tokens per KV block.")
    max_num_seqs: int = Field(default=32, ge=1, le=1024, description="Most sequences decoded together.")
    max_num_batched_tokens: int = Field(
        default=512, ge=16, le=65536, description="Most tokens in one step (bounds prefill chunks)."
    )

    @model_validator(mode="after")
    def _pool_holds_a_block_per_seq(self) -> EngineSettings:
        check_kv_pool(self.kv_cache_tokens, self.block_size)
        return self


class VariantConfig(_Strict):
    """One served variant: a Serve deployment of replicas of one (possibly compressed) model."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", description="Variant name, e.g. 'full', 'int8'.")
    source: str | None = Field(
        default=None, description="Model of this variant (a variant directory); default: model.source."
    )
    quantization: LoadTimeQuantization = Field(
        default="none", description="Compression applied at load time (for variants without a directory)."
    )
    dtype: DType = Field(default="auto", description="Compute dtype; 'auto' = bf16 where fast, else fp32.")
    device: Device = Field(default="cpu", description="Where the replica's ranks run.")
    tp_size: int = Field(default=1, ge=1, le=16, description="Tensor-parallel ranks per replica.")
    num_cpus_per_rank: float = Field(
        default=1.0, ge=0.0, le=256.0,
        description="CPUs reserved per rank (its placement group bundle); >= 1 with tp_size > 1, > 0 on CPU.",
    )
    num_replicas: int = Field(
        default=1, ge=0, le=1024,
        description="Replicas at start; deploying needs >= 1 (the controller may scale to min_replicas).",
    )
    min_replicas: int = Field(default=1, ge=0, le=1024, description="Lower bound for the controller.")
    max_replicas: int = Field(default=1, ge=1, le=1024, description="Upper bound for the controller.")
    weight: float = Field(default=1.0, ge=0.0, le=1.0, description="Initial share of traffic.")
    max_ongoing_requests: int = Field(
        default=64, ge=1, le=4096, description="Requests one replica accepts at once (Serve's bound)."
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)

    @model_validator(mode="after")
    def _replica_bounds(self) -> VariantConfig:
        if not self.min_replicas <= self.num_replicas <= self.max_replicas:
            raise ValueError(
                f"variant {self.name!r}: need min_replicas <= num_replicas <= max_replicas, "
                f"got {self.min_replicas} <= {self.num_replicas} <= {self.max_replicas}"
            )
        if self.tp_size > 1 and self.num_cpus_per_rank < 1:
            raise ValueError(
                f"variant {self.name!r}: num_cpus_per_rank ({self.num_cpus_per_rank:g}) must be >= 1 with "
                f"tp_size {self.tp_size}: each rank is a process running torch, placed in its own bundle"
            )
        if self.device == "cpu" and self.num_cpus_per_rank <= 0:
            raise ValueError(
                f"variant {self.name!r}: num_cpus_per_rank must be > 0 on device 'cpu' (got "
                f"{self.num_cpus_per_rank:g}): a rank's placement group bundle must reserve something"
            )
        if self.quantization.startswith("bnb") and self.source is not None:
            raise ValueError(
                f"variant {self.name!r}: quantization={self.quantization!r} applies at load time to "
                "model.source; a variant directory (source) is already compressed"
            )
        return self


class RouterConfig(_Strict):
    """The ingress: admission, variant choice, replica choice."""

    max_in_flight: int = Field(
        default=64, ge=1, le=100_000, description="Requests admitted at once; past it the router answers 429."
    )
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="Retry-After sent with 429.")
    request_timeout_s: float = Field(
        default=300.0, gt=0.0, le=86400.0, description="A request running longer gets 504 and is aborted."
    )
    affinity: Literal["session", "prefix", "none"] = Field(
        default="prefix",
        description="Replica choice: by x-session-id, else by prompt-prefix hash ('prefix'), or never.",
    )
    prefix_chars: int = Field(
        default=256, ge=1, le=65536, description="Prompt characters hashed for prefix affinity."
    )
    num_replicas: int = Field(default=1, ge=1, le=64, description="Router replicas.")
    api_keys_env: str | None = Field(
        default=API_KEYS_ENV,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        max_length=128,
        description="Environment variable holding comma-separated API keys. When it holds a key, every HTTP "
        "request but /health needs 'Authorization: Bearer <key>' (else 401); unset or empty: no keys. "
        "null: never read. In Kubernetes it is filled from the Secret (kubernetes.secrets).",
    )
    protect_ops_endpoints: bool = Field(
        default=True,
        description="With API keys set, /metrics, /controller/decisions, /v1/sloserve/stats and the OpenAPI "
        "docs need a key too; false leaves them open.",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, le=1024**3,
        description="Largest HTTP request body; a larger one gets 413 before it is read.",
    )
    max_prompt_chars: int = Field(
        default=262_144, ge=16, le=64 * 1024**2,
        description="Most characters in a prompt (all chat messages together), or token ids in a token "
        "prompt; checked before tokenizing (400).",
    )

    def api_keys(self, environ: Mapping[str, str] | None = None) -> frozenset[str]:
        """The API keys from `api_keys_env` (comma-separated, blanks ignored); empty: no authentication."""
        if self.api_keys_env is None:
            return frozenset()
        raw = (os.environ if environ is None else environ).get(self.api_keys_env, "")
        return frozenset(key.strip() for key in raw.split(",") if key.strip())


class SLOTarget(_Strict):
    """Latency targets (p95) of one request class; unset targets are not checked."""

    ttft_p95_ms: float | None = Field(default=None, gt=0.0, le=3_600_000.0)
    tpot_p95_ms: float | None = Field(default=None, gt=0.0, le=600_000.0)
    e2e_p95_ms: float | None = Field(default=None, gt=0.0, le=86_400_000.0)

    @model_validator(mode="after")
    def _at_least_one(self) -> SLOTarget:
        if self.ttft_p95_ms is None and self.tpot_p95_ms is None and self.e2e_p95_ms is None:
            raise ValueError("an SLO class needs at least one of ttft_p95_ms, tpot_p95_ms, e2e_p95_ms")
        return self


class SLOConfig(_Strict):
    """Latency SLO per request class; the class comes from a header, else the default."""

    classes: dict[str, SLOTarget] = Field(
        default_factory=lambda: {
            "interactive": SLOTarget(ttft_p95_ms=1000.0, tpot_p95_ms=150.0),
            "batch": SLOTarget(e2e_p95_ms=60_000.0),
        }
    )
    default_class: str = Field(default="interactive")
    class_header: str = Field(default="x-sloserve-slo-class", pattern=r"^[a-z0-9-]+$")

    @model_validator(mode="after")
    def _default_exists(self) -> SLOConfig:
        if self.default_class not in self.classes:
            raise ValueError(
                f"default_class {self.default_class!r} is not one of the classes {sorted(self.classes)}"
            )
        return self


class ControllerConfig(_Strict):
    """The SLO controller: how often it decides and how cautiously."""

    enabled: bool = Field(default=False, description="Run the SLOController deployment.")
    manifest: str | None = Field(default=None, description="Path of variants.json (measured variants).")
    interval_s: float = Field(default=5.0, gt=0.0, le=3600.0, description="Seconds between decisions.")
    window_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="Latency window the policy reads.")
    restore_hold_s: float = Field(default=60.0, ge=0.0, le=86400.0, description="Calm time before restoring.")
    quality_floor: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Least traffic-weighted quality (agreement) vs full."
    )
    max_total_replicas: int = Field(default=4, ge=1, le=4096, description="Replica budget over all variants.")
    recent_window_s: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="Short window of arrivals that detects bursts and steps."
    )
    min_samples: int = Field(
        default=20, ge=1, le=100_000, description="Finished requests a variant needs before its percentiles count."
    )
    target_utilization: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Planned load as a share of a replica's capacity under the SLO."
    )
    restore_utilization: float = Field(
        default=0.65,
        gt=0.0,
        le=1.0,
        description="Restore quality only if the restored mix fits at this share of capacity (hysteresis band).",
    )
    degrade_at_ratio: float = Field(
        default=0.9,
        gt=0.0,
        le=10.0,
        description="Observed p95 / target, or predicted load / capacity, at which the SLO is at risk (degrade).",
    )
    restore_below_ratio: float = Field(
        default=0.6, gt=0.0, le=10.0, description="Observed p95 / target under which restoring is allowed."
    )
    restore_step: float = Field(
        default=0.25, gt=0.0, le=1.0, description="Most traffic share moved back to better variants per decision."
    )
    scale_down_hold_s: float = Field(
        default=300.0, ge=0.0, le=86400.0, description="Calm time after a burst or scaling before removing a replica."
    )
    replica_cold_start_s: float = Field(
        default=30.0, ge=0.0, le=86400.0, description="Expected time from adding a replica to it serving."
    )
    burst_ratio: float = Field(
        default=1.5, ge=1.0, le=100.0, description="Recent / long-run arrival rate above which load is a burst."
    )
    quality_budget: float = Field(
        default=0.02, ge=0.0, le=1.0, description="Mean quality loss vs full allowed over quality_budget_window_s."
    )
    quality_budget_window_s: float = Field(
        default=3600.0, gt=0.0, le=7 * 86400.0, description="Horizon of the quality budget (a leaky bucket)."
    )

    @model_validator(mode="after")
    def _hysteresis_bands(self) -> ControllerConfig:
        if self.target_utilization >= self.degrade_at_ratio:
            raise ValueError(
                f"target_utilization ({self.target_utilization}) must be below "
                f"degrade_at_ratio ({self.degrade_at_ratio}), or every plan would be at risk"
            )
        if self.restore_utilization >= self.target_utilization:
            raise ValueError(
                f"restore_utilization ({self.restore_utilization}) must be below "
                f"target_utilization ({self.target_utilization})"
            )
        if self.restore_below_ratio >= self.degrade_at_ratio:
            raise ValueError(
                f"restore_below_ratio ({self.restore_below_ratio}) must be below "
                f"degrade_at_ratio ({self.degrade_at_ratio})"
            )
        if self.recent_window_s > self.window_s:
            raise ValueError(f"recent_window_s ({self.recent_window_s}) must be <= window_s ({self.window_s})")
        return self


class ClusterConfig(_Strict):
    """Where it runs: the local Ray or an existing cluster, and the HTTP endpoint."""

    address: str | None = Field(default=None, description="Ray address; none starts a local Ray.")
    http_host: str = Field(default="127.0.0.1", description="Serve HTTP host.")
    http_port: int = Field(default=8000, ge=1, le=65535, description="Serve HTTP port.")
    num_cpus: int | None = Field(default=None, ge=1, le=4096, description="CPUs of a local Ray (default: all).")
    app_name: str = Field(default="sloserve", pattern=r"^[a-z0-9][a-z0-9-]{0,46}$")
    route_prefix: str = Field(default="/", pattern=r"^/")
    graceful_shutdown_timeout_s: float = Field(
        default=30.0, ge=0.0, le=3600.0,
        description="On a redeploy or scale-down a replica takes no new requests and lets those in flight finish "
        "for up to this long (graceful drain) before it stops.",
    )
    max_surge_percent: int = Field(
        default=100, ge=0, le=100,
        description="Extra replicas (% of each deployment's count) during a redeploy: replacements start and "
        "become ready before old replicas stop, so a redeploy never leaves a deployment without one.",
    )


_DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_QUANTITY = r"^[1-9][0-9]*(Mi|Gi|Ti)$"


class SecretEnvConfig(_Strict):
    """An environment variable of the Ray pods filled from a Kubernetes Secret key, never inline."""

    env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$", max_length=128, description="Variable name in the pods.")
    secret_name: str = Field(pattern=_DNS1123_SUBDOMAIN, max_length=253, description="Secret in the namespace.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key inside the Secret.")
    optional: bool = Field(default=True, description="Start the pods even when the Secret or key is missing.")


class TolerationConfig(_Strict):
    """A pod toleration, e.g. of the taint that keeps other pods off GPU nodes."""

    key: str = Field(min_length=1, max_length=316)
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class WorkerGroupConfig(_Strict):
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


class PodSecurityConfig(_Strict):
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


class KubernetesConfig(_Strict):
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


class AppConfig(_Strict):
    """Root configuration."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    variants: list[VariantConfig] = Field(
        default_factory=lambda: [VariantConfig(name="full")], min_length=1, max_length=32
    )
    router: RouterConfig = Field(default_factory=RouterConfig)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> AppConfig:
        names = [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variants: names must be unique, repeated: {repeated}")
        if sum(v.weight for v in self.variants) <= 0.0:
            raise ValueError("variants: at least one variant needs weight > 0")
        for v in self.variants:
            if v.engine.max_num_batched_tokens < v.engine.max_num_seqs:
                raise ValueError(
                    f"variant {v.name!r}: engine.max_num_batched_tokens ({v.engine.max_num_batched_tokens}) "
                    f"must be >= engine.max_num_seqs ({v.engine.max_num_seqs})"
                )
        total_min = sum(v.min_replicas for v in self.variants)
        if self.controller.enabled and total_min > self.controller.max_total_replicas:
            raise ValueError(
                f"controller.max_total_replicas ({self.controller.max_total_replicas}) is below the "
                f"sum of min_replicas ({total_min})"
            )
        return self

    def variant(self, name: str) -> VariantConfig:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r} (have {[v.name for v in self.variants]})")


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field path and the value given."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "<root>"
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{where}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any] | None, origin: str = "<config>") -> AppConfig:
    try:
        return AppConfig.model_validate(raw or {})
    except ValidationError as e:
        raise ConfigError(f"invalid configuration in {origin}:\n{describe_validation_error(e)}") from e


def load_config(path: str | Path | None = None) -> AppConfig:
    """Load and validate a YAML config; None gives the built-in defaults."""
    if path is None:
        return AppConfig()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(raw).__name__}")
    return parse_config(raw, str(path))
