"""Offline checks of rendered manifests; each returns a list of messages that name the field.

- `schema_errors`: a document against one of the strict schemas of `schema.py`;
- `serve_config_errors`: `serveConfigV2` against Ray's own `ServeDeploySchema`, plus unknown keys
  (Ray's schema ignores them, forward-compatibly, so a typo there would be dropped silently);
- `kuberay_rule_errors`: what KubeRay enforces in code, not in its CRD schema (name length and
  DNS-1035, replica bounds), and what this project needs: GPU requests = limits, every replica's
  placement group fits one worker pod, secrets only by reference;
- `security_errors`: every pod non-root, every container (autoscaler included) without privilege
  escalation and with all capabilities dropped;
- `network_errors`: from outside the namespace only the serve port is reachable; the dashboard only
  from the KubeRay operator, GCS only from inside.
`validate_rendered` runs them all on a `render.Rendered`.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import yaml

from cluster.k8s.network import ALL_PORTS, DASHBOARD_PORT, GCS_PORT, OPERATOR_LABELS, Source, admitted_ports
from cluster.k8s.rayservice import labels
from cluster.k8s.render import Rendered
from cluster.k8s.schema import DNS1035_LABEL, PODMONITOR_SCHEMA, RAYSERVICE_SCHEMA

MAX_RAYSERVICE_NAME = 47  # KubeRay: MaxRayClusterNameLength (53) - 6 for the generated suffix
SECRET_WORDS = {"TOKEN", "SECRET", "PASSWORD", "KEY", "KEYS", "CREDENTIALS"}
BASIC_RESOURCES = {"cpu", "memory", "ephemeral-storage"}


def schema_errors(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def _unknown_keys(where: str, given: dict[str, Any], model: Any) -> list[str]:
    known = set(model.model_fields)
    return [f"{where}.{key}: not a field of Ray's {model.__name__}" for key in given if key not in known]


def serve_config_errors(text: str) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    raw = yaml.safe_load(text)
    errors = _unknown_keys("serveConfigV2", raw, ServeDeploySchema)
    for i, app in enumerate(raw.get("applications", [])):
        errors += _unknown_keys(f"serveConfigV2.applications[{i}]", app, ServeApplicationSchema)
        for j, deployment in enumerate(app.get("deployments", [])):
            errors += _unknown_keys(f"serveConfigV2.applications[{i}].deployments[{j}]", deployment, DeploymentSchema)
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as e:
        errors += [f"serveConfigV2.{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in e.errors()]
    return errors


def _containers(rayservice: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    found = [("headGroupSpec", c) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
        found += [(f"workerGroupSpecs[{i}]", c) for c in group["template"]["spec"]["containers"]]
    return found


def _pod_capacity(group: dict[str, Any]) -> tuple[float, int]:
    """(CPUs, GPUs) Ray sees on a pod of the group: its container limits."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus = sum(int(v) for k, v in limits.items() if k not in BASIC_RESOURCES and "gpu" in k)
    cpu = str(limits["cpu"])
    return (float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)), gpus


def kuberay_rule_errors(rayservice: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    name = rayservice["metadata"]["name"]
    if len(name) > MAX_RAYSERVICE_NAME:
        errors.append(f"metadata.name: {name!r} is longer than {MAX_RAYSERVICE_NAME} characters")
    if not re.fullmatch(DNS1035_LABEL, name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    cluster = rayservice["spec"]["rayClusterConfig"]
    if cluster["headGroupSpec"].get("rayStartParams", {}).get("num-cpus") != "0":
        errors.append('rayClusterConfig.headGroupSpec.rayStartParams.num-cpus: must be "0" (no replicas on the head)')
    groups = cluster.get("workerGroupSpecs", [])
    for i, group in enumerate(groups):
        low, high, start = group["minReplicas"], group["maxReplicas"], group.get("replicas", group["minReplicas"])
        if not low <= start <= high:
            errors.append(
                f"rayClusterConfig.workerGroupSpecs[{i}] ({group['groupName']}): need minReplicas <= replicas <= "
                f"maxReplicas, got {low} <= {start} <= {high}"
            )
    for where, container in _containers(rayservice):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for resource in sorted(set(requests) | set(limits)):
            if "gpu" in resource and requests.get(resource) != limits.get(resource):
                errors.append(f"{where}.{container['name']}.resources: {resource} requests must equal limits")
        for env in container.get("env", []):
            if SECRET_WORDS & set(env["name"].upper().split("_")) and "secretKeyRef" not in env.get("valueFrom", {}):
                errors.append(f"{where}.{container['name']}.env.{env['name']}: secrets must come from a secretKeyRef")
    errors += _placement_errors(rayservice, [_pod_capacity(g) for g in groups])
    return errors


def _placement_errors(rayservice: dict[str, Any], pods: list[tuple[float, int]]) -> list[str]:
    """Every replica's placement group (STRICT_PACK) must fit on one worker pod."""
    errors: list[str] = []
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    for app in serve["applications"]:
        for deployment in app.get("deployments", []):
            bundles = deployment.get("placement_group_bundles")
            if not bundles:
                continue
            cpus = sum(b.get("CPU", 0) for b in bundles)
            gpus = sum(b.get("GPU", 0) for b in bundles)
            actor = deployment.get("ray_actor_options", {})
            if bundles[0].get("GPU", 0) and actor.get("num_gpus", 0) != bundles[0]["GPU"]:
                errors.append(
                    f"serveConfigV2 deployment {deployment['name']!r}: rank 0 runs in the replica actor, whose "
                    f"ray_actor_options.num_gpus ({actor.get('num_gpus', 0)}) must equal bundle 0's GPU "
                    f"({bundles[0]['GPU']}); without it Ray hides every GPU from rank 0"
                )
            if not any(cpus <= pod_cpus and gpus <= pod_gpus for pod_cpus, pod_gpus in pods):
                errors.append(
                    f"serveConfigV2 deployment {deployment['name']!r}: a replica needs {cpus:g} CPUs and {gpus:g} "
                    f"GPUs on one pod, but worker pods hold (CPUs, GPUs) {pods}"
                )
        for key in app.get("runtime_env", {}).get("env_vars", {}):
            if SECRET_WORDS & set(key.upper().split("_")):
                errors.append(f"serveConfigV2 runtime_env.env_vars.{key}: secrets must not be inline")
    return errors


def _pod_specs(rayservice: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    found = [("headGroupSpec", cluster["headGroupSpec"]["template"]["spec"])]
    return found + [(f"workerGroupSpecs[{i}]", g["template"]["spec"]) for i, g in enumerate(cluster.get("workerGroupSpecs", []))]


def _container_security_errors(where: str, context: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    errors = []
    if not (context.get("runAsNonRoot") or pod.get("runAsNonRoot")):
        errors.append(f"{where}.securityContext.runAsNonRoot: must be true")
    if context.get("runAsUser", pod.get("runAsUser")) in (None, 0):
        errors.append(f"{where}.securityContext.runAsUser: must be a non-zero UID")
    if context.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{where}.securityContext.allowPrivilegeEscalation: must be false")
    if context.get("privileged"):
        errors.append(f"{where}.securityContext.privileged: must not be true")
    if "ALL" not in context.get("capabilities", {}).get("drop", []) or context.get("capabilities", {}).get("add"):
        errors.append(f"{where}.securityContext.capabilities: must drop ALL and add none")
    return errors


def security_errors(rayservice: dict[str, Any]) -> list[str]:
    """Non-root, no privilege escalation, no capabilities: every container, the autoscaler's too."""
    errors: list[str] = []
    for where, pod in _pod_specs(rayservice):
        pod_context = pod.get("securityContext", {})
        for container in pod["containers"]:
            errors += _container_security_errors(f"{where}.{container['name']}", container.get("securityContext", {}),
                                                 pod_context)
    cluster = rayservice["spec"]["rayClusterConfig"]
    if cluster.get("enableInTreeAutoscaling"):
        context = cluster.get("autoscalerOptions", {}).get("securityContext", {})
        errors += _container_security_errors("autoscalerOptions", context, {})
    return errors


def network_errors(rendered: Rendered) -> list[str]:
    """What the app's NetworkPolicy promises (the monitoring one only adds the metrics port)."""
    if not rendered.kubernetes.security.network_policy:
        return []
    k8s, serve_port = rendered.kubernetes, rendered.serve_config["http_options"]["port"]
    app_policy, pod = rendered.network_policies[:1], labels(rendered.kubernetes)
    outside = admitted_ports(app_policy, Source("elsewhere"), pod)
    operator = admitted_ports(app_policy, Source(k8s.security.operator_namespace, dict(OPERATOR_LABELS)), pod)
    inside = admitted_ports(app_policy, Source(k8s.namespace), pod)
    errors = []
    if outside != {serve_port}:
        shown = "every port" if outside == ALL_PORTS else sorted(outside)
        errors.append(f"NetworkPolicy: from outside the namespace only port {serve_port} may be reachable, got {shown}")
    if operator == ALL_PORTS or operator - {serve_port, DASHBOARD_PORT}:
        errors.append(f"NetworkPolicy: the KubeRay operator may reach only {serve_port} and {DASHBOARD_PORT}")
    if inside != ALL_PORTS and not {GCS_PORT, DASHBOARD_PORT, serve_port} <= inside:
        errors.append("NetworkPolicy: pods of the namespace must reach each other (GCS, dashboard, serve)")
    return errors


def validate_rendered(rendered: Rendered) -> list[str]:
    """All offline checks on a `render.Rendered` (kubernetes-validate runs in the tests)."""
    errors = [f"RayService {e}" for e in schema_errors(rendered.rayservice, RAYSERVICE_SCHEMA)]
    errors += [f"PodMonitor {e}" for e in schema_errors(rendered.pod_monitor, PODMONITOR_SCHEMA)]
    if errors:
        return errors
    errors += serve_config_errors(rendered.rayservice["spec"]["serveConfigV2"])
    errors += kuberay_rule_errors(rendered.rayservice) + security_errors(rendered.rayservice)
    return errors + network_errors(rendered)
