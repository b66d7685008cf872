"""The compiled kernels' build lock: a build killed mid-way must not hang the next replica.

torch serialises extension builds with a lock file and waits on it forever; a replica stopped while
it built (Serve replacing replicas after its controller restarted) left that file behind, and every
replica started after it hung in `__init__`. sloserve holds an `fcntl.flock` around the build,
which the kernel releases when its holder dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.model.kernels import FLOCK_NAME, SOURCES, _build_dir, build_lock

ROOT = Path(__file__).resolve().parents[2]


def _holder(build: Path) -> subprocess.Popen[str]:
    """A process that takes the build flock, says so, and sleeps."""
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(build / FLOCK_NAME)!r}, os.O_CREAT | os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_stale_torch_lock_is_removed_under_the_flock(tmp_path: Path) -> None:
    (tmp_path / "lock").touch()  # what a killed torch build leaves
    with build_lock(tmp_path, wait_s=5):
        assert not (tmp_path / "lock").exists()


def test_a_live_builder_is_waited_for_and_a_killed_one_releases(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="held"), build_lock(tmp_path, wait_s=0.6):
            pass
        assert time.monotonic() - started >= 0.5
        (tmp_path / "lock").touch()  # the holder is "building"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with build_lock(tmp_path, wait_s=5):  # the kernel released the dead holder's flock
            assert not (tmp_path / "lock").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(os.environ.get("SLOSERVE_DISABLE_KERNELS") == "1", reason="kernels disabled")
def test_the_kernels_load_past_a_stale_torch_lock() -> None:
    """The real build directory with a fresh stale lock: the old code waited on it forever (it
    removed only locks older than 10 minutes)."""
    build = _build_dir([ROOT / "inference" / "model" / "kernels" / name for name in SOURCES])
    (build / "lock").touch()
    code = "from inference.model.kernels import _module; assert _module() is not None, 'kernels unavailable'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (build / "lock").exists()
