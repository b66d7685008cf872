"""`sloserve render-k8s`: render the RayService and monitoring manifests of one profile, validated.

    sloserve render-k8s --config cluster/configs/gpu.yaml --profile gpu-prod --out k8s/gpu-prod

The profile defaults to the config's (gpu-prod when a variant runs on CUDA, else cpu-dev), the
output directory to `k8s/<profile>`. Invalid settings or manifests print messages naming the field
and exit 2 without writing anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.k8s import PROFILES
from inference.schema.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="AppConfig YAML file (e.g. cluster/configs/local.yaml)")
    parser.add_argument("--profile", choices=PROFILES, default=None, help="preset (default: from the config's devices)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: k8s/<profile>)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from a fresh render")


def run(args: argparse.Namespace) -> int:
    from cluster.k8s.profiles import infer_profile
    from cluster.k8s.render import render, write_files
    from cluster.k8s.validate import validate_rendered

    try:
        config = load_config(args.config)
        profile = args.profile or infer_profile(config)
        rendered = render(config, profile, str(args.config))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = validate_rendered(rendered)
    if problems:
        print("error: the rendered manifests are invalid:\n" + "\n".join(problems), file=sys.stderr)
        return 2
    out_dir: Path = args.out or Path("k8s") / profile
    if args.check:
        stale = [p for p, text in rendered.files.items() if not (out_dir / p).is_file() or (out_dir / p).read_text() != text]
        for path in stale:
            print(f"differs from a fresh render: {out_dir / path}", file=sys.stderr)
        return 1 if stale else 0
    extra = write_files(rendered.files, out_dir)
    for extra_path in extra:
        print(f"warning: {extra_path} was not produced by this render (stale?)", file=sys.stderr)
    groups = ", ".join(f"{g.name}-workers {g.min_workers}..{g.max_workers} pods" for g in rendered.groups)
    print(f"wrote {len(rendered.files)} files to {out_dir} (profile {profile}; {groups})")
    return 0
