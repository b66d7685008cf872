"""sloserve's own HTTP headers, each named once, and what a request's headers add to its `GenerateRequest`.

Every answer names its variant in VARIANT_HEADER (the load generator and the mock server read or
write the same name). A request may send SESSION_HEADER (replica affinity), TIMEOUT_HEADER (its
own timeout, at most the router's) and the SLO class header the config names
(`slo.class_header`). `request_fields` checks them and returns the `GenerateRequest` fields they
set; a bad value is an `InvalidRequestError` naming the header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inference.schema.config import SLOConfig
from inference.schema.errors import InvalidRequestError

VARIANT_HEADER = "x-sloserve-variant"
TIMEOUT_HEADER = "x-sloserve-timeout-s"
SESSION_HEADER = "x-session-id"


def request_fields(headers: Mapping[str, str], slo: SLOConfig, max_timeout_s: float) -> dict[str, Any]:
    """`session_id`, `slo_class` and `timeout_s` from the request's headers (None where not sent)."""
    slo_class = headers.get(slo.class_header)
    if slo_class is not None and slo_class not in slo.classes:
        raise InvalidRequestError(
            f"header {slo.class_header}: unknown SLO class {slo_class!r}; classes: {sorted(slo.classes)}",
            slo.class_header,
        )
    timeout_s = None
    if TIMEOUT_HEADER in headers:
        try:
            timeout_s = float(headers[TIMEOUT_HEADER])
        except ValueError as e:
            raise InvalidRequestError(f"header {TIMEOUT_HEADER} must be a number of seconds", TIMEOUT_HEADER) from e
        if not 0 < timeout_s <= max_timeout_s:
            raise InvalidRequestError(
                f"header {TIMEOUT_HEADER} must be in (0, {max_timeout_s}], got {timeout_s}", TIMEOUT_HEADER
            )
    return {"session_id": headers.get(SESSION_HEADER), "slo_class": slo_class, "timeout_s": timeout_s}
