"""The KubeRay `RayService` (ray.io/v1) of the app: head, worker groups, probes, secrets, upgrades.

Takes the `AppConfig`, the resolved `KubernetesConfig`, the worker group plans and the serveConfigV2
text; returns the manifest as a dict in a fixed key order. Choices, each for a reason:
- head `num-cpus: "0"`: no replicas on the head, whose loss would take the cluster down;
- requests equal limits on every container (GPUs must; CPU/memory give Guaranteed QoS);
- probes with long budgets: a replica may load a model for many minutes, during which the raylet
  is busy; the RayService itself only switches traffic once the app is RUNNING (NewCluster), and
  `ray.io/initializing-timeout` bounds the whole start;
- secrets only as `secretKeyRef` env vars;
- non-root pods (the Ray image's `ray` user), no privilege escalation, every capability dropped,
  a read-only root filesystem with emptyDir volumes where Ray writes (/tmp, /home/ray/.cache,
  /dev/shm), the RuntimeDefault seccomp profile; the autoscaler sidecar gets the same.
"""

from __future__ import annotations

from typing import Any

from cluster.k8s import RAY_VERSION
from cluster.k8s.sizing import WorkerGroupPlan
from inference.schema.config import AppConfig, KubernetesConfig, PodSecurityConfig

AGENT_PORT = 52365  # Ray dashboard agent: /api/healthz, /api/local_raylet_healthz
METRICS_PORT = 8080
INITIALIZING_TIMEOUT_ANNOTATION = "ray.io/initializing-timeout"


def labels(k8s: KubernetesConfig, component: str | None = None) -> dict[str, str]:
    found = {"app.kubernetes.io/name": "sloserve", "app.kubernetes.io/instance": k8s.name}
    if component:
        found["app.kubernetes.io/component"] = component
    return found


def _http_probe(failure_threshold: int, initial_delay_s: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/api/healthz", "port": AGENT_PORT},
        "initialDelaySeconds": initial_delay_s,
        "periodSeconds": 10,
        "timeoutSeconds": 10,
        "failureThreshold": failure_threshold,
    }


def _worker_readiness(serve_port: int) -> dict[str, Any]:
    """Raylet healthy and this pod's Serve proxy up (what KubeRay checks, with longer timeouts)."""
    checks = [
        f"wget --tries 1 -T 10 -q -O- http://localhost:{AGENT_PORT}/api/local_raylet_healthz | grep success",
        f"wget --tries 1 -T 10 -q -O- http://localhost:{serve_port}/-/healthz | grep success",
    ]
    return {
        "exec": {"command": ["bash", "-c", " && ".join(checks)]},
        "initialDelaySeconds": 10,
        "periodSeconds": 10,
        "timeoutSeconds": 25,
        "failureThreshold": 3,
    }


def _resources(num_cpus: int, memory: str, gpus: dict[str, int] | None = None) -> dict[str, Any]:
    amounts: dict[str, str] = {"cpu": str(num_cpus), "memory": memory}
    amounts.update({name: str(count) for name, count in (gpus or {}).items()})
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _env(k8s: KubernetesConfig, ray_env: dict[str, str]) -> list[dict[str, Any]]:
    # every Ray process of the pod (proxy, controller, replicas) starts with cluster.ray_env()
    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": "/home/ray/.cache/huggingface"}]
    env += [{"name": name, "value": value} for name, value in sorted(ray_env.items())]
    for secret in k8s.secrets:
        ref = {"name": secret.secret_name, "key": secret.key, "optional": secret.optional}
        env.append({"name": secret.env, "valueFrom": {"secretKeyRef": ref}})
    return env


def container_security_context(security: PodSecurityConfig) -> dict[str, Any]:
    """Of every container we run (Ray head, workers, the autoscaler sidecar)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": security.run_as_user,
        "runAsGroup": security.run_as_group,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": security.read_only_root_filesystem,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security_context(security: PodSecurityConfig) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": security.run_as_user,
        "runAsGroup": security.run_as_group,
        "fsGroup": security.run_as_group,  # emptyDir volumes writable by the ray user
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_template(
    k8s: KubernetesConfig, component: str, container: dict[str, Any], group: WorkerGroupPlan | None
) -> dict[str, Any]:
    # Ray writes its sessions, logs, sockets and spilled objects under /tmp, and the model and
    # compiled-kernel caches under /home/ray/.cache: both are volumes, so the image can stay read-only.
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": k8s.security.tmp_size}},
        {"name": "cache", "emptyDir": {"sizeLimit": k8s.cache_size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/home/ray/.cache"},
    ]
    if group is not None:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    container["volumeMounts"] = mounts
    container["securityContext"] = container_security_context(k8s.security)
    spec: dict[str, Any] = {
        "securityContext": _pod_security_context(k8s.security),
        "containers": [container],
        "volumes": volumes,
    }
    if group is not None and group.settings.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in group.settings.tolerations]
    if group is not None and group.settings.node_selector:
        spec["nodeSelector"] = dict(sorted(group.settings.node_selector.items()))
    return {"metadata": {"labels": labels(k8s, component)}, "spec": spec}


def _container(k8s: KubernetesConfig, name: str, ports: list[tuple[str, int]], ray_env: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "image": k8s.image,
        "imagePullPolicy": k8s.image_pull_policy,
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports],
        "env": _env(k8s, ray_env),
    }


def _head(config: AppConfig, k8s: KubernetesConfig) -> dict[str, Any]:
    ports = [("gcs-server", 6379), ("dashboard", 8265), ("client", 10001)]
    ports += [("serve", config.cluster.http_port), ("metrics", METRICS_PORT)]
    container = _container(k8s, "ray-head", ports, config.cluster.ray_env())
    container["resources"] = _resources(k8s.head_num_cpus, k8s.head_memory)
    container["readinessProbe"] = _http_probe(failure_threshold=6, initial_delay_s=10)
    container["livenessProbe"] = _http_probe(failure_threshold=60, initial_delay_s=30)
    return {"rayStartParams": {"num-cpus": "0"}, "template": _pod_template(k8s, "ray-head", container, None)}


def _worker_group(config: AppConfig, k8s: KubernetesConfig, group: WorkerGroupPlan) -> dict[str, Any]:
    container = _container(k8s, "ray-worker", [("serve", config.cluster.http_port), ("metrics", METRICS_PORT)],
                           config.cluster.ray_env())
    gpus = {k8s.gpu_resource: group.num_gpus} if group.num_gpus else None
    container["resources"] = _resources(group.num_cpus, group.memory, gpus)
    container["readinessProbe"] = _worker_readiness(config.cluster.http_port)
    container["livenessProbe"] = _http_probe(failure_threshold=60, initial_delay_s=30)
    return {
        "groupName": f"{group.name}-workers",
        "replicas": group.replicas,
        "minReplicas": group.min_workers,
        "maxReplicas": group.max_workers,
        "rayStartParams": {},
        "template": _pod_template(k8s, "ray-worker", container, group),
    }


def build_rayservice(
    config: AppConfig, k8s: KubernetesConfig, groups: list[WorkerGroupPlan], serve_config_yaml: str, profile: str
) -> dict[str, Any]:
    autoscaler_resources = {"cpu": "500m", "memory": "512Mi"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": k8s.name,
            "namespace": k8s.namespace,
            "labels": {**labels(k8s), "sloserve.io/profile": profile},
            "annotations": {INITIALIZING_TIMEOUT_ANNOTATION: str(k8s.initializing_timeout_s)},
        },
        "spec": {
            "upgradeStrategy": {"type": k8s.upgrade_strategy},
            "rayClusterDeletionDelaySeconds": k8s.cluster_deletion_delay_s,
            "serveConfigV2": serve_config_yaml,
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "version": "v2",
                    "upscalingMode": k8s.autoscaler_upscaling_mode,
                    "idleTimeoutSeconds": k8s.autoscaler_idle_timeout_s,
                    "resources": {"requests": dict(autoscaler_resources), "limits": dict(autoscaler_resources)},
                    "securityContext": container_security_context(k8s.security),
                },
                "headGroupSpec": _head(config, k8s),
                "workerGroupSpecs": [_worker_group(config, k8s, group) for group in groups],
            },
        },
    }
