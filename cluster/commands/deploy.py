"""`sloserve deploy`: deploy (or update) the app on an existing Ray cluster, then return."""

from __future__ import annotations

import argparse

from cluster.commands.common import add_config_argument, build_or_exit, load_or_exit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--address", required=True, help="Ray address, e.g. auto or ray://head:10001")


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    application = build_or_exit(config, args.config)
    import ray
    from ray import serve

    from deployments.app import serve_run_options

    ray.init(address=args.address)
    serve.start(http_options={"host": config.cluster.http_host, "port": config.cluster.http_port})
    serve.run(application, **serve_run_options(config))
    print(f"deployed {config.cluster.app_name} to {args.address}: variants {[v.name for v in config.variants]}")
    if config.cluster.serve_fast_path:
        print("note: cluster.serve_fast_path takes effect only if the cluster's Ray processes were started with "
              + " ".join(f"{k}={v}" for k, v in config.cluster.ray_env().items()))
    return 0
