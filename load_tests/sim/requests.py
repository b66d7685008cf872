"""The requests the simulator replays: Poisson arrivals along a rate trace.

`make_requests` draws arrivals of an `rps` `RateTrace` segment by segment, with log-normal prompt
and output lengths and SLO classes from a seeded RNG, so every policy replays the same requests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from load_tests.rate_trace import RateTrace

MEDIAN_PROMPT_TOKENS, MEDIAN_OUTPUT_TOKENS = 200.0, 110.0


@dataclass(frozen=True, slots=True)
class SimRequest:
    id: int
    arrival_s: float
    slo_class: str
    prompt_tokens: int
    output_tokens: int


def make_requests(trace: RateTrace, class_mix: dict[str, float], seed: int) -> list[SimRequest]:
    """Poisson arrivals of an `rps` trace; log-normal lengths; classes drawn from `class_mix`."""
    assert trace.unit == "rps", "convert the trace with in_rps() first"
    rng = random.Random(seed)
    classes, shares = list(class_mix), list(class_mix.values())
    out: list[SimRequest] = []
    for start_s, end_s, rate in trace.spans():
        t = start_s
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end_s:
                break
            prompt = min(1500, max(8, round(rng.lognormvariate(math.log(MEDIAN_PROMPT_TOKENS), 0.6))))
            output = min(400, max(4, round(rng.lognormvariate(math.log(MEDIAN_OUTPUT_TOKENS), 0.5))))
            cls = rng.choices(classes, shares)[0]
            out.append(SimRequest(len(out), t, cls, prompt, output))
    return out
