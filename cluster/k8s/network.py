"""NetworkPolicies of the Ray pods, and a small evaluator of what they admit.

`build_network_policy` (the app's kustomization): pods of this RayService accept
- anything from pods of their own namespace (Ray's head, workers and autoscaler talk on many ports:
  GCS 6379, raylets, object managers, worker ports, dashboard agents);
- the serve port (HTTP) from anywhere: the one port reachable from outside the namespace;
- the dashboard port (8265, job submission and Serve's REST API) from the KubeRay operator only,
  which deploys `serveConfigV2` and reads the app's status through it.
`build_metrics_network_policy` (monitoring/, applied with the PodMonitor): the metrics port from
Prometheus's namespace. Policies add up, so the app's own policy stays the whole story without it.

`admitted_ports(policies, source)` answers "which ports of our pods can this client reach?" for the
subset of the NetworkPolicy API we emit (matchLabels selectors, numeric TCP ports); tests and
`validate.py` use it to check the promise above instead of re-reading the YAML by eye.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.k8s.rayservice import labels
from inference.schema.config import KubernetesConfig

DASHBOARD_PORT = 8265
GCS_PORT = 6379
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
OPERATOR_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}  # the operator's Helm chart
ALL_PORTS = frozenset({-1})  # a rule without `ports`: every port


def _tcp(port: int) -> dict[str, Any]:
    return {"protocol": "TCP", "port": port}


def _policy(k8s: KubernetesConfig, name: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": k8s.namespace, "labels": labels(k8s)},
        "spec": {"podSelector": {"matchLabels": labels(k8s)}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def build_network_policy(k8s: KubernetesConfig, serve_port: int) -> dict[str, Any]:
    operator = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: k8s.security.operator_namespace}},
        "podSelector": {"matchLabels": dict(OPERATOR_LABELS)},
    }
    return _policy(k8s, k8s.name, [
        {"from": [{"podSelector": {}}]},
        {"ports": [_tcp(serve_port)]},
        {"from": [operator], "ports": [_tcp(DASHBOARD_PORT)]},
    ])


def build_metrics_network_policy(k8s: KubernetesConfig, metrics_port: int) -> dict[str, Any]:
    prometheus = {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: k8s.security.prometheus_namespace}}}
    return _policy(k8s, f"{k8s.name}-metrics", [{"from": [prometheus], "ports": [_tcp(metrics_port)]}])


@dataclass(frozen=True)
class Source:
    """A client pod: its namespace (name and labels) and its own labels."""

    namespace: str
    pod_labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)

    def namespace_matches(self, selector: dict[str, Any]) -> bool:
        found = {NAMESPACE_LABEL: self.namespace, **self.namespace_labels}
        return _matches(selector, found)


def _matches(selector: dict[str, Any], found: dict[str, str]) -> bool:
    if set(selector) - {"matchLabels"}:
        raise ValueError(f"selector {selector}: only matchLabels is evaluated here")
    return all(found.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict[str, Any], source: Source, policy_namespace: str) -> bool:
    if set(peer) - {"podSelector", "namespaceSelector"}:
        raise ValueError(f"peer {peer}: only podSelector/namespaceSelector are evaluated here")
    if "namespaceSelector" in peer:
        in_namespace = source.namespace_matches(peer["namespaceSelector"])
    else:
        in_namespace = source.namespace == policy_namespace  # a bare podSelector means this namespace
    return in_namespace and _matches(peer.get("podSelector", {}), source.pod_labels)


def admitted_ports(policies: list[dict[str, Any]], source: Source, pod_labels: dict[str, str]) -> frozenset[int]:
    """TCP ports of a pod with `pod_labels` that `source` may reach (ALL_PORTS: every port).
    No policy selecting the pod: every port (Kubernetes' default)."""
    selecting = [p for p in policies if _matches(p["spec"]["podSelector"], pod_labels)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return ALL_PORTS
    ports: set[int] = set()
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if peers is not None and not any(_peer_admits(p, source, policy["metadata"]["namespace"]) for p in peers):
                continue
            if "ports" not in rule:
                return ALL_PORTS
            ports.update(int(p["port"]) for p in rule["ports"] if p.get("protocol", "TCP") == "TCP")
    return frozenset(ports)
