"""`DecoderLayer`: one Llama-like decoder layer's weights and math, attention left to the caller.

Built from a Hugging Face layer (already wrapped by DeepSpeed): plain linear shards of q/k/v and
of gate/up are fused into one matmul each (`FusedLinear`); any other linear type (DeepSpeed's
row-parallel all-reducing layers, bitsandbytes, `Int8Linear`) is kept as the module it is. A
layer is `pre_attention` (norm, qkv, RoPE) -> attention over the KV pool -> `post_attention`
(o_proj, residual, norm, MLP, residual). Layers are `nn.Module`s so that `torch.compile` traces
one of them and reuses the graph for every other layer of the same shapes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.model.kernels import pack_exact, small_linear_op
from inference.model.quant.w8a8_linear import W8A8Linear


def _is_plain_linear(module: Any) -> bool:
    # DeepSpeed's column-parallel LinearLayer is a plain matmul in inference (its backward differs).
    return type(module) is nn.Linear or type(module).__name__ == "LinearLayer"


PACK_ATTR = "sloserve_pack"  # (linear op, packed, *scales) of a linear's fp32 weight, kept through a cast


def attach_exact_packs(model: Any) -> int:
    """Pack every exactly-4- or 8-bit `nn.Linear` of the decoder layers and the LM head while the
    weights are still fp32 (`pack_exact`), and keep the packing on the module (`PACK_ATTR`) for
    `FusedLinear`: called before a model is cast to bf16, whose rounding would lose the exact
    values. Returns how many were packed."""
    modules = [*model.model.layers.modules(), model.lm_head]
    count = 0
    for module in modules:
        if type(module) is nn.Linear and (pack := pack_exact(module.weight.detach())) is not None:
            setattr(module, PACK_ATTR, pack)
            count += 1
    return count


def _joined_packs(modules: list[Any], widths: list[int], k: int) -> tuple[Any, ...] | None:
    """The modules' packings (`attach_exact_packs`) concatenated along the outputs, if all have one of
    the same format that still matches their weight (a tensor-parallel shard does not); taken off
    the modules."""
    packs = [getattr(m, PACK_ATTR, None) for m in modules]
    for m in modules:
        if hasattr(m, PACK_ATTR):
            delattr(m, PACK_ATTR)
    if any(p is None or p[0] is not packs[0][0] or p[2].shape != (w, k // 32)  # type: ignore[index]
           for p, w in zip(packs, widths, strict=True)):
        return None
    if len(packs) == 1:
        return packs[0]
    return packs[0][0], *(torch.cat([p[i] for p in packs]).contiguous()  # type: ignore[index]
                          for i in range(1, len(packs[0])))  # type: ignore[arg-type]


class FusedLinear(nn.Module):
    """y = x W^T + b over the concatenated weights of plain linears (one matmul instead of several).

    fp32 and bf16 on CPU go through `small_linear_op` (where the kernels build): a decode step's
    few rows then stream the weights at two to three times the library's rate; more rows go to
    at::linear. Weights that are exactly 4-bit (dequantized from a GGUF Q4_1 file) or 8-bit (Q8_0)
    are also kept packed, and a decode step reads those instead: same values, a sixth (4-bit) or a
    quarter (8-bit) of the fp32 bytes (`pack_exact`). A bf16 model gets its packing from
    `attach_exact_packs`, made from the fp32 weights before the cast: its few-row steps then compute
    with the exact values in fp32."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, modules: list[Any]) -> None:
        super().__init__()
        widths = [int(m.weight.shape[0]) for m in modules]
        weights = [m.weight.detach() for m in modules]
        weight = (weights[0] if len(weights) == 1 else torch.cat(weights, dim=0)).contiguous()
        bias = None
        if any(m.bias is not None for m in modules):
            bias = torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(w)
                              for m, w in zip(modules, widths, strict=True)])
        # Point the modules at views of the fused tensor so the weights are not held twice.
        offset = 0
        for module, width in zip(modules, widths, strict=True):
            module.weight.data = weight[offset : offset + width]
            offset += width
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        cpu = weight.device.type == "cpu"
        self.small = small_linear_op() if cpu and weight.dtype in (torch.float32, torch.bfloat16) else None
        if self.small is None:
            pack = None
        elif any(hasattr(m, PACK_ATTR) for m in modules) or weight.dtype != torch.float32:
            # packed from the fp32 weights before a cast to bf16, if they were exact (also for an
            # fp32 LM head widened from bf16, whose values are no longer exact)
            pack = _joined_packs(modules, widths, int(weight.shape[1]))
        else:
            pack = pack_exact(weight)
        self.packed_linear = None if pack is None else pack[0]
        self.register_buffer("packed", None if pack is None else pack[1])
        self.register_buffer("pack_scales", None if pack is None else pack[2])
        self.register_buffer("pack_mins", None if pack is None or len(pack) < 4 else pack[3])  # 4-bit only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_linear is not None and self.pack_mins is not None:
            return self.packed_linear(x, self.packed, self.pack_scales, self.pack_mins, self.weight, self.bias)  # type: ignore[no-any-return]
        if self.packed_linear is not None:
            return self.packed_linear(x, self.packed, self.pack_scales, self.weight, self.bias)  # type: ignore[no-any-return]
        if self.small is not None:
            return self.small(x, self.weight, self.bias)  # type: ignore[no-any-return]
        return F.linear(x, self.weight, self.bias)


class ConcatLinear(nn.Module):
    """The concatenated outputs of linears that cannot be fused (quantized, or another type)."""

    def __init__(self, modules: list[Any]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.parts], dim=-1)


def fuse(modules: list[Any]) -> nn.Module:
    if all(_is_plain_linear(m) for m in modules):
        return FusedLinear(modules)
    if all(type(m) is W8A8Linear for m in modules):  # one activation quantization and one int8 GEMM
        return W8A8Linear.concat(modules)
    return ConcatLinear(modules)


def single(module: Any) -> nn.Module:
    """A plain linear as a `FusedLinear` of one (a bare F.linear); any other module as it is."""
    return FusedLinear([module]) if type(module) is nn.Linear else module  # type: ignore[no-any-return]


def out_width(module: Any) -> int:
    # out_features, not weight.shape: packed 4-bit weights (bitsandbytes nf4) have another shape
    return int(getattr(module, "out_features", None) or module.weight.shape[0])


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class DecoderLayer(nn.Module):
    input_norm: torch.Tensor
    post_norm: torch.Tensor

    def __init__(self, layer: Any, head_dim: int, eps: float) -> None:
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        widths = [out_width(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
        self.head_dim, self.eps = head_dim, eps
        self.num_heads = widths[0] // head_dim  # this rank's share under tensor parallelism
        self.num_kv_heads = widths[1] // head_dim
        self.register_buffer("input_norm", layer.input_layernorm.weight.detach())
        self.register_buffer("post_norm", layer.post_attention_layernorm.weight.detach())
        self.qkv = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o_proj = single(attn.o_proj)  # row-parallel under TP: all-reduces inside
        self.gate_up = fuse([mlp.gate_proj, mlp.up_proj])
        self.down = single(mlp.down_proj)

    def pre_attention(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, heads, d] and k [T, kv_heads, d] with RoPE applied, v [T, kv_heads, d]."""
        num_tokens, hd, nh, nkv = h.shape[0], self.head_dim, self.num_heads, self.num_kv_heads
        qkv = self.qkv(F.rms_norm(h, (h.shape[-1],), self.input_norm, self.eps))
        # RoPE on the query and key heads together: one set of ops instead of two
        qk = rope(qkv[:, : (nh + nkv) * hd].view(num_tokens, nh + nkv, hd), cos, sin)
        v = qkv[:, (nh + nkv) * hd :].view(num_tokens, nkv, hd)
        return qk[:, :nh], qk[:, nh:], v

    def post_attention(self, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn [T, heads * d] -> the layer's output hidden states."""
        h = h + self.o_proj(attn)
        gate, up = self.gate_up(F.rms_norm(h, (h.shape[-1],), self.post_norm, self.eps)).chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up)
