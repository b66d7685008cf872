"""Shared fixtures of the k8s tests: the committed configs and a fresh render of each profile."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.k8s.render import Rendered, render
from inference.schema.config import AppConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
# profile -> the committed config its manifests under k8s/<profile>/ are rendered from
PROFILE_CONFIGS = {"cpu-dev": "cluster/configs/local.yaml", "gpu-prod": "cluster/configs/gpu.yaml"}


def render_profile(profile: str) -> Rendered:
    source = PROFILE_CONFIGS[profile]
    return render(load_config(ROOT / source), profile, source)


def config_with(source: str, **sections: Any) -> AppConfig:
    """A committed config with some top-level sections replaced (raw YAML dicts)."""
    raw = yaml.safe_load((ROOT / source).read_text())
    raw.update(copy.deepcopy(sections))
    return parse_config(raw, "test")


@pytest.fixture(scope="module", params=sorted(PROFILE_CONFIGS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render_profile(request.param)
