"""Profiles: presets of `KubernetesConfig` for a laptop cluster (`cpu-dev`) and GPU nodes (`gpu-prod`).

A profile supplies every Kubernetes value the config file leaves unset; fields set in the file's
`kubernetes:` section win (merged key by key, nested sections too). `resolve` returns the merged,
validated `KubernetesConfig`; `check_profile_fits` rejects a profile that cannot run the variants.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from cluster.k8s import PROFILES, RAY_VERSION
from inference.schema.config import AppConfig, ConfigError, KubernetesConfig, describe_validation_error

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-dev": {
        "image": "sloserve:0.1.0-py311-cpu",
        "image_pull_policy": "IfNotPresent",
        "head_num_cpus": 1,
        "head_memory": "4Gi",
        "cpu_group": {"num_cpus": 4, "memory": "8Gi"},
        "shm_size": "1Gi",
        "cache_size": "10Gi",
    },
    "gpu-prod": {
        "image": "registry.example.com/sloserve:0.1.0-py311-gpu",
        "image_pull_policy": "IfNotPresent",
        "head_num_cpus": 4,
        "head_memory": "16Gi",
        "cpu_group": {"num_cpus": 4, "memory": "8Gi"},
        "gpu_group": {
            "num_cpus": 8,
            "memory": "64Gi",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "shm_size": "16Gi",
        "cache_size": "100Gi",
    },
}

# Base images of k8s/Dockerfile per profile (the project image is built FROM these).
BASE_IMAGES = {
    "cpu-dev": f"rayproject/ray:{RAY_VERSION}-py311-cpu",
    "gpu-prod": f"rayproject/ray:{RAY_VERSION}-py311-gpu",
}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _explicit_fields(model: Any) -> dict[str, Any]:
    """The fields a config file set, recursively (pydantic's exclude_unset, nested models included)."""
    return dict(model.model_dump(mode="json", exclude_unset=True))


def infer_profile(config: AppConfig) -> str:
    """gpu-prod when any variant runs on CUDA, else cpu-dev."""
    return "gpu-prod" if any(v.device == "cuda" for v in config.variants) else "cpu-dev"


def check_profile_fits(config: AppConfig, profile: str) -> None:
    """Raise ConfigError when the profile is unknown or cannot host the configured variants."""
    if profile not in PROFILES:
        raise ConfigError(f"--profile: unknown profile {profile!r}, expected one of {list(PROFILES)}")
    cuda = [v.name for v in config.variants if v.device == "cuda"]
    if profile == "cpu-dev" and cuda:
        raise ConfigError(f"profile cpu-dev has no GPUs, but variants {cuda} have device 'cuda'")
    if profile == "gpu-prod" and not cuda:
        raise ConfigError("profile gpu-prod needs at least one variant with device 'cuda'")


def resolve(config: AppConfig, profile: str) -> KubernetesConfig:
    """The profile's preset overlaid with what the config file set under `kubernetes:`."""
    check_profile_fits(config, profile)
    merged = _deep_merge(PRESETS[profile], _explicit_fields(config.kubernetes))
    try:
        k8s = KubernetesConfig.model_validate(merged)
    except ValidationError as e:
        lines = "\n".join(f"kubernetes.{line}" for line in describe_validation_error(e).splitlines())
        raise ConfigError(f"invalid kubernetes settings (profile {profile}):\n{lines}") from e
    keys_env = config.router.api_keys_env
    if keys_env is not None and keys_env not in {s.env for s in k8s.secrets}:
        raise ConfigError(
            f"router.api_keys_env is {keys_env!r} but no kubernetes.secrets entry fills it: the pods would "
            "serve without API keys; add one (or set router.api_keys_env: null to run without keys)"
        )
    return k8s
