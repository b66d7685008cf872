"""`python -m load_tests COMMAND`: one module per subcommand, each with `add_arguments` and `run`.

Subcommand modules are imported only when chosen, so `--help` and flag errors come back fast and
the mock server never imports matplotlib. A `LoadTestError` (bad flag, file, or target) is printed
as one line and exits 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from load_tests.config import LoadTestError

# name -> (module, one-line help). The module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("load_tests.run_command", "one bounded load test against an OpenAI-compatible server"),
    "sweep": ("load_tests.sweep", "the same load test at a list of request rates or concurrencies"),
    "report": ("load_tests.report", "re-render a result directory's summary, time series and plots"),
    "compare": ("load_tests.compare", "two result directories side by side"),
    "mock-server": ("load_tests.mock.server", "a small OpenAI-compatible server with set latencies"),
    "profile": ("load_tests.profile_command", "measure each variant through the served stack, write the controller's manifest"),
    "soak": ("load_tests.soak.command", "a long run at ~80% of capacity with replica kills and a redeploy"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests",
        description="Load tests for OpenAI-compatible servers: streaming timing, SLO attainment and goodput "
        "per variant, controller switch events, plots. See load_tests/README.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv else None  # only the chosen command's module is imported
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except LoadTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
