"""The cluster side of a soak, through Ray's public API: start the app, find and kill replicas,
redeploy, read each replica's RSS.

- replicas are Serve's named actors (`SERVE_REPLICA::<app>#<deployment>#<id>` in namespace
  `serve`), listed with `ray.util.list_named_actors` (works without the dashboard);
- a kill is `ray.kill(actor, no_restart=True)`: Serve sees the replica die and starts another;
- a redeploy is `serve.run` of the same config: without an explicit version every deployment gets
  a new one, so Serve rolls every replica: old ones take no new requests and drain for up to
  `cluster.graceful_shutdown_timeout_s` while new ones start;
- RSS is read inside each replica's process (`/proc/self/statm`) with `actor.__ray_call__`, so no
  method is added to the served classes for this.
Blocking calls: run them in a thread from async code.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployments.replica.placement import llm_deployment_name
from inference.schema.config import AppConfig

SERVE_NAMESPACE = "serve"
REPLICA_PREFIX = "SERVE_REPLICA::"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpus_needed(config: AppConfig) -> float:
    return sum(v.tp_size * v.num_cpus_per_rank * v.num_replicas for v in config.variants)


@dataclass
class SoakCluster:
    """Ray access for one soak: a self-started local app, or a driver attached to a running one."""

    config: AppConfig
    config_path: Path
    self_started: bool

    @classmethod
    def start_local(cls, config: AppConfig, config_path: Path, port: int, num_cpus: int | None) -> tuple[SoakCluster, str]:
        """Start a local Ray and the app on 127.0.0.1:port; return it and the base URL."""
        import ray
        from ray import serve

        from cluster.commands.common import prefetch_models

        prefetch_models(config)
        port = port or free_port()
        # room for a second copy of every replica: a rolling redeploy starts new ones while old ones drain
        cpus = num_cpus or max(2, int(2 * cpus_needed(config) + 0.999))
        # address="local": always a new Ray of our own, never a cluster someone else started here
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        cluster = cls(config, config_path, self_started=True)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            cluster._serve_run()
        except BaseException:
            cluster.stop()
            raise
        return cluster, f"http://127.0.0.1:{port}"

    @classmethod
    def attach(cls, config: AppConfig, config_path: Path, address: str) -> SoakCluster:
        import ray

        ray.init(address=address, log_to_driver=False)
        return cls(config, config_path, self_started=False)

    def stop(self) -> None:
        """Shut down what this soak started; only disconnect from a cluster it attached to."""
        import ray
        from ray import serve

        try:
            if self.self_started:
                serve.shutdown()
        finally:
            ray.shutdown()

    def _serve_run(self) -> None:
        from ray import serve

        from deployments.app import build_app, serve_run_options

        serve.run(build_app(self.config, self.config_path), **serve_run_options(self.config))

    # ---- faults ------------------------------------------------------------------------------
    def replicas(self, deployments: set[str] | None = None) -> list[str]:
        """Names of the app's live replica actors, optionally of some deployments only, sorted."""
        import ray

        prefix = f"{REPLICA_PREFIX}{self.config.cluster.app_name}#"
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a.get("namespace") == SERVE_NAMESPACE and a["name"].startswith(prefix)]
        if deployments is not None:
            names = [n for n in names if n[len(prefix):].split("#", 1)[0] in deployments]
        return sorted(names)

    def serving_deployments(self) -> set[str]:
        """The LLM deployments that get traffic (weight > 0): the ones worth killing."""
        return {llm_deployment_name(v.name) for v in self.config.variants if v.weight > 0}

    def kill(self, name: str) -> None:
        import ray

        ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)

    def redeploy(self) -> None:
        """`serve.run` of the same config: a rolling update of every deployment; returns once RUNNING."""
        self._serve_run()

    # ---- memory ------------------------------------------------------------------------------
    def rss_bytes(self, names: list[str], timeout_s: float = 10.0) -> dict[str, int]:
        """Resident set size of each named replica's process, for replicas that finished starting
        (Serve's `was_initialized`); replicas that do not answer in time are left out."""
        import ray

        def read_rss(_actor: Any) -> int:  # runs inside the replica's process
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        refs: dict[str, tuple[Any, Any]] = {}
        for name in names:
            try:
                actor = ray.get_actor(name, namespace=SERVE_NAMESPACE)
            except ValueError:  # gone since it was listed
                continue
            refs[name] = (actor.was_initialized.remote(), actor.__ray_call__.remote(read_rss))
        found = {}
        for name, (ready, rss) in refs.items():
            try:
                if ray.get(ready, timeout=timeout_s):
                    found[name] = int(ray.get(rss, timeout=timeout_s))
            except Exception:  # died or busy past the timeout: no sample this time
                continue
        return found
