"""Rendering: deterministic, no drift from the committed k8s/, sized from the config, secrets by reference."""

from __future__ import annotations

import json

import pytest
import yaml

from cluster.k8s.render import Rendered, render
from inference.schema.config import SERVE_FAST_PATH_ENV, AppConfig, ConfigError
from tests.k8s.conftest import PROFILE_CONFIGS, ROOT, config_with, render_profile

GPU_VARIANTS = [
    {"name": "big", "device": "cuda", "tp_size": 2, "num_cpus_per_rank": 2, "min_replicas": 1, "num_replicas": 1,
     "max_replicas": 3},
    {"name": "small", "device": "cuda", "tp_size": 1, "num_cpus_per_rank": 1, "min_replicas": 0, "num_replicas": 1,
     "max_replicas": 2, "weight": 0.0},
]


def _serve_app(rendered: Rendered) -> dict:
    return yaml.safe_load(rendered.rayservice["spec"]["serveConfigV2"])["applications"][0]


def _worker_group(rendered: Rendered, name: str) -> dict:
    groups = rendered.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return next(g for g in groups if g["groupName"] == name)


@pytest.mark.parametrize("profile", sorted(PROFILE_CONFIGS))
def test_rendering_is_deterministic(profile: str) -> None:
    assert render_profile(profile).files == render_profile(profile).files


@pytest.mark.parametrize("profile", sorted(PROFILE_CONFIGS))
def test_committed_manifests_equal_a_fresh_render(profile: str) -> None:
    out_dir = ROOT / "k8s" / profile
    files = render_profile(profile).files
    fix = f"re-render: sloserve render-k8s --config {PROFILE_CONFIGS[profile]} --profile {profile}"
    for relative, text in files.items():
        assert (out_dir / relative).read_text() == text, f"k8s/{profile}/{relative} drifted; {fix}"
    committed = {str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()}
    assert committed == set(files), f"stale files in k8s/{profile}: {sorted(committed - set(files))}"


def test_tp_size_2_renders_matching_bundles_and_gpus() -> None:
    rendered = render(config_with("cluster/configs/gpu.yaml", variants=GPU_VARIANTS), "gpu-prod", "test")
    deployments = {d["name"]: d for d in _serve_app(rendered)["deployments"]}
    assert deployments["llm-big"]["placement_group_bundles"] == [{"CPU": 2.0, "GPU": 1}, {"CPU": 2.0, "GPU": 1}]
    assert deployments["llm-small"]["placement_group_bundles"] == [{"CPU": 1.0, "GPU": 1}]
    assert {d["placement_group_strategy"] for n, d in deployments.items() if n.startswith("llm-")} == {"STRICT_PACK"}
    # rank 0 runs in the replica actor: it holds bundle 0, its GPU included
    assert deployments["llm-big"]["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1}
    assert deployments["llm-small"]["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    gpu = _worker_group(rendered, "gpu-workers")
    resources = gpu["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "2"
    assert gpu["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # min: 1 replica x 2 GPUs -> 1 pod; max: 3 big (1 per pod) + 2 small (2 per pod) -> 4 pods
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (1, 2, 4)


def test_gpu_pod_smaller_than_a_replica_is_rejected_naming_the_field() -> None:
    config = config_with("cluster/configs/gpu.yaml", variants=GPU_VARIANTS, kubernetes={"gpu_group": {"num_gpus": 1}})
    with pytest.raises(ConfigError, match=r"kubernetes\.gpu_group\.num_gpus \(1\) is below variant 'big' tp_size"):
        render(config, "gpu-prod", "test")


def test_explicit_max_workers_below_min_replicas_is_rejected() -> None:
    config = config_with("cluster/configs/gpu.yaml", kubernetes={"gpu_group": {"max_workers": 0}})
    with pytest.raises(ConfigError, match=r"kubernetes\.gpu_group\.max_workers \(0\) cannot hold"):
        render(config, "gpu-prod", "test")


def test_profile_must_fit_the_variants() -> None:
    with pytest.raises(ConfigError, match="profile cpu-dev has no GPUs"):
        render(config_with("cluster/configs/gpu.yaml"), "cpu-dev", "test")
    with pytest.raises(ConfigError, match="gpu-prod needs at least one variant with device 'cuda'"):
        render(config_with("cluster/configs/local.yaml"), "gpu-prod", "test")


def test_config_file_overrides_the_profile_preset_key_by_key() -> None:
    overrides = {"image": "example.org/sloserve:test", "gpu_group": {"memory": "32Gi"}}
    rendered = render(config_with("cluster/configs/gpu.yaml", kubernetes=overrides), "gpu-prod", "test")
    gpu = _worker_group(rendered, "gpu-workers")["template"]["spec"]
    assert gpu["containers"][0]["image"] == "example.org/sloserve:test"
    assert gpu["containers"][0]["resources"]["limits"]["memory"] == "32Gi"
    assert gpu["containers"][0]["resources"]["limits"]["cpu"] == "8"  # kept from the gpu-prod preset
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_serve_config_carries_the_whole_config(rendered: Rendered) -> None:
    app = _serve_app(rendered)
    embedded = AppConfig.model_validate(app["args"]["config"])
    assert app["import_path"] == "deployments.app:app"
    assert app["name"] == embedded.cluster.app_name and app["route_prefix"] == embedded.cluster.route_prefix
    assert embedded.cluster.http_host == "0.0.0.0"
    assert embedded.kubernetes == rendered.kubernetes
    names = [d["name"] for d in app["deployments"]]
    expected = ["router", *[f"llm-{v.name}" for v in embedded.variants]]
    assert names == expected + (["slo-controller"] if embedded.controller.enabled else [])
    assert app.get("external_scaler_enabled", False) is embedded.controller.enabled


def test_head_runs_no_replicas_and_autoscaling_is_in_tree(rendered: Rendered) -> None:
    spec = rendered.rayservice["spec"]
    assert spec["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert spec["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    assert int(rendered.rayservice["metadata"]["annotations"]["ray.io/initializing-timeout"]) >= 1800


def test_probes_tolerate_long_model_loads(rendered: Rendered) -> None:
    cluster = rendered.rayservice["spec"]["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        container = pod["template"]["spec"]["containers"][0]
        liveness, readiness = container["livenessProbe"], container["readinessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 600, "10 min before a restart"
        assert liveness["timeoutSeconds"] >= 10 and readiness["timeoutSeconds"] >= 10
    worker_readiness = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert "/-/healthz" in worker_readiness["exec"]["command"][-1], "workers take traffic once their proxy is up"


def test_secrets_come_only_from_secret_references(rendered: Rendered) -> None:
    text = "\n".join(rendered.files.values())
    assert "kind: Secret\n" not in text
    cluster = yaml.safe_load(rendered.files["rayservice.yaml"])["spec"]["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        for name in ("HF_TOKEN", "SLOSERVE_API_KEYS"):
            assert "value" not in env[name]
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "sloserve-secrets"


def test_inline_secret_in_runtime_env_is_rejected() -> None:
    with pytest.raises(ConfigError, match="runtime_env_vars: 'HF_TOKEN' looks like a secret"):
        config_with("cluster/configs/local.yaml", kubernetes={"runtime_env_vars": {"HF_TOKEN": "hf_abc"}})


def test_dashboard_charts_every_metric_of_the_design(rendered: Rendered) -> None:
    dashboard = json.loads(rendered.files["monitoring/sloserve-dashboard.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ("requests_total", "ttft_seconds_bucket", "tpot_seconds_bucket", "e2e_seconds_bucket",
                   "queue_depth", "kv_blocks_used_ratio", "tokens_generated_total", "controller_weight",
                   "controller_decisions_total", "rejected_total"):
        assert f"ray_sloserve_{metric}" in exprs, metric
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    configmap = yaml.safe_load(rendered.files["monitoring/grafana-dashboard-configmap.yaml"])
    assert json.loads(configmap["data"]["sloserve-dashboard.json"]) == dashboard


def test_every_pod_gets_the_api_keys_variable_the_router_reads_from_the_secret(rendered: Rendered) -> None:
    """The name the router reads (router.api_keys_env, default SLOSERVE_API_KEYS) is the one the
    Secret fills in every pod the router may run in, under the key k8s/README.md tells users to create."""
    embedded = AppConfig.model_validate(_serve_app(rendered)["args"]["config"])
    assert embedded.router.api_keys_env == "SLOSERVE_API_KEYS"
    cluster = rendered.rayservice["spec"]["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        ref = env[embedded.router.api_keys_env]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("sloserve-secrets", "api-keys")
    readme = (ROOT / "k8s" / "README.md").read_text()
    assert "create secret generic sloserve-secrets" in readme and "--from-literal=api-keys=" in readme


def test_api_keys_variable_without_a_secret_is_rejected() -> None:
    secrets = [{"env": "HF_TOKEN", "secret_name": "sloserve-secrets", "key": "hf-token"}]
    config = config_with(PROFILE_CONFIGS["cpu-dev"], kubernetes={"secrets": secrets})
    with pytest.raises(ConfigError, match=r"router\.api_keys_env is 'SLOSERVE_API_KEYS' but no kubernetes\.secrets"):
        render(config, "cpu-dev", "test")
    render(config_with(PROFILE_CONFIGS["cpu-dev"], kubernetes={"secrets": secrets}, router={"api_keys_env": None}),
           "cpu-dev", "test")


def test_every_ray_process_of_a_pod_starts_with_serve_fast_path(rendered: Rendered) -> None:
    """Ray Serve reads its settings once per process, at start: they are container env (head and
    workers: proxies, controller and replicas inherit them), not the app's runtime_env (replicas only)."""
    cluster = rendered.rayservice["spec"]["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert {k: env.get(k) for k in SERVE_FAST_PATH_ENV} == SERVE_FAST_PATH_ENV
    assert not set(SERVE_FAST_PATH_ENV) & set(_serve_app(rendered).get("runtime_env", {}).get("env_vars", {}))


def test_serve_fast_path_off_leaves_serve_defaults() -> None:
    cluster = {"serve_fast_path": False}
    rendered = render(config_with(PROFILE_CONFIGS["cpu-dev"], cluster=cluster), "cpu-dev", "test")
    head = rendered.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert not set(SERVE_FAST_PATH_ENV) & {e["name"] for e in head["env"]}
