"""`sloserve status`: applications, deployments and replica states of a running cluster."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="auto", help="Ray address (default: auto)")


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    ray.init(address=args.address, log_to_driver=False)
    status = serve.status()
    if not status.applications:
        print("no Serve applications running")
        return 1
    for name, app in status.applications.items():
        print(f"application {name}: {app.status}")
        for dep_name, dep in app.deployments.items():
            counts = ", ".join(f"{k}={v}" for k, v in dep.replica_states.items())
            print(f"  {dep_name:<20} {dep.status}  replicas: {counts}")
    return 0
