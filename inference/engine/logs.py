"""The engine's own log lines where a serving process shows them.

The `inference` loggers report startup progress at INFO (the compiled kernels' build, about a
minute once per machine; each compiled decode step; weight packing) and problems at WARNING.
Without a handler Python drops the INFO lines, so a replica's first start was silent for tens of
seconds. Ray forwards a worker's stderr to the driver with the actor's name in front.
"""

from __future__ import annotations

import logging

ENGINE_LOGGER = "inference"


def show_engine_log(level: int = logging.INFO) -> None:
    """Send the `inference` loggers' lines at `level` and above to stderr (once per process)."""
    engine_log = logging.getLogger(ENGINE_LOGGER)
    if engine_log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    engine_log.addHandler(handler)
    engine_log.setLevel(level)
    engine_log.propagate = False
