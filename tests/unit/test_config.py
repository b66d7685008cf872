"""Configuration: the shipped configs load; bad ones fail before any model loads, naming the field."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.schema.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "cluster" / "configs" / name)
    assert config.variants and sum(v.weight for v in config.variants) > 0


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"variants": [{"name": "full", "tp_size": 0}]}, "variants.0.tp_size"),
        ({"variants": [{"name": "Full!"}]}, "variants.0.name"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"variants": [{"name": "a", "weight": 0.0}]}, "weight > 0"),
        ({"variants": [{"name": "a", "num_replicas": 3, "max_replicas": 2}]}, "num_replicas"),
        ({"variants": [{"name": "a", "kernel_inject": True}]}, "kernel_inject"),
        ({"variants": [{"name": "a", "tp_size": 2, "num_cpus_per_rank": 0.5}]}, "num_cpus_per_rank (0.5) must be >= 1"),
        ({"variants": [{"name": "a", "num_cpus_per_rank": 0}]}, "num_cpus_per_rank must be > 0"),
        ({"variants": [{"name": "a", "device": "cuda", "tp_size": 2, "num_gpus_per_rank": 0.5}]},
         "num_gpus_per_rank (0.5) below 1 needs tp_size 1"),
        ({"variants": [{"name": "a", "device": "cuda", "num_gpus_per_rank": 0.5}]},
         "engine.gpu_memory_utilization (0.9) exceeds its GPU share num_gpus_per_rank (0.5)"),
        ({"variants": [{"name": "a", "engine": {"gpu_memory_utilization": 1.5}}]}, "variants.0.engine.gpu_memory_utilization"),
        ({"variants": [{"name": "a", "engine": {"attention": "flash"}}]}, "variants.0.engine.attention"),
        ({"router": {"max_in_flight": 0}}, "router.max_in_flight"),
        ({"router": {"max_in_fligth": 8}}, "router.max_in_fligth"),
        ({"slo": {"default_class": "gold"}}, "default_class"),
        ({"slo": {"classes": {"x": {}}}}, "at least one of"),
        ({"model": {"max_model_len": 1}}, "model.max_model_len"),
        ({"variants": [{"name": "a", "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 32}}]}, "max_num_batched_tokens"),
    ],
)
def test_bad_configs_name_the_field(raw: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "test.yaml")
    assert field in str(info.value), str(info.value)


def test_not_yaml_and_not_a_mapping_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_sloserve_up_with_a_bad_config_fails_fast_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants:\n  - name: full\n    tp_size: -1\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "up", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "variants.0.tp_size" in result.stderr
    assert time.monotonic() - started < 20  # no Ray, no model: it stops at the config


def test_sloserve_up_with_a_missing_config_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "up", "--config", str(missing)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert f"--config {missing}: no such file" in result.stderr


def test_default_config_is_the_packaged_one_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from cluster.commands.common import DEFAULT_CONFIG, load_or_exit

    monkeypatch.chdir(tmp_path)  # not the repository root
    config = load_or_exit(None)
    assert [v.name for v in config.variants] == [v.name for v in load_config(DEFAULT_CONFIG).variants]
    assert {"full", "int8-compute"} <= {v.name for v in config.variants} and config.controller.enabled
    assert f"config: {DEFAULT_CONFIG.resolve()}" in capsys.readouterr().out


def test_every_cli_subcommand_imports() -> None:
    from cluster.cli import COMMANDS, build_parser

    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert set(choices) == set(COMMANDS)  # type: ignore[arg-type]


def test_relative_variant_sources_are_read_beside_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "c.yaml"
    path.write_text("variants:\n  - name: full\n  - name: small\n    source: ../variants/distill-20\n"
                    "  - name: hub\n    source: org/model\n")
    monkeypatch.chdir(ROOT)  # not the config's folder
    config = load_config(path)
    assert config.variant("small").source == str((tmp_path / "variants" / "distill-20").resolve())
    assert config.variant("hub").source == "org/model"  # a hub id is not a path
    assert config.variant("full").source is None


def test_sloserve_up_says_how_to_build_a_missing_compressed_variant(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("variants:\n  - name: full\n  - name: small\n    source: ./variants/distill-20\n    weight: 0\n")
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "up", "--config", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stdout
    assert "variant small: model path not found" in result.stderr
    assert (f"sloserve compress --model packaged:smollm2-135m-instruct --methods distill-20 "
            f"--out {tmp_path / 'variants'}") in result.stderr
    assert "starting a local Ray" not in result.stdout  # it stops before Ray
