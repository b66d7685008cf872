"""Hardening of the rendered pods and the NetworkPolicy: non-root, no privilege escalation, no
capabilities, a read-only image with writable volumes where Ray writes, and from outside the
namespace only the serve port (the dashboard only for the KubeRay operator, GCS only inside)."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from cluster.k8s.network import ALL_PORTS, DASHBOARD_PORT, GCS_PORT, OPERATOR_LABELS, Source, admitted_ports
from cluster.k8s.rayservice import METRICS_PORT, labels
from cluster.k8s.render import Rendered, render
from cluster.k8s.validate import network_errors, security_errors
from tests.k8s.conftest import config_with

K8S_VERSION = "1.33"


def _pods(rendered: Rendered) -> list[dict[str, Any]]:
    cluster = rendered.rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]


def _ports(rendered: Rendered, source: Source, with_monitoring: bool = False) -> frozenset[int]:
    policies = rendered.network_policies if with_monitoring else rendered.network_policies[:1]
    return admitted_ports(policies, source, labels(rendered.kubernetes))


def test_every_pod_runs_as_non_root_without_privileges(rendered: Rendered) -> None:
    for pod in _pods(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["readOnlyRootFilesystem"] is True
    autoscaler = rendered.rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    assert autoscaler["allowPrivilegeEscalation"] is False and autoscaler["capabilities"] == {"drop": ["ALL"]}
    assert security_errors(rendered.rayservice) == []


def test_ray_writes_only_to_volumes(rendered: Rendered) -> None:
    for pod in _pods(rendered):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        for path in ("/tmp", "/home/ray/.cache"):
            assert "emptyDir" in volumes[mounts[path]], path
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_autoscaler_security_context_is_a_valid_core_security_context(rendered: Rendered) -> None:
    context = rendered.rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    template = {"spec": {"containers": [{"name": "autoscaler", "image": "x", "securityContext": context}]}}
    document = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("allowPrivilegeEscalation", True, "allowPrivilegeEscalation: must be false"),
        ("privileged", True, "privileged: must not be true"),
        ("capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]}, "capabilities: must drop ALL"),
        ("runAsUser", 0, "runAsUser: must be a non-zero UID"),
    ],
)
def test_security_check_catches_a_weakened_container(rendered: Rendered, key: str, value: Any, message: str) -> None:
    broken = copy.deepcopy(rendered.rayservice)
    worker = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["securityContext"][key] = value
    assert any(message in e for e in security_errors(broken))


def test_from_outside_the_namespace_only_the_serve_port_is_reachable(rendered: Rendered) -> None:
    serve_port = rendered.serve_config["http_options"]["port"]
    for source in (Source("default"), Source("other", {"app.kubernetes.io/name": "kuberay-operator"})):
        assert _ports(rendered, source) == {serve_port}
    operator = Source(rendered.kubernetes.security.operator_namespace, dict(OPERATOR_LABELS))
    assert _ports(rendered, operator) == {serve_port, DASHBOARD_PORT}, "KubeRay deploys through the dashboard"
    assert GCS_PORT not in _ports(rendered, operator)
    assert _ports(rendered, Source(rendered.kubernetes.namespace)) == ALL_PORTS, "Ray's own pods talk freely"
    prometheus = Source(rendered.kubernetes.security.prometheus_namespace)
    assert _ports(rendered, prometheus) == {serve_port}
    assert _ports(rendered, prometheus, with_monitoring=True) == {serve_port, METRICS_PORT}
    assert network_errors(rendered) == []


def test_network_policy_validates_and_sits_in_the_kustomizations(rendered: Rendered) -> None:
    for policy in rendered.network_policies:
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    assert "networkpolicy.yaml" in rendered.files["kustomization.yaml"]
    assert "networkpolicy.yaml" in rendered.files["monitoring/kustomization.yaml"]


def test_network_check_catches_a_dashboard_open_to_everyone(rendered: Rendered) -> None:
    broken = copy.deepcopy(rendered)
    broken.network_policies[0]["spec"]["ingress"][2].pop("from")
    errors = network_errors(broken)
    assert any("only port 8000 may be reachable, got [8000, 8265]" in e for e in errors), errors


def test_security_settings_come_from_the_config() -> None:
    config = config_with("cluster/configs/local.yaml", kubernetes={
        "security": {"run_as_user": 2000, "read_only_root_filesystem": False, "network_policy": False}})
    rendered = render(config, "cpu-dev", "test")
    container = _pods(rendered)[0]["containers"][0]["securityContext"]
    assert container["runAsUser"] == 2000 and container["readOnlyRootFilesystem"] is False
    assert rendered.network_policies == [] and "networkpolicy.yaml" not in rendered.files
    with pytest.raises(Exception, match=r"run_as_user"):
        config_with("cluster/configs/local.yaml", kubernetes={"security": {"run_as_user": 0}})
