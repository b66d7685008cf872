"""Monitoring: a Prometheus Operator `PodMonitor` for the Ray pods and a Grafana dashboard.

The router and LLMServer replicas record their metrics through Ray's metrics API
(deployments/telemetry/metrics.py); Ray's metrics agent exports them on each node's metrics port with its
own prefix (`ray_`), which the PodMonitor scrapes, so the dashboard's queries use
`KubernetesConfig.metrics_prefix`. The dashboard charts TTFT/TPOT/E2E percentiles per variant
with the default SLO class's targets as threshold lines, queue depth, running sequences, KV use,
prefix-cache hits, controller weights and decisions, rejections, requests by status and tokens/s. Returns plain dicts; the ConfigMap carries the JSON for Grafana's dashboard sidecar.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.k8s.rayservice import labels
from inference.schema.config import AppConfig, KubernetesConfig

RATE = "[$__rate_interval]"


def build_pod_monitor(k8s: KubernetesConfig) -> dict[str, Any]:
    """Scrape the `metrics` port of every Ray pod (head and workers) of this RayService."""
    relabel = {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {
            "name": f"{k8s.name}-ray",
            "namespace": k8s.namespace,
            "labels": {**labels(k8s), **dict(sorted(k8s.prometheus_labels.items()))},
        },
        "spec": {
            "jobLabel": "app.kubernetes.io/instance",
            "namespaceSelector": {"matchNames": [k8s.namespace]},
            "selector": {"matchLabels": labels(k8s)},
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "interval": f"{k8s.scrape_interval_s}s",
                    "relabelings": [{**relabel, "targetLabel": "ray_io_cluster"}],
                }
            ],
        },
    }


def _panel(title: str, unit: str, targets: list[tuple[str, str]], threshold: float | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if threshold is not None:
        steps = [{"color": "green", "value": None}, {"color": "red", "value": threshold}]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return {
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend} for i, (expr, legend) in enumerate(targets)
        ],
    }


def _latency_panel(metric: str, title: str, slo_ms: float | None) -> dict[str, Any]:
    targets = [
        (f"histogram_quantile({q}, sum by (variant, le) (rate({metric}_bucket{RATE})))", f"{{{{variant}}}} p{p}")
        for q, p in ((0.5, "50"), (0.95, "95"), (0.99, "99"))
    ]
    if slo_ms is None:
        return _panel(title, "s", targets)
    return _panel(f"{title} (red line: SLO p95)", "s", targets, slo_ms / 1000.0)


def build_dashboard(config: AppConfig, k8s: KubernetesConfig) -> dict[str, Any]:
    m = k8s.metrics_prefix + "sloserve_"
    slo = config.slo.classes[config.slo.default_class]
    panels = [
        _latency_panel(f"{m}ttft_seconds", "Time to first token", slo.ttft_p95_ms),
        _latency_panel(f"{m}tpot_seconds", "Time per output token", slo.tpot_p95_ms),
        _latency_panel(f"{m}e2e_seconds", "End-to-end latency", slo.e2e_p95_ms),
        _panel("Requests by variant and status", "reqps",
               [(f"sum by (variant, status) (rate({m}requests_total{RATE}))", "{{variant}} {{status}}")]),
        _panel("Rejections by reason", "reqps", [(f"sum by (reason) (rate({m}rejected_total{RATE}))", "{{reason}}")]),
        _panel("Queue depth", "short", [(f"sum by (variant) ({m}queue_depth)", "{{variant}}")]),
        _panel("Sequences running", "short", [(f"sum by (variant) ({m}running_seqs)", "{{variant}}")]),
        _panel("KV cache blocks used", "percentunit", [(f"max by (variant) ({m}kv_blocks_used_ratio)", "{{variant}}")]),
        _panel("Prefix cache hits", "percentunit",
               [(f"avg by (variant) ({m}prefix_cache_hit_ratio)", "{{variant}}")]),
        _panel("Tokens generated per second", "short",
               [(f"sum by (variant) (rate({m}tokens_generated_total{RATE}))", "{{variant}}")]),
        _panel("Controller traffic weights", "percentunit", [(f"max by (variant) ({m}controller_weight)", "{{variant}}")]),
        _panel("Controller decisions by reason", "short",
               [(f"sum by (reason) (increase({m}controller_decisions_total{RATE}))", "{{reason}}")]),
    ]
    for i, panel in enumerate(panels):
        panel["id"] = i + 1
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)}
    datasource = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"}
    return {
        "title": f"sloserve ({k8s.name})",
        "uid": f"sloserve-{k8s.name}"[:40],
        "tags": ["sloserve", "ray"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [datasource]},
        "panels": panels,
    }


def dashboard_json(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2) + "\n"


def build_dashboard_configmap(k8s: KubernetesConfig, dashboard_text: str) -> dict[str, Any]:
    """The dashboard for Grafana's sidecar (kube-prometheus-stack loads ConfigMaps labelled grafana_dashboard)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{k8s.name}-grafana-dashboard",
            "namespace": k8s.namespace,
            "labels": {**labels(k8s), "grafana_dashboard": "1"},
        },
        "data": {"sloserve-dashboard.json": dashboard_text},
    }
