"""Optional compiled CPU kernels, built once with the machine's compiler and cached by torch.

`paged_decode_attention()` returns the compiled op, or None where it cannot be built (no
compiler, not CPU, `SLOSERVE_DISABLE_KERNELS=1`); callers then use the pure-torch path, which
the tests compare it against.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


@functools.cache
def paged_decode_attention() -> Callable | None:  # type: ignore[type-arg]
    if os.environ.get("SLOSERVE_DISABLE_KERNELS") == "1":
        return None
    try:
        from torch.utils.cpp_extension import load

        source = Path(__file__).with_name("paged_decode_attention.cpp")
        module = load(
            name="sloserve_paged_decode_attention",
            sources=[str(source)],
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
        return module.paged_decode_attention  # type: ignore[no-any-return]
    except Exception as e:  # no compiler, headers, ...: the torch path serves
        log.warning("compiled paged attention unavailable (%s); using the torch path", e)
        return None
