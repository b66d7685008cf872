"""`sloserve render-k8s`: writes a validated render, checks for drift, names the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from tests.k8s.conftest import ROOT


def test_render_k8s_writes_the_profile_and_check_detects_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "cluster" / "configs" / "gpu.yaml")
    out = tmp_path / "gpu"
    assert main(["render-k8s", "--config", config, "--out", str(out)]) == 0
    assert "profile gpu-prod" in capsys.readouterr().out
    rayservice = yaml.safe_load((out / "rayservice.yaml").read_text())
    assert rayservice["kind"] == "RayService"
    assert (out / "monitoring" / "podmonitor.yaml").is_file()
    assert main(["render-k8s", "--config", config, "--out", str(out), "--check"]) == 0
    (out / "namespace.yaml").write_text("# edited by hand\n")
    assert main(["render-k8s", "--config", config, "--out", str(out), "--check"]) == 1
    assert "namespace.yaml" in capsys.readouterr().err


def test_render_k8s_names_the_bad_field_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load((ROOT / "cluster" / "configs" / "local.yaml").read_text())
    raw["kubernetes"] = {"name": "x" * 48}
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["render-k8s", "--config", str(config), "--out", str(out)]) == 2
    assert "kubernetes.name" in capsys.readouterr().err
    assert not out.exists()


def test_render_k8s_rejects_a_profile_without_the_needed_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "cluster" / "configs" / "gpu.yaml")
    assert main(["render-k8s", "--config", config, "--profile", "cpu-dev", "--out", "unused"]) == 2
    assert "profile cpu-dev has no GPUs" in capsys.readouterr().err
