"""GPU checks (`make gpu-check`): skipped, with the reason printed (`-rs`), where torch sees no CUDA."""

from __future__ import annotations

import pytest
import torch


def cuda_skip_reason(min_devices: int = 1) -> str | None:
    if not torch.cuda.is_available():
        return f"needs CUDA: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device"
    if torch.cuda.device_count() < min_devices:
        return f"needs {min_devices} CUDA devices, torch sees {torch.cuda.device_count()}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/gpu/" not in str(item.fspath).replace("\\", "/"):
            continue
        item.add_marker(pytest.mark.gpu)
        marker = item.get_closest_marker("min_cuda_devices")
        reason = cuda_skip_reason(marker.args[0] if marker else 1)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
