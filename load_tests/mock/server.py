"""`python -m load_tests mock-server`: parse the flags, build the app, serve it with uvicorn.

Binds its own socket (so `--port 0` picks a free port) and prints one line
`mock-server listening on http://HOST:PORT` once bound, which scripts and tests wait for.
Loopback only unless `--allow-remote`. Runs until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import socket

from load_tests.config import LoadTestError, is_loopback_host
from load_tests.mock.app import MockSettings, build_app
from load_tests.mock.spec import Schedule, parse_schedule, parse_variant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 = any free port")
    parser.add_argument("--variants", nargs="+", default=["full:ttft_ms=50,tpot_ms=10"],
                        metavar="NAME:KEY=VAL,...",
                        help="keys: ttft_ms, tpot_ms, error_rate, stream_error_rate, tokens_per_chunk")
    parser.add_argument("--schedule", nargs="+", default=[], metavar="SECONDS:WEIGHTS",
                        help="e.g. 0:full 5:int8 10:full=0.3,int8=0.7 (default: even split)")
    parser.add_argument("--schedule-start", choices=["first-request", "start"], default="first-request",
                        help="schedule times count from the first request (default) or the server start")
    parser.add_argument("--model-name", default="mock-model", help="answers say '<model-name>:<variant>'")
    parser.add_argument("--no-controller", action="store_true", help="/controller/decisions answers 404")
    parser.add_argument("--max-inflight", type=int, default=None, help="past it: 429 with Retry-After")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")


def settings_from_args(args: argparse.Namespace) -> MockSettings:
    try:
        profiles = [parse_variant(v) for v in args.variants]
        names = [p.name for p in profiles]
        if len(set(names)) != len(names):
            raise ValueError(f"--variants: names must be unique, got {names}")
        steps = parse_schedule(args.schedule, names)
    except ValueError as e:
        raise LoadTestError(str(e)) from e
    if args.max_inflight is not None and args.max_inflight < 1:
        raise LoadTestError(f"--max-inflight must be >= 1, got {args.max_inflight}")
    return MockSettings(
        model_name=args.model_name,
        variants={p.name: p for p in profiles},
        schedule=Schedule(steps, args.seed),
        anchor=args.schedule_start,
        controller=not args.no_controller,
        max_inflight=args.max_inflight,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    if not args.allow_remote and not is_loopback_host(args.host):
        raise LoadTestError(f"refusing to bind {args.host!r}: loopback only (pass --allow-remote)")
    settings = settings_from_args(args)
    import uvicorn

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise LoadTestError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from e
    sock.listen(2048)  # connections made from here on wait in the backlog until uvicorn accepts
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(settings), log_level="warning", access_log=False))
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"mock-server listening on http://{shown}:{port}", flush=True)
    server.run(sockets=[sock])
    return 0
