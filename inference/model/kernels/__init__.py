"""Optional compiled CPU kernels, built once with the machine's compiler and cached by torch.

`paged_decode_attention()` returns the compiled attention, `small_linear_op()` the few-row fp32
linear, each None where the kernels cannot be built (no compiler, not CPU,
`SLOSERVE_DISABLE_KERNELS=1`); callers then use the pure-torch path, which the tests compare
them against. Both sources build into one module.

The build goes to a directory named after a hash of the sources, the flags, and the torch and
Python it builds against, with the sources copied in: checkouts and virtual environments that
build the same thing share one build and never rebuild each other's (the build file names the
source paths and torch's headers, so a shared directory rebuilt, about a minute, whenever another
checkout had loaded last).

Builds are serialised by `fcntl.flock` on a file in that directory, which the kernel releases
when its holder dies. torch's own lock is a file that it waits on forever, and a build killed
mid-way (a replica stopped while it starts) leaves it behind: every replica started after that
hung in `__init__`. Holding the flock, a process knows that torch's lock file is stale and removes
it. A process that waits longer than `BUILD_WAIT_S` for another's build serves the torch paths.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
NAME = "sloserve_paged_decode_attention"
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
BUILD_WAIT_S = 600.0  # a build takes about a minute on 2 cores; waiting longer means something is wrong
FLOCK_NAME = "sloserve.flock"


SOURCES = ("paged_decode_attention.cpp", "small_linear.cpp")


def _build_dir(sources: list[Path]) -> Path:
    """The content-addressed build directory, with the sources copied in (once: a fresh copy's
    mtime would make ninja rebuild)."""
    import torch
    from torch.utils.cpp_extension import _get_build_directory

    contents = {source: source.read_bytes() for source in sources}
    against = f"{' '.join(CFLAGS)}|{torch.__version__}|{Path(torch.__file__).parent}|{sys.version}"
    digest = hashlib.sha256(b"".join(contents.values()) + against.encode()).hexdigest()[:12]
    build = Path(_get_build_directory(f"{NAME}_{digest}", verbose=False))
    for source, content in contents.items():
        copy = build / "src" / source.name
        if not copy.exists() or copy.read_bytes() != content:
            copy.parent.mkdir(parents=True, exist_ok=True)
            partial = copy.with_name(f".{copy.name}.{os.getpid()}")
            partial.write_bytes(content)
            os.replace(partial, copy)  # atomic: a concurrent reader sees the old file or the new
    return build


@contextmanager
def build_lock(build: Path, wait_s: float = BUILD_WAIT_S) -> Iterator[None]:
    """Hold the build directory's flock (waiting at most `wait_s`, else TimeoutError). While it is
    held no other sloserve process builds or loads there, so torch's lock file, if any, is stale."""
    fd = os.open(build / FLOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for another process building the CPU kernels in %s", build)
                    waited = True
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another process has held {build / FLOCK_NAME} for over {wait_s:.0f} s") from None
                time.sleep(0.2)
        stale = build / "lock"
        if stale.exists():
            log.warning("removing torch's build lock %s, left by a build that was killed mid-way", stale)
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the flock


@functools.cache
def _module() -> Any | None:
    if os.environ.get("SLOSERVE_DISABLE_KERNELS") == "1":
        return None
    try:
        from torch.utils.cpp_extension import load

        build = _build_dir([Path(__file__).with_name(name) for name in SOURCES])
        if not (build / f"{NAME}.so").exists():
            log.info("building the compiled CPU kernels in %s (about a minute, once per machine)", build)
        with build_lock(build):
            return load(
                name=NAME,
                sources=[str(build / "src" / name) for name in SOURCES],
                extra_cflags=CFLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build),
                verbose=False,
            )
    except Exception as e:  # no compiler, headers, a build that never ends, ...: the torch path serves
        log.warning("compiled CPU kernels unavailable (%s); using the torch paths", e)
        return None


def paged_decode_attention() -> Callable | None:  # type: ignore[type-arg]
    module = _module()
    return None if module is None else module.paged_decode_attention


@functools.cache
def small_linear_op() -> Callable | None:  # type: ignore[type-arg]
    """`torch.ops.sloserve.small_linear(x, weight, bias)`: F.linear for fp32 or bf16 CPU tensors,
    computed by the kernel when x has at most 32 fp32 rows or 4 bf16 rows (a decode step of a
    few sequences; bf16 is widened to fp32 and the result rounded once), else by at::linear.

    Why: at a few rows a linear reads every weight once and does little else, and the library
    sgemv reads them at ~13 GB/s on the 2-core AMD EPYC at one thread or two, while the kernel
    streams ~25 GB/s with two; the packaged model's linears per token, batch 1: 41 -> 22 ms;
    batch 8: 70 -> 31 ms; batch 32: 110 -> 80 ms (docs/engine-step.md). A dispatcher op, so
    `torch.compile` keeps it in its graph.
    """
    if _module() is None:
        return None
    import torch

    @torch.library.register_fake("sloserve::small_linear")
    def _(x, weight, bias):  # type: ignore[no-untyped-def]
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    return torch.ops.sloserve.small_linear  # type: ignore[no-any-return]


@functools.cache
def decode_attention_op() -> Callable | None:  # type: ignore[type-arg]
    """`torch.ops.sloserve.paged_decode_write_attention`, or None where the kernel is unavailable.

    The KV write and the decode kernel as one torch op (registered by the kernel's C++ with the
    dispatcher), so `torch.compile` keeps it in its graph as one opaque call (a pybind function
    would break the graph) and its generated code calls it without Python in between: it writes
    the step's K/V rows into this layer's pool at `slots` (in place; the schema marks the pools
    mutated), then attends over the pool through the block tables. Same math as the eager path's
    index_copy_ + kernel, so the two agree bit for bit. Here: its shape function for tracing.
    """
    if paged_decode_attention() is None:
        return None
    import torch

    @torch.library.register_fake("sloserve::paged_decode_write_attention")
    def _(q, k, v, k_pool, v_pool, slots, tables, lens, block_size, scale):  # type: ignore[no-untyped-def]
        return q.new_empty(q.shape)

    return torch.ops.sloserve.paged_decode_write_attention  # type: ignore[no-any-return]


@functools.cache
def _q4_ops() -> tuple[Callable, Callable] | None:  # type: ignore[type-arg]
    """(`q4_linear`, `q4_dequantize`) from the kernels' module, with the linear's shape function."""
    if small_linear_op() is None:
        return None
    import torch

    @torch.library.register_fake("sloserve::q4_linear")
    def _(x, packed, scales, mins, weight, bias):  # type: ignore[no-untyped-def]
        return x.new_empty((*x.shape[:-1], packed.shape[0]))

    return torch.ops.sloserve.q4_linear, torch.ops.sloserve.q4_dequantize


@functools.cache
def _q8_ops() -> tuple[Callable, Callable] | None:  # type: ignore[type-arg]
    """(`q8_linear`, `q8_dequantize`) from the kernels' module, with the linear's shape function."""
    if small_linear_op() is None:
        return None
    import torch

    @torch.library.register_fake("sloserve::q8_linear")
    def _(x, packed, scales, weight, bias):  # type: ignore[no-untyped-def]
        return x.new_empty((*x.shape[:-1], packed.shape[0]))

    return torch.ops.sloserve.q8_linear, torch.ops.sloserve.q8_dequantize


def q8_linear_op() -> Callable | None:  # type: ignore[type-arg]
    """`torch.ops.sloserve.q8_linear(x, packed, scales, weight, bias)` over any int8 weights with
    one fp32 scale per group of 32 along K (up to `kMaxRows` fp32 rows), or None where the kernels
    are unavailable. For the int8-compute variant's few-row steps (`inference/model/quant/w8a8_linear.py`)."""
    ops = _q8_ops()
    return None if ops is None else ops[0]


@functools.cache
def quantize_rows_op() -> Callable | None:  # type: ignore[type-arg]
    """`torch.ops.sloserve.quantize_rows(x, inv_smooth, qmax, zero_point) -> (u8, scale)`: the
    int8-compute variant's per-token activation quantization in one pass, or None where the
    kernels are unavailable."""
    if _module() is None:
        return None
    import torch

    @torch.library.register_fake("sloserve::quantize_rows")
    def _(x, inv_smooth, qmax, zero_point):  # type: ignore[no-untyped-def]
        return x.new_empty(x.shape, dtype=torch.uint8), x.new_empty((x.shape[0], 1))

    return torch.ops.sloserve.quantize_rows  # type: ignore[no-any-return]


def q4_packing_enabled() -> bool:
    """Whether exactly-4-bit (and exactly-8-bit) weights are packed: the kernels build and
    `SLOSERVE_PACK_4BIT` is not "0"."""
    return os.environ.get("SLOSERVE_PACK_4BIT") != "0" and _q4_ops() is not None


def _groups_of_32(weight: Any, ops: Any) -> Any | None:
    """`weight` as [N, K/32, 32] where it may be packed (the kernels built, packing on, a 2-D fp32 CPU
    tensor, K a multiple of 32), else None."""
    import torch

    if ops is None or not q4_packing_enabled():
        return None
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2 or weight.shape[1] % 32:
        return None
    n, k = weight.shape
    return weight.reshape(n, k // 32, 32)


def _screened(pack: Callable, weight: Any) -> tuple[Any, ...] | None:  # type: ignore[type-arg]
    """`pack(weight)`, tried on the first row alone first: a weight that is not exactly 4- or 8-bit
    (any model not dequantized from a GGUF) nearly always shows it there, and the full check is
    several passes over every weight (~240 ms for a 49152 x 576 head, at each load). An exact first
    row proves nothing: the whole weight is still checked."""
    if weight.dim() == 2 and weight.shape[0] > 1 and pack(weight[:1]) is None:
        return None
    return pack(weight)  # type: ignore[no-any-return]


def pack_exact(weight: Any) -> tuple[Any, ...] | None:
    """`pack_q4_exact(weight)`, else `pack_q8_exact(weight)`: `(linear, packed, *scales)`, or None."""
    return pack_q4_exact(weight) or pack_q8_exact(weight)


def pack_q8_exact(weight: Any) -> tuple[Callable, Any, Any] | None:  # type: ignore[type-arg]
    """`(q8_linear, packed, scales)` when the fp32 `weight` [N, K] is exactly 8-bit, else None.

    Exactly 8-bit: every group of 32 values along K is d * q with q in -127..127 and d the fp16
    value of the group's largest magnitude / 127, which is what weights dequantized from a GGUF Q8_0
    file are (the packaged SmolLM2's embedding, tied to its LM head). Packed, a decode step reads
    1.125 bytes per weight instead of 4 (fp32) or 2 (bf16), and computes with the same fp32 values:
    `q8_linear` equals `small_linear` on `weight` bit for bit. None where the kernels are
    unavailable, K is not a multiple of 32, any group is not exact, or `SLOSERVE_PACK_4BIT=0`.
    """
    return _screened(_pack_q8, weight)  # type: ignore[return-value]


def _pack_q8(weight: Any) -> tuple[Callable, Any, Any] | None:  # type: ignore[type-arg]
    import torch

    ops = _q8_ops()
    groups = _groups_of_32(weight, ops)
    if ops is None or groups is None:
        return None
    n, k = weight.shape
    scales = (groups.abs().amax(-1) / 127).half().float()
    if not torch.isfinite(scales).all():
        return None
    q = (groups / torch.where(scales > 0, scales, 1.0)[..., None]).round_()
    if q.abs().max() > 127:
        return None
    packed = q.to(torch.int8).reshape(n, k).contiguous()
    linear, dequantize = ops
    if not torch.equal(dequantize(packed, scales), weight):
        return None
    return linear, packed, scales


def pack_q4_exact(weight: Any) -> tuple[Callable, Any, Any, Any] | None:  # type: ignore[type-arg]
    """`(q4_linear, packed, scales, mins)` when the fp32 `weight` [N, K] is exactly 4-bit, else None.

    Exactly 4-bit: every group of 32 values along K is d * q + m with q in 0..15 and d an fp16
    value, which is what weights dequantized from a GGUF Q4_1 file are (the packaged SmolLM2's
    decoder layers, all of them). Packed, a decode step reads 0.75 bytes per weight instead of 4,
    and computes with the same fp32 values: `q4_linear` equals `small_linear` on `weight` bit for
    bit (the packing is kept only if the kernel's own dequantization gives back `weight` exactly).
    None where the kernels are unavailable, K is not a multiple of 32, any group is not exact,
    or `SLOSERVE_PACK_4BIT=0`.
    """
    return _screened(_pack_q4, weight)  # type: ignore[return-value]


def _pack_q4(weight: Any) -> tuple[Callable, Any, Any, Any] | None:  # type: ignore[type-arg]
    import torch

    ops = _q4_ops()
    groups = _groups_of_32(weight, ops)
    if ops is None or groups is None:
        return None
    n, k = weight.shape
    mins = groups.amin(-1)
    scales = ((groups.amax(-1) - mins) / 15).half().float()
    if not torch.isfinite(scales).all():
        return None
    q = ((groups - mins[..., None]) / torch.where(scales > 0, scales, 1.0)[..., None]).round_()
    if q.min() < 0 or q.max() > 15:
        return None
    q = q.to(torch.uint8)
    packed = (q[..., :16] | (q[..., 16:] << 4)).reshape(n, k // 2).contiguous()
    linear, dequantize = ops
    if not torch.equal(dequantize(packed, scales, mins), weight):
        return None
    return linear, packed, scales, mins
