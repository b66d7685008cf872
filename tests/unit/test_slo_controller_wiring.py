"""The controller's wiring without a cluster: the manifest is found and checked by the app builder
before any model loads, and observations from several router replicas merge conservatively."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments.app import build_app, serve_run_options
from deployments.controller.slo_controller import load_manifest
from deployments.slo.merge import merge_latency, merge_observations
from deployments.slo.observation import LatencyStats, Observation, VariantLoad, VariantObservation
from inference.schema.config import AppConfig, ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "load_tests" / "traces" / "example_manifest.json"


def _config(manifest: str | None, variants: tuple[str, ...] = ("full", "int8")) -> AppConfig:
    return parse_config({
        "model": {"source": "/nonexistent/model-dir"},  # never loaded: building the app reads no model
        "variants": [{"name": n, "weight": 1.0 if i == 0 else 0.0, "min_replicas": 1 if i == 0 else 0}
                     for i, n in enumerate(variants)],
        "controller": {"enabled": True, "manifest": manifest},
    })


def test_relative_manifest_is_found_next_to_the_config_file_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "configs" / "variants.json")
    monkeypatch.chdir(tmp_path)
    path, manifest = load_manifest(_config("variants.json"), tmp_path / "configs" / "app.yaml")
    assert path == tmp_path / "configs" / "variants.json"
    assert {v.name for v in manifest.variants} >= {"full", "int8"}
    path, _ = load_manifest(_config("configs/variants.json"), None)  # else relative to the working directory
    assert path == tmp_path / "configs" / "variants.json"


@pytest.mark.parametrize(
    ("content", "manifest", "variants", "expected"),
    [
        (None, None, ("full", "int8"), "no manifest"),
        (None, "missing.json", ("full", "int8"), "missing.json' not found"),
        ("{not json", "bad.json", ("full", "int8"), "not valid JSON"),
        ('{"base": "m", "variants": []}', "bad.json", ("full", "int8"), "is invalid"),
        (EXAMPLE.read_text(), "ok.json", ("full", "nf4"), "['nf4'] are configured but not in"),
    ],
)
def test_a_bad_manifest_fails_the_app_builder_naming_the_field(
    tmp_path: Path, content: str | None, manifest: str | None, variants: tuple[str, ...], expected: str
) -> None:
    if content is not None and manifest is not None:
        (tmp_path / manifest).write_text(content)
    config = _config(str(tmp_path / manifest) if manifest else None, variants)
    with pytest.raises(ConfigError) as error:
        build_app(config)  # the model directory does not exist: the manifest fails first
    assert str(error.value).startswith("controller.manifest: ") and expected in str(error.value)


def test_serve_run_options_enable_external_scaling_only_with_the_controller() -> None:
    assert serve_run_options(_config(str(EXAMPLE)))["external_scaler_enabled"] is True
    assert serve_run_options(AppConfig())["external_scaler_enabled"] is False
    assert build_app(_config(str(EXAMPLE))) is not None


def _variant(n: int, p95_s: float, rate: float, queue: int) -> VariantObservation:
    stats = LatencyStats(num_requests=n, num_errors=1, ttft_p95_s=p95_s, e2e_mean_s=p95_s / 2, mean_output_tokens=10.0 * n)
    return VariantObservation("full", stats, {"interactive": stats}, rate, rate, rate, VariantLoad(2, 1, queue, 3))


def test_merged_observation_adds_rates_and_takes_the_worst_percentile() -> None:
    a = Observation(5.0, 30.0, 5.0, {"full": _variant(10, 0.2, 1.0, 0)})
    b = Observation(9.0, 30.0, 5.0, {"full": _variant(30, 0.5, 3.0, 4)})
    merged = merge_observations([a, b], now_s=100.0)
    full = merged.variants["full"]
    assert merged.now_s == 100.0 and merged.window_s == 30.0
    assert full.arrival_rate_rps == pytest.approx(4.0) and full.completion_rate_rps == pytest.approx(4.0)
    assert full.latency.num_requests == 40 and full.latency.num_errors == 2
    assert full.latency.ttft_p95_s == 0.5 and full.by_class["interactive"].ttft_p95_s == 0.5
    assert full.latency.e2e_mean_s == pytest.approx((10 * 0.1 + 30 * 0.25) / 40)
    assert full.latency.mean_output_tokens == pytest.approx((10 * 100 + 30 * 300) / 40)
    assert full.replicas == VariantLoad(2, 1, 4, 3)
    assert merge_observations([a], now_s=7.0) == Observation(7.0, 30.0, 5.0, a.variants)
    assert merge_latency([LatencyStats(), LatencyStats()]) == LatencyStats()


def test_example_manifest_matches_local_slo_config() -> None:
    from inference.schema.config import load_config

    config_path = ROOT / "cluster" / "configs" / "local-slo.yaml"
    config = load_config(config_path)
    path, manifest = load_manifest(config, config_path)
    assert config.controller.enabled and path.parent == config_path.parent
    assert json.loads(path.read_text())["base"] == manifest.base


def test_sloserve_up_refuses_a_missing_manifest_before_anything_starts(tmp_path: Path) -> None:
    config = _config("nowhere/variants.json").model_dump(mode="json", exclude_defaults=True)
    path = tmp_path / "slo.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "up", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "sloserve: controller.manifest: 'nowhere/variants.json' not found" in done.stderr
    assert "model " not in done.stdout and "starting a local Ray" not in done.stdout  # no model resolved
