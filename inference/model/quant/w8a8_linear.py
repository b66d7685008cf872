"""`W8A8Linear`: int8 compute — int8 weights and int8 activations, the product in int32.

Weights are int8 per output channel; activations are quantized at run time per token (one scale a
row), after SmoothQuant smoothing: each input channel j is divided by s_j and the weight's column
j multiplied by it, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), which moves the activations'
outlier channels into the weights, where per-channel scales absorb them. The int8 x int8 product
accumulates in int32 and is scaled back to fp32 by (token scale x channel scale).

The int8 GEMM, by device (`int8_gemm_backend`):
  cpu   oneDNN's u8 x s8 GEMM (`onednn::qlinear_pointwise`, the x86 inductor quantization op):
        activations go as u8 with zero point 128. With VNNI (`vpdpbusd`) weights take 8 bits.
        Without it (the AVX2 kind) oneDNN multiplies with `vpmaddubsw`, whose int16 pair sums
        saturate past 32767 (255 x 127 x 2 = 64770): one side must lose a bit there. Measured on
        the packaged model (fake quantization, greedy agreement / perplexity, full 24.57): 7-bit
        activations 0.872 / 25.52, 7-bit weights 0.896 / 24.85, both 8-bit 0.924 / 24.76; so the
        weights take 7 bits (|q| <= 63, pairs <= 32130). `torch._int_mm` is not used on CPU: on
        the AVX2 kind it ran a reference loop, 20 ms for 32 x 576 -> 1536 against fp32's 0.64;
  cuda  `torch._int_mm` (cuBLASLt; it refuses 16 rows or fewer, so those are padded).
FP8 (`fp8-compute`): the same scheme in float8 e4m3 (weights per channel, activations per token,
scales to 448, the format's largest value) through `torch._scaled_mm` with row-wise scales (FP8
tensor cores: CUDA compute capability 8.9+, Ada and Hopper). On CPU `_scaled_mm` is torch's
reference loop: right for measuring quality, not fast.
Decode steps of a few rows (`SMALL_ROWS`) skip the activation quantization where the compiled CPU
kernels build: a few rows are bound by reading the weights, not by multiplying, and a GEMM call
with its quantization costs more than the product at one row. Where the float weights were
exactly 4- or 8-bit (the packaged GGUF model's), those steps read the exact packed values
(`kernels.pack_exact`): batch-1 decode is then the full model's own, 0.75 bytes a weight; else the
int8 weights go through the 8-bit small-row kernel with fp32 activations, 1.125 bytes a weight.
So this variant computes like the full model at a few sequences and in int8 past them: at a low
load it is the full model, and int8 pays where the batch makes the GEMMs compute-bound.

Why per token with smoothing: per-tensor activation scales cut the packaged model's greedy
agreement to ~0.4, per token alone to 0.889, per token with smoothing (alpha 0.5) kept 0.929
(issue 27's fake-quantization figures; `calibrate.py` measures this module itself).
Linears that share an input (q/k/v, gate/up) share the smoothing vector, so `concat` fuses them
into one quantization and one GEMM.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.model.dtypes import cpu_model
from inference.model.kernels import pack_exact, q8_linear_op, quantize_rows_op

QMAX = 127.0
FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
SMALL_ROWS = 4  # rows up to which a CPU step reads the int8 weights with fp32 activations
INT_MM_MIN_ROWS = 16  # `torch._int_mm` on CUDA needs more rows than this (a decode step of a few sequences has fewer)


@functools.cache
def cpu_has_vnni() -> bool:
    """AVX512-VNNI, AVX-VNNI or AMX-INT8: int8 dot products that accumulate in int32 directly."""
    _, flags = cpu_model()
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def weight_qmax(device: torch.device) -> float:
    """127 where the int8 GEMM cannot saturate, 63 on x86 CPUs without VNNI (see the module doc)."""
    return QMAX if device.type != "cpu" or cpu_has_vnni() else 63.0


def int8_gemm_backend(device: torch.device) -> str:
    """Which int8 GEMM runs on `device`: 'onednn' (CPU), '_int_mm' (CUDA, or a CPU torch without oneDNN)."""
    if device.type == "cpu" and hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available():
        return "onednn"
    return "_int_mm"


def quantize_per_token(x: torch.Tensor, qmax: float = QMAX) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (int8 [M, K], fp32 scale [M, 1]) with x ~ q * scale, |q| <= qmax."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / qmax
    return torch.round(x / scale).to(torch.int8), scale


class W8A8Linear(nn.Module):
    """A drop-in for a float `nn.Linear` in inference: y = (q(x/s) @ q(W*s)^T) * scales + b."""

    qweight: torch.Tensor  # int8 [N, K]
    weight_scales: torch.Tensor  # fp32 [N]
    inv_smooth: torch.Tensor | None  # fp32 [K]: 1 / s
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, smooth: torch.Tensor | None,
                 fmt: str = "int8") -> None:
        """`weight` [N, K] float, `smooth` [K] (s, > 0) or None for no smoothing; `fmt` 'int8' or 'fp8'."""
        super().__init__()
        w = weight.detach().float()
        # before smoothing: the model's own values (the int8 CPU path's few-row steps read them)
        exact = pack_exact(w) if w.device.type == "cpu" and fmt == "int8" else None
        if smooth is not None:
            w = w * smooth.float().to(w.device)[None, :]
        if fmt == "fp8":
            scales = w.abs().amax(dim=1).clamp(min=1e-8) / FP8_MAX
            qweight = (w / scales[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
        elif fmt == "int8":
            wmax = weight_qmax(w.device)
            scales = w.abs().amax(dim=1).clamp(min=1e-8) / wmax
            qweight = torch.round(w / scales[:, None]).clamp_(-wmax, wmax).to(torch.int8)
        else:
            raise ValueError(f"unknown W8A8 format {fmt!r}; known: int8, fp8")
        self._setup(qweight, scales, None if smooth is None else 1.0 / smooth.float().to(w.device),
                    None if bias is None else bias.detach().float(), exact)

    def _setup(self, qweight: torch.Tensor, scales: torch.Tensor, inv_smooth: torch.Tensor | None,
               bias: torch.Tensor | None, exact: tuple[Any, ...] | None = None) -> None:
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("weight_scales", scales.contiguous())
        self.register_buffer("inv_smooth", inv_smooth)
        self.register_buffer("bias", bias)
        self.out_features, self.in_features = int(qweight.shape[0]), int(qweight.shape[1])
        # Shape-only stand-in so code that reads `weight.shape` (output widths) keeps working.
        self.weight = torch.empty((self.out_features, self.in_features), dtype=torch.int8, device="meta")
        device = qweight.device
        self.fmt = "fp8" if qweight.dtype == FP8 else "int8"
        self.backend = "_scaled_mm" if self.fmt == "fp8" else int8_gemm_backend(device)
        self.qmax = FP8_MAX if self.fmt == "fp8" else QMAX  # activations: 8 bits, per token
        self.zero_point = 128 if self.backend == "onednn" else 0
        self.quantize = quantize_rows_op() if device.type == "cpu" else None
        self.packed: torch.Tensor | None = None
        if self.backend == "onednn":
            self.packed = torch.ops.onednn.qlinear_prepack(self.qweight, None)
            self.w_zero_points = torch.zeros(self.out_features, dtype=torch.int64)
        # few-row steps: the 8-bit small-row kernel over the same int8 weights (one scale per group of 32)
        self.small = (q8_linear_op() if device.type == "cpu" and self.fmt == "int8" and self.in_features % 32 == 0
                      else None)
        self.group_scales = (None if self.small is None else
                             self.weight_scales[:, None].expand(-1, self.in_features // 32).contiguous())
        # or, where the float weights were exactly 4- or 8-bit (a GGUF's), those exact packed values
        self.exact = exact

    @classmethod
    def from_linear(cls, linear: nn.Linear, smooth: torch.Tensor | None, fmt: str = "int8") -> W8A8Linear:
        return cls(linear.weight, linear.bias, smooth, fmt)

    @classmethod
    def concat(cls, parts: list[W8A8Linear]) -> W8A8Linear:
        """One module computing the parts' outputs side by side (they share their input's smoothing)."""
        first = parts[0]

        def same_smoothing(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))

        if not all(same_smoothing(p.inv_smooth, first.inv_smooth) for p in parts):
            raise ValueError("only linears with the same input smoothing can be fused")
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        bias = None
        if any(p.bias is not None for p in parts):
            bias = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features) for p in parts])
        exact = None
        packs = [p.exact for p in parts]
        if all(pk is not None and pk[0] is packs[0][0] for pk in packs):  # type: ignore[index]
            exact = (packs[0][0], *(torch.cat([pk[i] for pk in packs]).contiguous()  # type: ignore[index]
                                    for i in range(1, len(packs[0]))))  # type: ignore[arg-type]
        fused._setup(torch.cat([p.qweight for p in parts]), torch.cat([p.weight_scales for p in parts]),
                     first.inv_smooth, bias, exact)
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        if self.exact is not None and rows.shape[0] <= SMALL_ROWS:  # the float model's exact values
            linear, packed, *group_scales = self.exact
            y = linear(rows, packed, *group_scales, self.qweight, self.bias)
        elif self.small is not None and rows.shape[0] <= SMALL_ROWS:
            smoothed = rows if self.inv_smooth is None else rows * self.inv_smooth
            y = self.small(smoothed, self.qweight, self.group_scales, self.qweight, self.bias)
        else:
            y = self._gemm(rows)
            if self.bias is not None:
                y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def quantize_activations(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [M, K] fp32 (not smoothed) -> (codes [M, K], scale [M, 1]) with
        rows / s ~ (codes - zero_point) * scale: u8 for oneDNN, int8 (zero point 0) for `_int_mm`,
        float8 e4m3 for `_scaled_mm`."""
        if self.backend == "onednn" and self.quantize is not None:  # one pass in C++
            return self.quantize(rows, self.inv_smooth, self.qmax, self.zero_point)  # type: ignore[no-any-return]
        if self.inv_smooth is not None:
            rows = rows * self.inv_smooth
        if self.fmt == "fp8":
            scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / FP8_MAX
            return (rows / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale
        q, scale = quantize_per_token(rows, self.qmax)
        if self.backend == "onednn":
            return (q.to(torch.int16) + self.zero_point).to(torch.uint8), scale
        return q, scale

    def _gemm(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [M, K] fp32 -> fp32 [M, N], activations quantized per token."""
        codes, scale = self.quantize_activations(rows)
        if self.backend == "_scaled_mm":  # row-wise scales; cuBLASLt's FP8 GEMM writes bf16 with them
            return torch._scaled_mm(codes, self.qweight.t(), scale_a=scale, scale_b=self.weight_scales[None, :],
                                    out_dtype=torch.bfloat16).float()
        if self.backend == "onednn":
            y = torch.ops.onednn.qlinear_pointwise(
                codes, 1.0, self.zero_point, self.packed, self.weight_scales, self.w_zero_points, None,
                1.0, 0, torch.float32, "none", [], "")
            return y * scale  # type: ignore[no-any-return]
        rows_in = codes.shape[0]
        if rows_in <= INT_MM_MIN_ROWS:  # cuBLASLt's int8 GEMM refuses 16 rows or fewer: pad with zero rows
            codes = F.pad(codes, (0, 0, 0, INT_MM_MIN_ROWS + 1 - rows_in))
        return torch._int_mm(codes, self.qweight.t())[:rows_in].float() * (scale * self.weight_scales)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this module computes with, smoothing undone ([N, K]): for tests."""
        w = self.qweight.float() * self.weight_scales[:, None]
        return w if self.inv_smooth is None else w * self.inv_smooth[None, :]

    def extra_repr(self) -> str:
        smoothed = "smoothed" if self.inv_smooth is not None else "not smoothed"
        if self.fmt == "fp8":
            weights = "fp8 e4m3 weights"
        else:
            weights = f"{8 if int(self.qweight.abs().max()) > 63 else 7}-bit weights"
        return (f"in_features={self.in_features}, out_features={self.out_features}, W8A8 per token "
                f"({self.backend}, {weights}), {smoothed}")


def smoothing(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's s [K] for linears sharing one input: max|X_j|^a / max_over_their_rows|W_j|^(1-a)."""
    w_absmax = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def reference_linear(x: torch.Tensor, module: W8A8Linear) -> torch.Tensor:
    """What `module` computes past `SMALL_ROWS` rows, in plain float ops (fake quantization): for tests."""
    codes, scale = module.quantize_activations(x.reshape(-1, module.in_features).float().contiguous())
    w = module.qweight.float() * module.weight_scales[:, None]
    activations = (codes.float() - module.zero_point) * scale
    return F.linear(activations, w, module.bias).reshape(*x.shape[:-1], module.out_features)
