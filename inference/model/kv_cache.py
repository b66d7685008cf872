"""`KVCache`: the preallocated KV memory pool of one rank, one K and one V tensor for all layers.

Shape per tensor: [num_layers, (num_blocks + 1) * block_size, num_kv_heads_local, head_dim]; a token's
K/V lives at one flat *slot* (block_id * block_size + offset). The extra last block (`scratch_block`)
is never handed out: padding rows of a CUDA-graph decode step write and read there. Allocated once at
start-up, checked against free memory first; never grown. Its size on CUDA, when the config does
not give one, is what `gpu_memory_utilization` leaves (`kv_blocks_for_memory`).
"""

from __future__ import annotations

import torch

from inference.schema.errors import KVCacheTooSmallError


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def kv_block_bytes(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of one block in every layer, K and V."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def kv_blocks_for_memory(total_bytes: int, free_bytes: int, own_bytes: int, step_peak_bytes: int,
                         utilization: float, block_bytes: int) -> int:
    """Blocks that fit in `utilization` of a device of `total_bytes` beside what this process holds
    (`own_bytes`: weights, caches) and a step's activations (`step_peak_bytes`, measured), and never
    more than is free (another process, e.g. a replica sharing the GPU, keeps what it holds)."""
    budget = min(utilization * total_bytes - own_bytes, free_bytes) - step_peak_bytes
    if budget < block_bytes:
        gib = 2**30
        raise KVCacheTooSmallError(
            f"no room for a KV pool: gpu_memory_utilization {utilization} of {total_bytes / gib:.2f} GiB "
            f"({free_bytes / gib:.2f} GiB free) leaves {budget / gib:.2f} GiB after this engine's "
            f"{own_bytes / gib:.2f} GiB and a step's {step_peak_bytes / gib:.2f} GiB of activations; raise "
            "gpu_memory_utilization, lower max_num_batched_tokens, or free the GPU")
    return int(budget // block_bytes)


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        num_slots = (num_blocks + 1) * block_size  # + the scratch block
        needed = (num_blocks + 1) * kv_block_bytes(num_layers, block_size, num_kv_heads, head_dim, dtype)
        available = available_memory_bytes(device)
        if needed > 0.9 * available:
            raise KVCacheTooSmallError(
                f"the KV pool asked for ({num_slots} tokens = {needed / 2**30:.2f} GiB) does not fit in "
                f"the {available / 2**30:.2f} GiB free on {device}; lower kv_cache_tokens"
            )
        self.block_size = block_size
        self.num_blocks = num_blocks + 1  # blocks of the pool tensors
        self.scratch_block = num_blocks
        shape = (num_layers, num_slots, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy whole blocks (src -> dst) in every layer, in order (forks of partly filled blocks)."""
        bs = self.block_size
        for src, dst in copies:
            self.k[:, dst * bs : (dst + 1) * bs] = self.k[:, src * bs : (src + 1) * bs]
            self.v[:, dst * bs : (dst + 1) * bs] = self.v[:, src * bs : (src + 1) * bs]
