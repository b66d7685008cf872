"""`sloserve status`: applications, deployments and replica states of a running cluster, and each
variant's compute dtype with why (`dtype: auto`'s measured GEMM timings on CPU); with
the SLO controller's weights, replica targets and whether its manifest was measured on this CPU
(else it plans from the manifest corrected online: the corrections are shown); with
`--placement`, where every rank of every variant's replicas runs (node, GPUs Ray assigned,
CUDA_VISIBLE_DEVICES, torch device)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="auto", help="Ray address (default: auto)")
    parser.add_argument("--placement", action="store_true", help="also show where each rank of each replica runs")


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve
    from ray.serve.schema import ReplicaState

    from deployments.controller.slo_controller import CONTROLLER_DEPLOYMENT
    from deployments.replica.placement import LLM_DEPLOYMENT_PREFIX

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
            running = dep.replica_states.get(ReplicaState.RUNNING, 0)
            if dep_name.startswith(LLM_DEPLOYMENT_PREFIX) and running:
                _print_dtype(name, dep_name)
            if args.placement and dep_name.startswith(LLM_DEPLOYMENT_PREFIX):
                _print_placement(name, dep_name, running)
            if dep_name == CONTROLLER_DEPLOYMENT and running:
                _print_controller(name, dep_name)
    return 0


def _print_dtype(app_name: str, deployment: str) -> None:
    """What one replica of the variant computes in, and why (`dtype: auto` is measured per machine)."""
    from ray import serve

    try:
        summary = serve.get_deployment_handle(deployment, app_name).dtype.remote().result(timeout_s=30)
    except Exception as e:  # a replica that cannot answer still leaves the rest of the status
        summary = f"unknown ({type(e).__name__}: {e})"
    print(f"    dtype: {summary}")


def _print_controller(app_name: str, deployment: str) -> None:
    """The controller's view: traffic weights, replica targets, and how far its manifest is from here."""
    from ray import serve

    try:
        s = serve.get_deployment_handle(deployment, app_name).status.remote().result(timeout_s=30)
    except Exception as e:
        print(f"    controller: unknown ({type(e).__name__}: {e})")
        return
    print(f"    weights: {s['weights']}  replica targets: {s['replica_targets']}  "
          f"intervals: {s['num_intervals']} ({s['num_failures']} failed)")
    where = "this CPU" if s["manifest_cpu_matches"] else f"{s['manifest_hardware']!r}, not this CPU ({s['cpu']})"
    corrections = {n: f"tpot x{t:.2f} ttft x{f:.2f}" for n, (t, f) in (s["corrections"] or {}).items()}
    print(f"    manifest measured on {where}; online corrections: {corrections or 'none yet'}")


def _print_placement(app_name: str, deployment: str, num_replicas: int) -> None:
    from deployments.replica.tp_group import replica_placements

    for ranks in replica_placements(app_name, deployment, num_replicas, timeout_s=30).values():
        for r in ranks:
            gpus = ",".join(r.gpu_ids) or "-"
            print(f"    rank {r.rank}: node {r.node_id[:12]} pid {r.pid} gpus {gpus} "
                  f"CUDA_VISIBLE_DEVICES={r.cuda_visible_devices} device {r.device}")
