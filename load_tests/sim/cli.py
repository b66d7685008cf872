"""Controller simulator: replay rate traces against sloserve's policy and baselines, offline.

    python -m load_tests.sim --trace step3x,burst --policies sloserve,ray-default,static-full,
        static-compressed,threshold --manifest variants.json [--config app.yaml] [--json] [--out DIR]

Service times come from the manifest's speed profiles (`deployments.slo.capacity.SpeedCurve`),
so the simulator re-runs unchanged on a newly measured manifest. `static-full` and
`static-compressed` (the compressed variant with the most capacity per replica, or
`--static-compressed NAME`) are provisioned for the trace's peak: enough replicas to carry the
peak rate at the controller's target utilization. Extra policies: `static:<variant>` (the same
for any variant), `static-full-min` / `static-min:<variant>` (the fewest replicas that reach 99%
SLO attainment on this very trace, found by simulation: an oracle), `ray-default:<N>` (Ray's
default autoscaler with target_ongoing_requests N; `--ray-sweep 1,2,4,8,16` adds several and prints
them against sloserve). Prints each policy's scores, mix changes per step and the targets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from deployments.slo.capacity import capacities
from deployments.slo.settings import PolicyInputs, VariantBounds
from inference.schema.config import AppConfig, ConfigError, ControllerConfig, VariantConfig, load_config
from inference.schema.manifest import ManifestError, VariantManifest
from load_tests.rate_trace import TRACES_DIR, RateTrace, TraceError, load_rate_trace
from load_tests.sim.engine import SimRun, simulate
from load_tests.sim.policies import RayDefaultPolicy, SimPolicy, SloservePolicy, StaticPolicy, ThresholdPolicy
from load_tests.sim.report import (
    RAY_COST_RATIO,
    PolicyResult,
    TargetCheck,
    check_targets,
    is_target_trace,
    plot,
    score,
)
from load_tests.sim.requests import SimRequest, make_requests

EXAMPLE_MANIFEST = TRACES_DIR / "example_manifest.json"
POLICIES = ("sloserve", "ray-default", "static-full", "static-compressed", "threshold")
PROVISION_ATTAINMENT = 0.99


def default_config(manifest: VariantManifest) -> AppConfig:
    """Every manifest variant; the best keeps 1..4 replicas and one warm replica of a *bridge* (of
    the variants with more capacity per replica than the best, the best quality one) bridges cold
    starts; the rest scale 0..4; a budget of 6 replicas."""
    entries = sorted(manifest.variants, key=lambda e: (-e.quality.agreement, e.name))
    caps = capacities(manifest, [VariantBounds(name=e.name) for e in entries], AppConfig().slo)
    best = entries[0].name
    faster = [e for e in entries[1:] if caps[e.name].rps > caps[best].rps]
    bridge = faster[0].name if faster else None  # entries are best quality first
    variants = [
        VariantConfig(name=e.name, num_replicas=int(e.name in (best, bridge)), min_replicas=int(e.name in (best, bridge)),
                      max_replicas=4, weight=float(e.name == best))
        for e in entries
    ]
    return AppConfig(variants=variants, controller=ControllerConfig(enabled=True, max_total_replicas=6))


def _fastest_compressed(config: AppConfig, caps_rps: dict[str, float], best: str) -> str:
    others = [v.name for v in config.variants if v.name != best]
    return max(others, key=lambda n: caps_rps[n]) if others else best


class Bench:
    """One trace's requests and everything needed to run any policy on them."""

    def __init__(self, trace: RateTrace, config: AppConfig, manifest: VariantManifest, args: argparse.Namespace):
        self.config, self.manifest, self.args = config, manifest, args
        inputs = PolicyInputs.of(config)
        caps = capacities(manifest, inputs.variants, inputs.slo)
        self.quality = {n: c.quality for n, c in caps.items()}
        self.caps_rps = {n: c.rps for n, c in caps.items()}
        self.best = max(self.quality, key=lambda n: (self.quality[n], n))
        self.full_replica_rps = self.caps_rps[self.best]
        self.trace = trace.in_rps(self.full_replica_rps)
        mix = {"interactive": 0.9, "batch": 0.1}
        if not set(mix) <= set(config.slo.classes):
            mix = {config.slo.default_class: 1.0}
        self.requests: list[SimRequest] = make_requests(self.trace, mix, args.seed)

    def run(self, policy: SimPolicy) -> SimRun:
        return simulate(self.requests, policy, self.config, self.manifest, self.trace.duration_s,
                        self.args.cold_start_s, self.args.slowdown, self.args.seed)

    def for_peak(self, name: str, variant: str) -> tuple[SimRun, dict[str, int]]:
        """Static replicas of `variant` that carry the peak rate at the target utilization."""
        per_replica = self.caps_rps[variant] * self.config.controller.target_utilization
        n = max(1, math.ceil(self.trace.peak / per_replica - 1e-9))
        return self.run(StaticPolicy(name, {variant: 1.0}, {variant: n})), {variant: n}

    def provisioned(self, name: str, variant: str) -> tuple[SimRun, dict[str, int]]:
        """Static replicas of `variant`: the fewest that reach the attainment bar on this trace."""
        def attempt(n: int) -> tuple[SimRun, float]:
            run = self.run(StaticPolicy(name, {variant: 1.0}, {variant: n}))
            return run, score(run, self.trace, self.config.slo, self.quality).attainment

        n = max(1, math.ceil(self.trace.peak / self.caps_rps[variant]))
        run, attained = attempt(n)
        while attained < PROVISION_ATTAINMENT and n < 64:
            n += 1
            run, attained = attempt(n)
        while n > 1:
            lower, lower_attained = attempt(n - 1)
            if lower_attained < PROVISION_ATTAINMENT:
                break
            n, run = n - 1, lower
        return run, {variant: n}

    def policy_run(self, name: str) -> tuple[SimRun, dict[str, int] | None]:
        cfg, best = self.config, self.best
        if name == "sloserve":
            return self.run(SloservePolicy(cfg, self.manifest)), None
        if name == "ray-default" or name.startswith("ray-default:"):
            v = cfg.variant(best)
            target = float(name.split(":", 1)[1]) if ":" in name else self.args.ray_target_ongoing
            policy = RayDefaultPolicy(best, v.min_replicas, min(v.max_replicas, cfg.controller.max_total_replicas),
                                      max(v.num_replicas, v.min_replicas, 1), target_ongoing_requests=target,
                                      name=name)
            return self.run(policy), None
        if name == "static-full":
            return self.for_peak(name, best)
        if name == "static-full-min":
            return self.provisioned(name, best)
        if name == "static-compressed":
            variant = self.args.static_compressed or _fastest_compressed(cfg, self.caps_rps, best)
            return self.for_peak(name, variant)
        if name.startswith(("static:", "static-min:")):
            variant = name.split(":", 1)[1]
            if variant not in self.quality:
                raise SystemExit(f"policy {name!r}: no variant {variant!r} (have {sorted(self.quality)})")
            return self.for_peak(name, variant) if name.startswith("static:") else self.provisioned(name, variant)
        if name == "threshold":
            ladder = sorted(self.quality, key=lambda n: (-self.quality[n], n))
            return self.run(ThresholdPolicy(cfg, ladder)), None
        raise SystemExit(
            f"unknown policy {name!r}: use {', '.join(POLICIES)}, static-full-min, static:<variant>, "
            "static-min:<variant> or ray-default:<target_ongoing_requests>"
        )


def run_trace(spec: str, config: AppConfig, manifest: VariantManifest, policies: list[str],
              args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, SimRun], Bench]:
    bench = Bench(load_rate_trace(spec), config, manifest, args)
    runs: dict[str, SimRun] = {}
    results: dict[str, PolicyResult] = {}
    for name in policies:
        runs[name], provisioned = bench.policy_run(name)
        results[name] = score(runs[name], bench.trace, config.slo, bench.quality, provisioned)
    checks = check_targets(bench.trace.name, results)
    return {
        "trace": bench.trace.name,
        "duration_s": bench.trace.duration_s,
        "full_replica_rps": bench.full_replica_rps,
        "peak_rps": bench.trace.peak,
        "num_requests": len(bench.requests),
        "targets_apply": is_target_trace(bench.trace.name),
        "policies": {n: _asdict(r) for n, r in results.items()},
        "targets": [_asdict(c) for c in checks],
    }, runs, bench


def _asdict(obj: PolicyResult | TargetCheck) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def _print_table(summary: dict[str, Any]) -> None:
    print(f"\n== trace {summary['trace']}: {summary['num_requests']} requests over {summary['duration_s']:.0f} s, "
          f"peak {summary['peak_rps']:.2f} rps (1 full replica = {summary['full_replica_rps']:.2f} rps)")
    print(f"{'policy':<18}{'attain':>8}{'viol':>6}{'goodput':>9}{'quality':>9}{'repl-s':>9}{'mean-r':>8}"
          f"{'mix/h':>7}{'recov-s':>9}  provisioned")
    for name, r in summary["policies"].items():
        recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.0f}"
        print(f"{name:<18}{r['attainment']:>8.2%}{r['violations']:>6}{r['goodput_rps']:>9.2f}{r['quality']:>9.4f}"
              f"{r['replica_seconds']:>9.0f}{r['mean_replicas']:>8.2f}{r['mix_changes_per_hour']:>7.1f}"
              f"{recovery:>9}  {r['provisioned'] or ''}")
    ours = summary["policies"].get("sloserve")
    if ours and ours["mix_changes_per_step"]:
        steps = " ".join(f"{up}/{back}" for up, back in ours["mix_changes_per_step"])
        print(f"sloserve mix changes per step (during/after): {steps}")
    rays = {n: r for n, r in summary["policies"].items() if n.startswith("ray-default")}
    if ours and len(rays) > 1:
        print(f"ray-default sweep vs sloserve ({ours['violations']} violations, {ours['replica_seconds']:.0f} replica-s):")
        print(f"  {'setting':<18}{'attain':>8}{'viol':>6}{'repl-s':>9}{'x cost':>8}  compared  sloserve 5x fewer")
        for name, r in rays.items():
            ratio = r["replica_seconds"] / ours["replica_seconds"] if ours["replica_seconds"] else float("inf")
            near = ratio <= RAY_COST_RATIO
            fewer = ("yes" if ours["violations"] * 5 <= r["violations"] else "NO") if near else "-"
            print(f"  {name:<18}{r['attainment']:>8.2%}{r['violations']:>6}{r['replica_seconds']:>9.0f}{ratio:>8.2f}"
                  f"  {'yes' if near else 'no':<8}  {fewer}")
    tag = "" if summary["targets_apply"] else " (informational: the issue sets them on step3x, burst, steady, steady-noisy)"
    for c in summary["targets"]:
        mark = "MET " if c["met"] else "MISS"
        extra = "" if c["primary"] else " (informational)"
        print(f"  [{mark}] {c['target']}: {c['value']}{extra}{tag}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load_tests.sim", description=__doc__.split("\n")[0])
    p.add_argument("--trace", action="append", required=True, help="built-in name or YAML/CSV file; repeat or comma-separate")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--manifest", default=str(EXAMPLE_MANIFEST), help="variants.json (default: the labelled example)")
    p.add_argument("--config", default=None, help="AppConfig YAML (default: one built from the manifest)")
    p.add_argument("--cold-start-s", type=float, default=None, help="default: controller.replica_cold_start_s")
    p.add_argument("--slowdown", type=float, default=1.0, help="true TPOT / manifest TPOT (tests online correction)")
    p.add_argument("--ray-target-ongoing", type=float, default=2.0, help="ray-default target_ongoing_requests")
    p.add_argument("--ray-sweep", default=None, metavar="N,N,...",
                   help="add ray-default:N for each target_ongoing_requests N (e.g. 1,2,4,8,16) and print the "
                        "sweep against sloserve")
    p.add_argument("--static-compressed", default=None, help="variant of static-compressed (default: fastest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--out", default=None, help="directory for summary.json, decisions and one PNG per trace")
    args = p.parse_args(argv)
    try:
        manifest = VariantManifest.load(args.manifest)
        config = load_config(args.config) if args.config else default_config(manifest)
        if args.cold_start_s is None:
            args.cold_start_s = config.controller.replica_cold_start_s
        policies = [x.strip() for x in args.policies.split(",") if x.strip()]
        if args.ray_sweep:
            sweep = [f"ray-default:{x.strip()}" for x in args.ray_sweep.split(",") if x.strip()]
            policies = [*policies, *(n for n in sweep if n not in policies)]
            if "sloserve" not in policies:
                policies.insert(0, "sloserve")
        traces = [t.strip() for spec in args.trace for t in spec.split(",") if t.strip()]
        out_dir = Path(args.out) if args.out else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        summaries = []
        for spec in traces:
            summary, runs, bench = run_trace(spec, config, manifest, policies, args)
            summaries.append(summary)
            if out_dir:
                plot(out_dir / f"{summary['trace']}.png", bench.trace, runs, config.slo)
                with (out_dir / f"{summary['trace']}-decisions.jsonl").open("w") as f:
                    for name, run in runs.items():
                        for t_s, code, reason in run.decisions:
                            f.write(json.dumps({"policy": name, "t_s": t_s, "reason_code": code, "reason": reason}) + "\n")
            if not args.json:
                _print_table(summary)
    except (ManifestError, ConfigError, TraceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"manifest": args.manifest, "hardware": manifest.hardware, "seed": args.seed,
              "cold_start_s": args.cold_start_s, "slowdown": args.slowdown,
              "controller": config.controller.model_dump(),
              "variants": {v.name: [v.min_replicas, v.max_replicas] for v in config.variants},
              "traces": summaries}
    if out_dir:
        (out_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
