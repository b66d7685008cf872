"""Shared pieces of the CLI commands: config loading with friendly errors, model pre-fetching."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cluster.config import AppConfig, ConfigError, load_config

DEFAULT_CONFIG = "cluster/configs/local.yaml"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None,
        help=f"YAML config (default: {DEFAULT_CONFIG} if it exists, else the built-in defaults)",
    )


def load_or_exit(path: str | None) -> AppConfig:
    """Validate the config before anything heavy starts; exit 2 with the field named."""
    from pathlib import Path

    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"sloserve: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def build_or_exit(config: AppConfig, path: str | None) -> Any:
    """The Serve application (`deployments.app.build_app`); a config it rejects (e.g. a bad
    `controller.manifest`) exits 2 with the field named, before any model is fetched or loaded."""
    from pathlib import Path

    from deployments.app import build_app

    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    try:
        return build_app(config, path)
    except ConfigError as e:
        print(f"sloserve: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def prefetch_models(config: AppConfig) -> None:
    """Resolve (and for GGUF sources, convert once) every model here, with visible progress,
    instead of inside the replicas where a first start would look like a hang."""
    from inference.errors import ModelSourceError
    from inference.model_loader import resolve_model_dir

    sources = sorted({v.source or config.model.source for v in config.variants})
    for source in sources:
        print(f"model {source}: resolving ...", flush=True)
        try:
            location = resolve_model_dir(source)
        except ModelSourceError as e:
            print(f"sloserve: {e}", file=sys.stderr)
            raise SystemExit(2) from e
        print(f"model {source}: {location}", flush=True)
