"""The `sloserve` command line: one subcommand per module, each exposing `add_arguments` and `run`.

Subcommand modules import their heavy dependencies (torch, ray) inside `run`, so `sloserve --help`
and config errors come back in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). The module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("cluster.commands.up", "start a local Ray, deploy the app, serve until Ctrl-C"),
    "deploy": ("cluster.commands.deploy", "deploy the app to an existing Ray cluster"),
    "status": ("cluster.commands.status", "show the app's deployments and replicas"),
    "generate": ("cluster.commands.generate", "generate from a model in this process (no Ray)"),
    "compress": ("inference.compression.cli", "make and measure compressed variants, write variants.json"),
    "render-k8s": ("cluster.k8s.cli", "render the KubeRay RayService and monitoring manifests"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sloserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)  # a subcommand that cannot import is an error, never skipped
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
