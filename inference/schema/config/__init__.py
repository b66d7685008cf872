"""The one configuration of a sloserve deployment: `AppConfig`, loaded from YAML.

Every part of the system reads its own section: the app builder (model, variants, router),
the SLO controller (slo, controller), the local launcher and k8s renderer (cluster). Models
forbid unknown keys, bound every number, and check cross-field rules with messages that name
the values, so a bad file fails before any model is loaded. Pure pydantic: no Ray, no torch.
Secrets never live in the file: it names the environment variable that holds them, and
`RouterConfig.api_keys()` is the one place that variable is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from inference.schema.config.base import API_KEYS_ENV, DEFAULT_MODEL, ConfigError, StrictModel
from inference.schema.config.engine import EngineConfig, EngineSettings, ExecutionSettings
from inference.schema.config.kubernetes import (
    KubernetesConfig,
    PodSecurityConfig,
    SecretEnvConfig,
    TolerationConfig,
    WorkerGroupConfig,
)
from inference.schema.config.serving import (
    SERVE_FAST_PATH_ENV,
    ClusterConfig,
    ModelConfig,
    RouterConfig,
    VariantConfig,
)
from inference.schema.config.slo import ControllerConfig, SLOConfig, SLOTarget
from inference.schema.validation import describe_validation_error

__all__ = [
    "API_KEYS_ENV", "DEFAULT_MODEL", "SERVE_FAST_PATH_ENV", "AppConfig", "ClusterConfig", "ConfigError", "ControllerConfig",
    "EngineConfig", "EngineSettings", "ExecutionSettings", "KubernetesConfig", "ModelConfig", "PodSecurityConfig",
    "RouterConfig", "SLOConfig", "SLOTarget", "SecretEnvConfig", "StrictModel", "TolerationConfig", "VariantConfig",
    "WorkerGroupConfig", "describe_validation_error", "load_config", "parse_config",
]


class AppConfig(StrictModel):
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
    return _resolve_variant_sources(parse_config(raw, str(path)), path)


def _resolve_variant_sources(config: AppConfig, path: Path) -> AppConfig:
    """A variant `source` written as a relative path ('./x', '../x') is read beside the config file,
    like `controller.manifest`, so the config works from any working directory."""
    base = path.resolve().parent
    variants = [
        v.model_copy(update={"source": str((base / v.source).resolve())})
        if v.source is not None and v.source.startswith(("./", "../"))
        else v
        for v in config.variants
    ]
    return config.model_copy(update={"variants": variants})
