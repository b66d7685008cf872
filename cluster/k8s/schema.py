"""Strict JSON Schemas (draft 2020-12) for the custom resources we emit: RayService and PodMonitor.

Written from KubeRay v1.7.0's API (`ray-operator/apis/ray/v1/{rayservice,raycluster}_types.go`,
`config/crd/bases/ray.io_rayservices.yaml`) and the Prometheus Operator's `PodMonitorSpec`, but
only for the fields this project renders, and with `additionalProperties: false` everywhere. The
API server prunes unknown fields of a custom resource silently, so a typo such as
`enableInTreeAutoscalng` would deploy without autoscaling; here it is an error naming the path.
Pod templates are core/v1 `PodTemplateSpec`s: tests validate them strictly with kubernetes-validate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"  # k8s resource.Quantity
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
RELABEL_ACTIONS = [
    *("replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap"),
    *("labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase"),
    *("keepequal", "KeepEqual", "dropequal", "DropEqual"),
]


def obj(properties: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    """An object that allows exactly these properties."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def string_map(value: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": value or {"type": "string"}}


def int32(minimum: int = -(2**31)) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": 2**31 - 1}


STRING = {"type": "string"}
METADATA = obj(
    {"name": STRING, "namespace": {"type": "string", "pattern": DNS1035_LABEL}, "labels": string_map(),
     "annotations": string_map()},
    required=["name"],
)
RESOURCE_REQUIREMENTS = obj(
    {"requests": string_map({"type": "string", "pattern": QUANTITY}),
     "limits": string_map({"type": "string", "pattern": QUANTITY})}
)
# core/v1 PodTemplateSpec: only its outline here; kubernetes-validate checks it in full (strict).
POD_TEMPLATE = obj({"metadata": {"type": "object"}, "spec": {"type": "object"}}, required=["spec"])

# core/v1 SecurityContext (the autoscaler sidecar's): the fields we emit.
SECURITY_CONTEXT = obj(
    {
        "runAsNonRoot": {"type": "boolean"},
        "runAsUser": {"type": "integer", "minimum": 0},
        "runAsGroup": {"type": "integer", "minimum": 0},
        "allowPrivilegeEscalation": {"type": "boolean"},
        "privileged": {"type": "boolean"},
        "readOnlyRootFilesystem": {"type": "boolean"},
        "capabilities": obj({"drop": {"type": "array", "items": STRING}, "add": {"type": "array", "items": STRING}}),
    }
)
AUTOSCALER_OPTIONS = obj(
    {
        "version": {"enum": ["v1", "v2"]},
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "idleTimeoutSeconds": int32(),
        "resources": RESOURCE_REQUIREMENTS,
        "securityContext": SECURITY_CONTEXT,
    }
)
HEAD_GROUP_SPEC = obj({"rayStartParams": string_map(), "template": POD_TEMPLATE}, required=["template"])
WORKER_GROUP_SPEC = obj(
    {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": int32(0),
        "minReplicas": int32(0),
        "maxReplicas": int32(0),
        "rayStartParams": string_map(),
        "template": POD_TEMPLATE,
    },
    required=["groupName", "minReplicas", "maxReplicas", "template"],
)
RAY_CLUSTER_SPEC = obj(
    {
        "rayVersion": STRING,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": AUTOSCALER_OPTIONS,
        "headGroupSpec": HEAD_GROUP_SPEC,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP_SPEC},
    },
    required=["headGroupSpec"],
)
RAYSERVICE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "RayService (ray.io/v1, KubeRay v1.7.0): the fields sloserve emits",
    **obj(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayService"},
            "metadata": METADATA,
            "spec": obj(
                {
                    "upgradeStrategy": obj({"type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]}}),
                    "rayClusterDeletionDelaySeconds": int32(0),
                    "serveConfigV2": STRING,
                    "rayClusterConfig": RAY_CLUSTER_SPEC,
                },
                required=["rayClusterConfig"],
            ),
        },
        required=["apiVersion", "kind", "metadata", "spec"],
    ),
}

RELABEL_CONFIG = obj(
    {
        "action": {"enum": RELABEL_ACTIONS},
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": LABEL_NAME}},
        "targetLabel": STRING,
        "regex": STRING,
        "replacement": STRING,
        "separator": STRING,
    }
)
POD_METRICS_ENDPOINT = obj(
    {
        "port": STRING,
        "path": STRING,
        "interval": {"type": "string", "pattern": DURATION},
        "scrapeTimeout": {"type": "string", "pattern": DURATION},
        "relabelings": {"type": "array", "items": RELABEL_CONFIG},
    }
)
PODMONITOR_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "PodMonitor (monitoring.coreos.com/v1): the fields sloserve emits",
    **obj(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": METADATA,
            "spec": obj(
                {
                    "jobLabel": STRING,
                    "namespaceSelector": obj({"matchNames": {"type": "array", "items": STRING}, "any": {"type": "boolean"}}),
                    "selector": obj({"matchLabels": string_map()}),
                    "podMetricsEndpoints": {"type": "array", "items": POD_METRICS_ENDPOINT},
                },
                required=["selector"],
            ),
        },
        required=["apiVersion", "kind", "metadata", "spec"],
    ),
}
