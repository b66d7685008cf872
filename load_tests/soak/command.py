"""`python -m load_tests soak`: capacity, then load at a share of it with replica kills and a
redeploy, then the verdict. Exit 0 when every target holds, 1 when one is missed, 2 on bad flags.

    python -m load_tests soak --config cluster/configs/local.yaml --duration 900 --kill-every-s 150
    python -m load_tests soak --base-url http://127.0.0.1:8000 --ray-address 127.0.0.1:6379 \\
        --config cluster/configs/local.yaml --duration 300 --kill-every-s 60 --request-rate 2

Without `--base-url` it starts Ray and the app from `--config` on a free loopback port and stops
both at the end; with it, it attaches to that server's Ray (`--ray-address`) and redeploys the
same `--config` there. Writes `soak.json` and `soak_requests.jsonl` to `--result-dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from load_tests.config import LoadTestError
from load_tests.gen.client import Target
from load_tests.gen.server_api import wait_ready
from load_tests.soak.plan import FaultEvent, SoakConfig, fault_plan
from load_tests.soak.ray_control import SoakCluster
from load_tests.soak.traffic import Load, measure_capacity, poisson_load
from load_tests.soak.verdict import Fault, RssSample, build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--config", dest="config_path", default="cluster/configs/local.yaml", help="sloserve config (started or redeployed)")
    a("--base-url", default=None, help="a running server (default: start the app from --config here)")
    a("--ray-address", default=None, help="its Ray cluster, e.g. 127.0.0.1:6379 (needed with --base-url)")
    a("--port", type=int, default=0, help="HTTP port of the self-started app (default: a free one)")
    a("--num-cpus", type=int, default=None, help="CPUs of the self-started Ray (default: twice the replicas' need)")
    a("--duration", dest="duration_s", type=float, default=900.0, help="seconds of load (default 900)")
    a("--request-rate", type=float, default=None, help="req/s (default: measured capacity x --capacity-fraction)")
    a("--capacity-fraction", type=float, default=0.8)
    a("--capacity-step-s", type=float, default=10.0, help="seconds per concurrency level of the capacity ramp")
    a("--max-capacity-concurrency", type=int, default=32)
    a("--kill-every-s", type=float, default=None, help="kill a serving replica every N s")
    a("--kill-at-s", default="", help="comma-separated kill times instead (s since the load started)")
    a("--redeploy-at-s", type=float, default=None, help="redeploy time (default: the middle, off any kill)")
    a("--no-redeploy", dest="redeploy", action="store_false")
    a("--redeploy-timeout-s", type=float, default=600.0, help="how long after the load a redeploy may still run")
    a("--request-deadline-s", type=float, default=120.0, help="a request still open after this is hung")
    a("--warmup-s", type=float, default=60.0, help="replica age of its RSS baseline")
    a("--rss-every-s", type=float, default=10.0)
    a("--max-rss-growth-pct", type=float, default=5.0)
    a("--input-len", type=int, default=64)
    a("--output-len", type=int, default=32)
    a("--seed", type=int, default=0)
    a("--result-dir", type=Path, default=None)
    a("--allow-remote", action="store_true")
    a("--quiet", action="store_true")


def _config(args: argparse.Namespace) -> SoakConfig:
    raw = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    try:
        raw["kill_at_s"] = [float(t) for t in raw["kill_at_s"].split(",") if t.strip()]
        return SoakConfig.model_validate(raw)
    except (ValueError, ValidationError) as e:
        raise LoadTestError(str(e).replace("\n", "; ")) from e


def _log(config: SoakConfig, message: str) -> None:
    if not config.quiet:
        print(message, file=sys.stderr, flush=True)


async def _in_thread(call: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(call)


class _Soak:
    def __init__(self, config: SoakConfig, cluster: SoakCluster, client: httpx.AsyncClient, target: Target) -> None:
        self.config, self.cluster, self.client, self.target = config, cluster, client, target
        self.faults: list[Fault] = []
        self.rss: list[RssSample] = []
        self.load = Load()
        self.start_perf = 0.0
        self.kills_done = 0

    def now_s(self) -> float:
        return time.perf_counter() - self.start_perf

    async def _fault(self, event: FaultEvent) -> None:
        start = self.now_s()
        target, error = "", None
        try:
            if event.kind == "kill":
                victims = await _in_thread(lambda: self.cluster.replicas(self.cluster.serving_deployments()))
                if not victims:
                    raise RuntimeError("no live replica of a serving deployment to kill")
                target = victims[self.kills_done % len(victims)]
                self.kills_done += 1
                start = self.now_s()
                await _in_thread(lambda: self.cluster.kill(target))
            else:
                target = self.config.config_path.name
                await _in_thread(self.cluster.redeploy)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:300]
        fault = Fault(event.kind, start, self.now_s(), target, error)
        self.faults.append(fault)
        _log(self.config, f"[{start:7.1f} s] {event.kind} {target} ({fault.end_s - start:.1f} s)"
                          + (f" FAILED: {error}" if error else ""))

    async def faults_task(self) -> None:
        for event in fault_plan(self.config):
            delay = event.at_s - self.now_s()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._fault(event)

    async def rss_task(self) -> None:
        while True:
            await self.sample_rss()
            await asyncio.sleep(self.config.rss_every_s)

    async def sample_rss(self) -> None:
        t = self.now_s()
        names = await _in_thread(self.cluster.replicas)
        for name, rss in (await _in_thread(lambda: self.cluster.rss_bytes(names))).items():
            self.rss.append(RssSample(t, name.split("::", 1)[1], rss))

    async def progress_task(self) -> None:
        while True:
            await asyncio.sleep(30.0)
            done = [t.result() for t in self.load.tasks if t.done()]
            _log(self.config, f"[{self.now_s():7.1f} s] sent {len(self.load.tasks)}, in flight {self.load.in_flight}, "
                              f"ok {sum(o.status == 'ok' for o in done)}, errors {sum(o.status == 'error' for o in done)}")

    async def kv_reads(self) -> list[dict[str, Any]]:
        """Per-variant KV stats once nothing is in flight; re-read for a few seconds until whole
        (aborted requests free their blocks on the replica's next step). Each read reaches one
        replica per variant, so it is read 3x the replicas of the largest variant."""
        reads: list[dict[str, Any]] = []
        wanted = 3 * max(v.num_replicas for v in self.cluster.config.variants)
        deadline = time.monotonic() + 15.0
        while True:
            resp = await self.client.get(f"{self.target.root_url}/v1/sloserve/stats", timeout=10.0)
            variants = resp.json()["variants"]
            read = {name: {"num_free_blocks": v["num_free_blocks"], "num_blocks": v["num_blocks"]}
                    for name, v in variants.items()}
            reads.append(read)
            whole = all(v["num_free_blocks"] == v["num_blocks"] for v in read.values())
            if (whole and len(reads) >= wanted) or time.monotonic() > deadline:
                return reads[-wanted:]
            await asyncio.sleep(0.5 if whole else 1.0)

    async def run(self, rate: float) -> dict[str, Any]:
        self.start_perf = time.perf_counter()
        helpers = [asyncio.create_task(self.rss_task()), asyncio.create_task(self.progress_task())]
        faults = asyncio.create_task(self.faults_task())
        try:
            await poisson_load(self.client, self.target, rate=rate, duration_s=self.config.duration_s,
                               output_len=self.config.output_len, input_len=self.config.input_len,
                               seed=self.config.seed, deadline_s=self.config.request_deadline_s,
                               start_perf=self.start_perf, load=self.load)
            outcomes = await self.load.outcomes()  # each request ends by its deadline
            # a redeploy still rolling finishes before the pools are read, within a bound
            await asyncio.wait({faults}, timeout=self.config.redeploy_timeout_s)
            if not faults.done():
                self.faults.append(Fault("redeploy", self.now_s(), self.now_s(), error=(
                    f"not finished {self.config.redeploy_timeout_s:g} s after the load ended")))
        finally:
            for task in [*helpers, faults]:
                task.cancel()
        duration_s = self.now_s()
        await self.sample_rss()
        kv = await self.kv_reads()
        report = build_report(outcomes, self.faults, self.rss, kv, warmup_s=self.config.warmup_s,
                              max_rss_growth_pct=self.config.max_rss_growth_pct, duration_s=duration_s)
        report["requests_detail"] = [o.as_dict() for o in outcomes]
        return report


async def _soak(config: SoakConfig, cluster: SoakCluster, base_url: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    timeout = httpx.Timeout(config.request_deadline_s, connect=min(config.request_deadline_s, 30.0))
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        models = await wait_ready(client, base_url, 120.0)
        if not models:
            raise LoadTestError(f"{base_url}/v1/models lists no model")
        target = Target(base_url, "completions", models[0], {}, temperature=0.0, ignore_eos=True)
        capacity: dict[str, Any] = {"fraction": config.capacity_fraction}
        if config.request_rate is None:
            measured, steps = await measure_capacity(
                client, target, step_s=config.capacity_step_s, max_concurrency=config.max_capacity_concurrency,
                output_len=config.output_len, input_len=config.input_len, seed=config.seed,
                deadline_s=config.request_deadline_s, quiet=config.quiet)
            rate = measured * config.capacity_fraction
            capacity.update(measured_req_s=round(measured, 3), steps=[
                {"concurrency": s.concurrency, "ok": s.ok, "failed": s.failed, "req_s": round(s.req_s, 3)} for s in steps])
        else:
            rate = config.request_rate
        capacity["rate_req_s"] = round(rate, 3)
        plan = [f"{e.kind}@{e.at_s:g}s" for e in fault_plan(config)]
        _log(config, f"soak: {base_url} model={models[0]} rate={rate:.2f} req/s for {config.duration_s:g} s; faults {plan}")
        report = await _Soak(config, cluster, client, target).run(rate)
    return {"capacity": capacity, **report}


def _print(report: dict[str, Any]) -> None:
    r, cap = report["requests"], report["capacity"]
    lines = [
        f"soak: {report['duration_s']} s at {cap['rate_req_s']} req/s"
        + (f" ({cap['fraction']:.0%} of measured {cap['measured_req_s']} req/s)" if "measured_req_s" in cap else ""),
        f"  requests: sent {r['sent']}, ok {r['ok']}, errors {r['errors']} (in flight on a killed replica "
        f"{r['errors_in_flight_on_kill']}, other {r['errors_unattributed']}), hung {r['hung']}, lost {r['lost']}",
        f"  latency: e2e p50 {report['latency_ms']['e2e_p50']} ms, p99 {report['latency_ms']['e2e_p99']} ms",
    ]
    lines += [f"  kill at {k['start_s']} s: {k['target']} ({k['in_flight']} in flight, {k['errors']} errors)"
              for k in report["kills"]]
    lines += [f"  redeploy {d['start_s']}..{d['end_s']} s: {d['requests_during']} requests during, {d['errors']} errors"
              for d in report["redeploys"]]
    lines.append(f"  KV pool whole at the end: {report['kv_pool']['whole']}")
    rss = report["rss"]
    lines.append(f"  replica RSS growth after {rss['warmup_s']:g} s warm-up: max {rss['max_growth_pct']} %")
    lines += [f"    {row['replica']}: {row.get('baseline_mb')} -> {row.get('end_mb')} MB ({row.get('growth_pct')} %)"
              for row in rss["replicas"] if "growth_pct" in row]
    verdict = report["verdict"]
    lines.append("  PASSED" if verdict["passed"] else "  FAILED: " + "; ".join(verdict["failures"]))
    print("\n".join(lines), flush=True)


def _write(report: dict[str, Any], result_dir: Path) -> None:
    result_dir.mkdir(parents=True, exist_ok=True)
    detail = report.pop("requests_detail")
    (result_dir / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(result_dir / "soak_requests.jsonl", "w") as f:
        for row in detail:
            f.write(json.dumps(row) + "\n")


def run(args: argparse.Namespace) -> int:
    from inference.schema.config import ConfigError, load_config

    config = _config(args)
    try:
        app_config = load_config(config.config_path)
    except ConfigError as e:
        raise LoadTestError(str(e)) from e
    if config.self_started:
        cluster, base_url = SoakCluster.start_local(app_config, config.config_path, config.port, config.num_cpus)
    else:
        assert config.base_url is not None and config.ray_address is not None
        cluster, base_url = SoakCluster.attach(app_config, config.config_path, config.ray_address), config.base_url
    try:
        report = asyncio.run(_soak(config, cluster, base_url.rstrip("/")))
    finally:
        cluster.stop()
    report["run"] = config.model_dump(mode="json")
    if config.result_dir is not None:
        _write(report, config.result_dir)
    else:
        report.pop("requests_detail")
    _print(report)
    return 0 if report["verdict"]["passed"] else 1
