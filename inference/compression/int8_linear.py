"""`Int8Linear`: int8 weights (per output channel) with dynamically quantized int8 activations on CPU.

The matmul is PyTorch's quantized `linear_dynamic` (fbgemm/x86 backend): weights are packed once
at conversion, each call quantizes its input per tensor and runs an int8 GEMM. On 2-core CPUs it
beats bf16 for decode-sized inputs (1..64 rows), where reading weights dominates: int8 reads half
the bytes. Inputs of any float dtype are accepted and outputs come back in that dtype, so the
module drops into a bf16 model. CPU only, inference only; not saved in a state dict (the variant
directory keeps the float weights and a recipe; conversion takes a second at load).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


class Int8Linear(nn.Module):
    """A drop-in for `nn.Linear` in inference: y = x @ dequant(W_int8)^T + b, int8 GEMM inside."""

    def __init__(self, linear: nn.Linear, reduce_range: bool = True) -> None:
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensor creation is deprecated but still the fbgemm path
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scales.double(), zero_points, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        self._packed: Any = torch.ops.quantized.linear_prepack(qweight, bias)
        # x86 int8 GEMMs (vpmaddubsw) can saturate with full 8-bit activations; 7 bits avoids it.
        self.reduce_range = reduce_range
        self.packed_nbytes = self.in_features * self.out_features + 8 * self.out_features
        self.num_logical_params = self.in_features * self.out_features + (0 if bias is None else self.out_features)
        # Shape-only stand-in so code that reads `weight.shape` (output widths) keeps working.
        self.weight = torch.empty((self.out_features, self.in_features), dtype=torch.int8, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.dtype != torch.float32:
            rows = rows.float()
        y = torch.ops.quantized.linear_dynamic(rows, self._packed, self.reduce_range)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"


def quantize_linears_int8(model: nn.Module, include_lm_head: bool = True) -> nn.Module:
    """Replace every `nn.Linear` of the decoder (and the LM head, unless told not to) in place."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        torch.backends.quantized.engine = "x86"
    targets: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if type(child) is nn.Linear and (include_lm_head or child_name != "lm_head"):
                targets.append((parent, child_name, child))
    for parent, child_name, child in targets:
        setattr(parent, child_name, Int8Linear(child))
    return model
