"""Offline validation: kubernetes-validate, the strict RayService/PodMonitor schemas, Ray's Serve schema,
and KubeRay's own rules. Each check is shown to pass on the render and to catch a broken manifest."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cluster.k8s.render import Rendered
from cluster.k8s.schema import PODMONITOR_SCHEMA, RAYSERVICE_SCHEMA
from cluster.k8s.validate import kuberay_rule_errors, schema_errors, serve_config_errors, validate_rendered

K8S_VERSION = "1.33"


def _pod_templates(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]


def _as_pod_template(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}


def _with_serve_config(rayservice: dict[str, Any], edit: Any) -> dict[str, Any]:
    broken = copy.deepcopy(rayservice)
    serve = yaml.safe_load(broken["spec"]["serveConfigV2"])
    edit(serve)
    broken["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    return broken


def test_rendered_manifests_pass_every_offline_check(rendered: Rendered) -> None:
    assert validate_rendered(rendered) == []


def test_standard_kinds_validate_with_kubernetes_validate(rendered: Rendered) -> None:
    for document in rendered.standard_objects:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    for template in _pod_templates(rendered.rayservice):
        kubernetes_validate.validate(_as_pod_template(template), K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_an_unknown_container_field(rendered: Rendered) -> None:
    template = copy.deepcopy(_pod_templates(rendered.rayservice)[-1])
    template["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicyy"):
        kubernetes_validate.validate(_as_pod_template(template), K8S_VERSION, strict=True)


def test_strict_schema_rejects_a_typo_in_the_rayservice(rendered: Rendered) -> None:
    broken = copy.deepcopy(rendered.rayservice)
    cluster = broken["spec"]["rayClusterConfig"]
    cluster["enableInTreeAutoscalng"] = cluster.pop("enableInTreeAutoscaling")
    errors = schema_errors(broken, RAYSERVICE_SCHEMA)
    assert any("spec.rayClusterConfig" in e and "'enableInTreeAutoscalng' was unexpected" in e for e in errors)


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [
        (("spec",), "upgradeStrategy", {"type": "Recreate"}),
        (("spec", "rayClusterConfig", "autoscalerOptions"), "upscalingMode", "Fast"),
        (("spec", "rayClusterConfig", "headGroupSpec", "rayStartParams"), "num-cpus", 0),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0), "maxReplicas", -1),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0), "replica", 1),
    ],
)
def test_strict_schema_rejects_wrong_values(rendered: Rendered, path: tuple[Any, ...], key: str, value: Any) -> None:
    broken = copy.deepcopy(rendered.rayservice)
    node = broken
    for step in path:
        node = node[step]
    node[key] = value
    assert schema_errors(broken, RAYSERVICE_SCHEMA)


def test_pod_monitor_matches_its_strict_schema_and_rejects_typos(rendered: Rendered) -> None:
    assert schema_errors(rendered.pod_monitor, PODMONITOR_SCHEMA) == []
    broken = copy.deepcopy(rendered.pod_monitor)
    broken["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert any("'intervall' was unexpected" in e for e in schema_errors(broken, PODMONITOR_SCHEMA))


def test_serve_config_validates_with_rays_schema(rendered: Rendered) -> None:
    from ray.serve.schema import ServeApplicationSchema

    assert "external_scaler_enabled" in ServeApplicationSchema.model_fields
    assert serve_config_errors(rendered.rayservice["spec"]["serveConfigV2"]) == []


def test_serve_config_typos_and_bad_values_are_caught(rendered: Rendered) -> None:
    def typo(serve: dict[str, Any]) -> None:
        serve["applications"][0]["deployments"][0]["num_replica"] = 2

    def bad_import(serve: dict[str, Any]) -> None:
        serve["applications"][0]["import_path"] = "deployments:app:app"

    errors = serve_config_errors(_with_serve_config(rendered.rayservice, typo)["spec"]["serveConfigV2"])
    assert errors == ["serveConfigV2.applications[0].deployments[0].num_replica: not a field of Ray's DeploymentSchema"]
    errors = serve_config_errors(_with_serve_config(rendered.rayservice, bad_import)["spec"]["serveConfigV2"])
    assert any("import_path" in e for e in errors)


def _break(rendered: Rendered, edit: Any) -> list[str]:
    broken = copy.deepcopy(rendered.rayservice)
    edit(broken)
    return kuberay_rule_errors(broken)


def test_kuberay_rules_hold_and_catch_violations(rendered: Rendered) -> None:
    assert kuberay_rule_errors(rendered.rayservice) == []

    def long_name(rs: dict[str, Any]) -> None:
        rs["metadata"]["name"] = "s" * 48

    def not_dns1035(rs: dict[str, Any]) -> None:
        rs["metadata"]["name"] = "1-sloserve"

    def min_above_max(rs: dict[str, Any]) -> None:
        rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(minReplicas=3, replicas=3, maxReplicas=2)

    def head_with_cpus(rs: dict[str, Any]) -> None:
        rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"] = {}

    def inline_secret(rs: dict[str, Any]) -> None:
        container = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        container["env"].append({"name": "HF_TOKEN", "value": "hf_inline"})

    assert any("longer than 47" in e for e in _break(rendered, long_name))
    assert any("not a DNS-1035 label" in e for e in _break(rendered, not_dns1035))
    assert any("minReplicas <= replicas <= maxReplicas, got 3 <= 3 <= 2" in e for e in _break(rendered, min_above_max))
    assert any("num-cpus" in e for e in _break(rendered, head_with_cpus))
    assert any("env.HF_TOKEN: secrets must come from a secretKeyRef" in e for e in _break(rendered, inline_secret))


def test_gpu_rules_catch_unequal_requests_and_pods_smaller_than_a_replica() -> None:
    from tests.k8s.conftest import render_profile

    rendered = render_profile("gpu-prod")

    def unequal_gpus(rs: dict[str, Any]) -> None:
        gpu = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
        gpu["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1"

    def one_gpu_pods(rs: dict[str, Any]) -> None:
        resources = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]
        resources["requests"]["nvidia.com/gpu"] = resources["limits"]["nvidia.com/gpu"] = "1"

    assert any("nvidia.com/gpu requests must equal limits" in e for e in _break(rendered, unequal_gpus))
    errors = _break(rendered, one_gpu_pods)
    assert any("'llm-full': a replica needs 4 CPUs and 2 GPUs on one pod" in e for e in errors)
