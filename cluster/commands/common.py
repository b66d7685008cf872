"""Shared pieces of the CLI commands: config loading with friendly errors, model pre-fetching."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from inference.schema.config import AppConfig, ConfigError, load_config

# Shipped inside the package (package data), so it is found from any working directory.
DEFAULT_CONFIG = Path(str(resources.files("cluster").joinpath("configs", "local.yaml")))


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None,
        help="YAML config (default: the packaged cluster/configs/local.yaml: the packaged model, full + int8)",
    )


def config_path(path: str | None) -> str:
    """The config file a command uses: the one given, else the packaged default."""
    return str(DEFAULT_CONFIG) if path is None else path


def load_or_exit(path: str | None) -> AppConfig:
    """Validate the config before anything heavy starts; exit 2 with the field named. A `--config`
    that does not exist is an error naming it (never a silent fall-back to defaults)."""
    chosen = config_path(path)
    if path is not None and not Path(path).is_file():
        print(f"sloserve: --config {path}: no such file", file=sys.stderr)
        raise SystemExit(2)
    print(f"config: {Path(chosen).resolve()}", flush=True)
    try:
        return load_config(chosen)
    except ConfigError as e:
        print(f"sloserve: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def set_ray_env(config: AppConfig) -> dict[str, str]:
    """Put `cluster.ray_env()` (Ray Serve's fast-path switches) into this process's environment, before
    Ray Serve is imported here and before the local Ray starts: Serve reads them once per process, and
    the Ray processes started from here inherit them. Returns what was set."""
    env = config.cluster.ray_env()
    if env and "ray.serve" in sys.modules and any(os.environ.get(k) != v for k, v in env.items()):
        print("sloserve: warning: Ray Serve was imported before its settings were set; this process keeps "
              "Serve's defaults (the Ray processes started from it still get cluster.serve_fast_path)", file=sys.stderr)
    os.environ.update(env)
    return env


def build_or_exit(config: AppConfig, path: str | None) -> Any:
    """The Serve application (`deployments.app.build_app`); a config it rejects (e.g. a bad
    `controller.manifest`) exits 2 with the field named, before any model is fetched or loaded.
    Relative paths inside the config (the controller's manifest) are read beside the config file."""
    from deployments.app import build_app

    path = config_path(path)
    try:
        return build_app(config, path)
    except ConfigError as e:
        print(f"sloserve: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def prefetch_models(config: AppConfig) -> None:
    """Resolve (and for GGUF sources, convert once) every model here, with visible progress,
    instead of inside the replicas where a first start would look like a hang."""
    from inference.model.model_loader import resolve_model_dir
    from inference.schema.errors import ModelSourceError

    sources = sorted({v.source or config.model.source for v in config.variants})
    for source in sources:
        print(f"model {source}: resolving ...", flush=True)
        try:
            location = resolve_model_dir(source)
        except ModelSourceError as e:
            users = [v.name for v in config.variants if (v.source or config.model.source) == source]
            print(f"sloserve: variant {', '.join(users)}: {e}", file=sys.stderr)
            hint = missing_variant_hint(source, config.model.source)
            if hint:
                print(hint, file=sys.stderr)
            raise SystemExit(2) from e
        print(f"model {source}: {location}", flush=True)


def missing_variant_hint(source: str, full_model: str) -> str | None:
    """What to run when a variant directory that `sloserve compress` makes is missing: its last
    path component names the method (`distill-20`, `prune-structured`, ...)."""
    from inference.compression.methods import is_known

    path = Path(source).expanduser()
    if not is_known(path.name):
        return None
    command = f"sloserve compress --model {full_model} --methods {path.name} --out {path.parent}"
    return (
        f"  {path} is a compressed variant that has not been built on this machine. Build it with\n"
        f"    {command}\n"
        "  (in a checkout: `make variants` builds the variants of cluster/configs/local-slo.yaml; "
        "distillation takes minutes: see the README)"
    )
