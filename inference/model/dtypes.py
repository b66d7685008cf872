"""`dtype: auto` — the compute dtype by measurement on CPU, by capability on CUDA.

On CPU a CPU flag does not say which dtype is faster: the Intel kind has AVX512-BF16 and still runs
bf16 GEMMs slower than fp32 (32x576->1536: 0.56 against 0.39 ms), and fp32 is exact where bf16
can tie two logits. So the first start on a machine times a decode-sized GEMM (through the kernel a
decode step uses) and a batch-sized one (at::linear) in both dtypes, well under a second, and picks
bf16 only where it is faster at both by `BF16_MIN_GAIN`. The choice is cached per CPU model,
thread count and torch (`$SLOSERVE_CACHE_DIR/dtype/`), logged, and carried in `DtypeChoice`.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
BF16_MIN_GAIN = 1.1  # bf16 must be this much faster at both sizes: fp32 is exact, so a near tie keeps it
# Probe shapes (rows, in, out): a decode step's few rows and a 32-sequence batch, model-sized but no model's.
DECODE_SHAPE = (1, 1024, 2816)
BATCH_SHAPE = (32, 1024, 2816)
_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True, slots=True)
class DtypeChoice:
    """What `dtype: auto` resolved to on this machine, and why."""

    dtype: str  # "bfloat16" | "float32" | "float16"
    reason: str
    cpu: str  # the CPU model and the flags that matter
    timings_ms: dict[str, float]  # fp32_decode, bf16_decode, fp32_batch, bf16_batch (CPU only)
    num_threads: int
    measured_at: str

    def summary(self) -> str:
        """One line for logs, `sloserve status` and a manifest's `hardware`."""
        t = self.timings_ms
        if not t:
            return f"{self.dtype} ({self.reason})"
        return (f"{self.dtype} (measured {self.measured_at}, {self.num_threads} threads: GEMM {DECODE_SHAPE[0]}-row "
                f"fp32 {t['fp32_decode']:.3f} / bf16 {t['bf16_decode']:.3f} ms, {BATCH_SHAPE[0]}-row "
                f"fp32 {t['fp32_batch']:.3f} / bf16 {t['bf16_batch']:.3f} ms; {self.reason})")


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and which of the flags that matter for matmul it has."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags_line = next((line for line in info.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    return name, [f for f in _FLAGS_OF_INTEREST if f in flags]


def cpu_label() -> str:
    """`cpu_model()` as one string, "AMD EPYC [avx2]": how manifests and dtype choices name a CPU."""
    return _label(*cpu_model())


def _label(name: str, flags: list[str]) -> str:
    return f"{name} [{' '.join(flags)}]"


def time_ms(fn: Callable[[], object], repeats: int) -> float:
    """The best of `repeats` timings of `fn()` (after one warm-up call): the least disturbed."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def measure_cpu_gemms(rounds: int = 3, repeats: int = 4) -> dict[str, float]:
    """Milliseconds of the probe GEMMs in fp32 and bf16, through the paths the engine takes: a
    decode step's rows through the compiled small-row kernel where it builds, a batch through
    at::linear. The four probes take turns for `rounds` rounds, and each keeps its best time: a
    start beside other work (replicas loading) disturbs all four alike instead of one."""
    from inference.model.kernels import small_linear_op

    small = small_linear_op()
    probes: dict[str, Callable[[], object]] = {}
    generator = torch.Generator().manual_seed(0)
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for size, (rows, k, n) in (("decode", DECODE_SHAPE), ("batch", BATCH_SHAPE)):
            x = torch.randn(rows, k, generator=generator).to(dtype)
            w = torch.randn(n, k, generator=generator).to(dtype)
            linear = small if size == "decode" and small is not None else torch.nn.functional.linear
            probes[f"{label}_{size}"] = functools.partial(linear, x, w, None)
    timings = dict.fromkeys(probes, float("inf"))
    with torch.inference_mode():
        for _ in range(rounds):
            for name, probe in probes.items():
                timings[name] = min(timings[name], time_ms(probe, repeats))
    return {k: round(v, 4) for k, v in timings.items()}


def choose_cpu_dtype(timings_ms: dict[str, float]) -> tuple[str, str]:
    """(dtype name, reason) from the probe timings."""
    gains = {size: timings_ms[f"fp32_{size}"] / max(timings_ms[f"bf16_{size}"], 1e-9) for size in ("decode", "batch")}
    said = ", ".join(f"{size} {gain:.2f}x" for size, gain in gains.items())
    if all(gain >= BF16_MIN_GAIN for gain in gains.values()):
        return "bfloat16", f"bf16 is faster than fp32 ({said}); logits stay fp32"
    return "float32", f"bf16 is not {BF16_MIN_GAIN}x faster than fp32 at both sizes ({said}); fp32 is exact"


def _cache_file(name: str, flags: list[str], num_threads: int) -> Path:
    from inference.model.model_loader import cache_root

    key = hashlib.sha256(f"{name}|{','.join(flags)}|{num_threads}|{torch.__version__}".encode()).hexdigest()[:16]
    return cache_root() / "dtype" / f"{key}.json"


@functools.cache
def cpu_dtype_choice() -> DtypeChoice:
    """This machine's `dtype: auto` on CPU: read from the cache, or measured once (under a file lock,
    so replicas starting together measure once, in turn, not against each other) and cached."""
    name, flags = cpu_model()
    num_threads = torch.get_num_threads()
    path = _cache_file(name, flags, num_threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            try:
                choice = DtypeChoice(**json.loads(path.read_text()))
                log.info("dtype auto: %s (cached in %s)", choice.summary(), path)
                return choice
            except (ValueError, TypeError) as e:
                log.warning("dtype auto: ignoring an unreadable cache file %s (%s); measuring again", path, e)
        timings = measure_cpu_gemms()
        dtype, reason = choose_cpu_dtype(timings)
        choice = DtypeChoice(dtype=dtype, reason=reason, cpu=_label(name, flags), timings_ms=timings,
                             num_threads=num_threads, measured_at=time.strftime("%Y-%m-%d"))
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(asdict(choice), indent=1))
        os.replace(partial, path)
    log.info("dtype auto: %s on %s", choice.summary(), choice.cpu)
    return choice


def torch_dtype(name: str) -> torch.dtype:
    return _NAMES[name]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    return torch_dtype(dtype_choice(name, device).dtype)


def dtype_choice(name: str, device: torch.device) -> DtypeChoice:
    """The dtype a variant computes in, and why (`name` is the config's: 'auto' or a dtype)."""
    if name != "auto":
        return DtypeChoice(dtype=name, reason="set in the config", cpu="", timings_ms={}, num_threads=0, measured_at="")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return DtypeChoice(dtype="bfloat16" if bf16 else "float16", reason=f"CUDA {'with' if bf16 else 'without'} bf16",
                           cpu="", timings_ms={}, num_threads=0, measured_at="")
    return cpu_dtype_choice()
