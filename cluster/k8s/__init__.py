"""Kubernetes rendering: the KubeRay RayService, monitoring and dashboards from one `AppConfig`.

`render.render_manifests(config, profile, source)` returns every file of `k8s/<profile>/` as text;
`validate.validate_rendered(...)` checks them offline (strict RayService schema, KubeRay's own
rules, Ray's `ServeDeploySchema`). `sloserve render-k8s` (`cli.py`) writes them. Pure Python over
dicts: no Kubernetes client, no cluster, no network.
"""

from __future__ import annotations

RAY_VERSION = "2.60.0"
KUBERAY_VERSION = "1.7.0"
PROFILES = ("cpu-dev", "gpu-prod")
