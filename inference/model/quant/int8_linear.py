"""`Int8Linear`: weight-only int8 (per output channel) linear layer for CPU inference.

Weights are stored as int8 with one scale per output channel (a quarter of the bytes of fp32, half
of bf16); activations stay floating point, so quality stays close to the float model. Two paths by rows:
  decode (<= `max_kernel_rows` rows): `torch._weight_int8pack_mm`, which reads int8 weights
      directly; decode is bound by reading weights, so this is where int8 pays. The kernel always
      runs with bf16 activations and scales: with fp32 ones torch 2.13 takes a slow generic path
      (measured on a 2-core AVX2 EPYC, 576x1728, 1 row: fp32 activations 474 us, bf16 49 us,
      fp32 dense linear 96 us);
  prefill / large batches: convert the int8 weight to the input dtype and run the dense matmul,
      scaling the output, because the int8 kernel scales badly with rows. Crossover measured on
      the same machine (three decoder matmuls, fp32 model): 12 rows int8 1.03 ms vs fp32 1.41 ms,
      16 rows 1.37 vs 1.26; so the kernel serves up to 12 rows. Above that the conversion costs
      more than reading fp32 weights (32 rows: 2.59 vs 1.93 ms): int8 is a batch-1 latency and
      memory variant on CPU, not a throughput one.
Measured on this project's CPU: dynamic int8 activations (fbgemm `linear_dynamic`, per-tensor)
were faster but cut greedy agreement with the full model to ~0.4, so they are not used.
Not saved in a state dict: variant directories keep float weights plus a recipe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """A drop-in for `nn.Linear` in inference: y = x @ (W_int8 * scale)^T + b."""

    qweight: torch.Tensor
    scales: torch.Tensor
    kernel_scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, max_kernel_rows: int = 12) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        dtype = linear.weight.dtype
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("qweight", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("kernel_scales", scales.to(torch.bfloat16))
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.register_buffer("bias", bias)
        self.max_kernel_rows = max_kernel_rows
        self.num_logical_params = self.in_features * self.out_features + (0 if bias is None else self.out_features)
        # Shape-only stand-in so code that reads `weight.shape` (output widths) keeps working.
        self.weight = torch.empty((self.out_features, self.in_features), dtype=torch.int8, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        dtype = self.scales.dtype
        if rows.shape[0] <= self.max_kernel_rows and rows.device.type == "cpu":
            y = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.qweight, self.kernel_scales).to(dtype)
            if self.bias is not None:
                y = y + self.bias
        else:  # scale the output columns, not the weight: one temporary instead of two
            y = F.linear(rows.to(dtype), self.qweight.to(dtype)) * self.scales
            if self.bias is not None:
                y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_linears_int8(model: nn.Module, include_lm_head: bool = True) -> nn.Module:
    """Replace every `nn.Linear` of the decoder (and the LM head, unless told not to) in place."""
    targets: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if type(child) is nn.Linear and (include_lm_head or child_name != "lm_head"):
                targets.append((parent, child_name, child))
    for parent, child_name, child in targets:
        setattr(parent, child_name, Int8Linear(child))
    return model
