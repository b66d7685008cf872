"""`ModelRunner`: one rank's forward pass over a DeepSpeed-wrapped Hugging Face decoder.

DeepSpeed (`init_inference`, AutoTP) owns the weights: with tp_size N each rank holds its
shard of every projection, and the row-parallel ones (`o_proj`, `down_proj`, `lm_head`) all-reduce
inside their forward. This runner drives the decoder layers itself instead of calling HF's
forward, so that the KV cache is our paged pool and a step is one flattened batch of tokens:
plain linear shards of q/k/v and of gate/up are fused into one matmul each; any other linear
type (bitsandbytes, torch quantized) is called as a module. Logits are computed only for the
rows that sample (and the prompt rows of requests that ask for prompt logprobs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.attention import paged_attention
from inference.kv_cache import KVCache
from inference.step_input import StepInput

Linear = Callable[[torch.Tensor], torch.Tensor]


def _is_plain_linear(module: Any) -> bool:
    # DeepSpeed's column-parallel LinearLayer is a plain matmul in inference (its backward differs).
    return type(module) is nn.Linear or type(module).__name__ == "LinearLayer"


def _fuse(modules: list[Any]) -> tuple[Linear, list[int]]:
    """One callable computing the concatenated outputs of `modules`, and each output's width."""
    # out_features, not weight.shape: packed 4-bit weights (bitsandbytes nf4) have another shape
    widths = [int(getattr(m, "out_features", None) or m.weight.shape[0]) for m in modules]
    if all(_is_plain_linear(m) for m in modules):
        weight = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
        has_bias = any(m.bias is not None for m in modules)
        bias = None
        if has_bias:
            bias = torch.cat(
                [m.bias.detach() if m.bias is not None else weight.new_zeros(w) for m, w in zip(modules, widths, strict=True)]
            )
        # Point the modules at views of the fused tensor so the weights are not held twice.
        offset = 0
        for module, width in zip(modules, widths, strict=True):
            module.weight.data = weight[offset : offset + width]
            offset += width
        return (lambda x: F.linear(x, weight, bias)), widths
    return (lambda x: torch.cat([m(x) for m in modules], dim=-1)), widths


def _single(module: Any) -> Linear:
    if type(module) is nn.Linear:
        weight, bias = module.weight.detach(), module.bias
        return lambda x: F.linear(x, weight, bias)
    return module  # row-parallel (all-reduces inside) or quantized


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: Linear
    qkv_widths: list[int]
    o_proj: Linear
    gate_up: Linear
    down: Linear


class ModelRunner:
    def __init__(self, model: Any, kv_cache_blocks: int, block_size: int, max_model_len: int) -> None:
        """`model`: a Hugging Face causal LM (Llama-like decoder), already wrapped by DeepSpeed."""
        config = model.config
        self.config = config
        self.device = next(model.parameters()).device
        self.dtype: torch.dtype = model.model.embed_tokens.weight.dtype
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.eps: float = config.rms_norm_eps
        self.embed_tokens = model.model.embed_tokens
        self.final_norm = model.model.norm.weight.detach()
        lm_head = model.lm_head
        self.lm_head: Linear = _single(lm_head) if type(lm_head) is nn.Linear else (lambda x: lm_head(x[None])[0])
        if config.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {config.hidden_act!r}")
        self.layers: list[LayerWeights] = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, widths = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up, _ = _fuse([mlp.gate_proj, mlp.up_proj])
            self.layers.append(
                LayerWeights(
                    input_norm=layer.input_layernorm.weight.detach(),
                    post_norm=layer.post_attention_layernorm.weight.detach(),
                    qkv=qkv,
                    qkv_widths=widths,
                    o_proj=_single(attn.o_proj),
                    gate_up=gate_up,
                    down=_single(mlp.down_proj),
                )
            )
        q_width, kv_width, _ = self.layers[0].qkv_widths
        self.num_heads = q_width // self.head_dim  # this rank's share under tensor parallelism
        self.num_kv_heads = kv_width // self.head_dim
        self.cos, self.sin = self._rope_tables(model, max_model_len)
        self.kv_cache = KVCache(
            num_layers=len(self.layers),
            num_blocks=kv_cache_blocks,
            block_size=block_size,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            dtype=self.dtype,
            device=self.device,
        )

    def _rope_tables(self, model: Any, max_model_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for every position, from the model's own rotary module (so RoPE scaling types hold)."""
        positions = torch.arange(max_model_len, device=self.device)[None]
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)
        cos, sin = model.model.rotary_emb(probe, positions)
        return cos[0].to(self.dtype)[:, None, :], sin[0].to(self.dtype)[:, None, :]  # [L, 1, head_dim]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor:
        """Run one step; returns logits [len(step.logits_indices), vocab] in the model's dtype."""
        if step.block_copies:
            self.kv_cache.copy_blocks(step.block_copies)
        dev = self.device
        input_ids = step.input_ids.to(dev, non_blocking=True)
        positions = step.positions.to(dev, non_blocking=True)
        slots = step.slot_mapping.to(dev, non_blocking=True)
        if dev.type != "cpu":
            step = _to_device(step, dev)
        cos, sin = self.cos[positions], self.sin[positions]
        num_tokens = input_ids.shape[0]
        hd, nh, nkv = self.head_dim, self.num_heads, self.num_kv_heads
        h = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = F.rms_norm(h, (h.shape[-1],), layer.input_norm, self.eps)
            qkv = layer.qkv(x)
            # RoPE on the query and key heads together: one set of ops instead of two
            qk = self._rope(qkv[:, : (nh + nkv) * hd].view(num_tokens, nh + nkv, hd), cos, sin)
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, (nh + nkv) * hd :].view(num_tokens, nkv, hd)
            k_pool, v_pool = self.kv_cache.k[i], self.kv_cache.v[i]
            k_pool.index_copy_(0, slots, k)
            v_pool.index_copy_(0, slots, v)
            h = h + layer.o_proj(paged_attention(q, k, v, k_pool, v_pool, step))
            x = F.rms_norm(h, (h.shape[-1],), layer.post_norm, self.eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        h = h[step.logits_indices.to(dev)]
        h = F.rms_norm(h, (h.shape[-1],), self.final_norm, self.eps)
        return self.lm_head(h)


def _to_device(step: StepInput, device: torch.device) -> StepInput:
    from dataclasses import replace

    from inference.step_input import PrefillSegment

    return replace(
        step,
        decode_slots=None if step.decode_slots is None else step.decode_slots.to(device),
        decode_mask=None if step.decode_mask is None else step.decode_mask.to(device),
        prefills=[
            PrefillSegment(
                p.start, p.num_tokens, p.num_context,
                None if p.context_slots is None else p.context_slots.to(device),
                None if p.mask is None else p.mask.to(device),
            )
            for p in step.prefills
        ],
    )
