"""`sloserve up` says when /dev/shm holds DeepSpeed buffers that exited processes left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.commands.up import warn_leaked_shm


def test_leaked_buffers_are_reported_with_their_size_and_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for rank in (0, 1):
        (tmp_path / f"deepspeed_allreduce_buffer_0_127.0.0.1_29500_{rank}").write_bytes(b"\0" * (3 << 20))
    (tmp_path / "other_segment").write_bytes(b"\0" * (8 << 20))  # not DeepSpeed's: not counted
    assert warn_leaked_shm(tmp_path) == 6 << 20
    out = capsys.readouterr().out
    assert "2 DeepSpeed all-reduce buffers" in out and f"rm {tmp_path}/deepspeed_allreduce_buffer_*" in out


def test_nothing_is_said_without_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert warn_leaked_shm(tmp_path) == 0
    assert warn_leaked_shm(tmp_path / "missing") == 0
    assert capsys.readouterr().out == ""
