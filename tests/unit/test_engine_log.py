"""A serving process shows the engine's startup progress (INFO) and warnings, once each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_info_lines_reach_stderr_once() -> None:
    code = (
        "import logging\n"
        "from inference.engine.logs import show_engine_log\n"
        "logging.getLogger('inference.model.kernels').info('before')\n"  # no handler yet: dropped
        "show_engine_log(); show_engine_log()\n"
        "logging.getLogger('inference.model.kernels').info('building the kernels')\n"
        "logging.getLogger('inference.parallel.worker').warning('a warning')\n"
        "logging.getLogger('inference.parallel.worker').debug('a detail')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines == ["INFO inference.model.kernels: building the kernels", "WARNING inference.parallel.worker: a warning"]
