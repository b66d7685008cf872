"""`KVCache`: the preallocated KV memory pool of one rank, one K and one V tensor for all layers.

Shape per tensor: [num_layers, num_blocks * block_size, num_kv_heads_local, head_dim]; a token's
K/V lives at one flat *slot* (block_id * block_size + offset). Allocated once at start-up,
checked against free memory first; never grown.
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
        num_slots = num_blocks * block_size
        elem = torch.empty((), dtype=dtype).element_size()
        needed = 2 * num_layers * num_slots * num_kv_heads * head_dim * elem
        available = available_memory_bytes(device)
        if needed > 0.9 * available:
            raise KVCacheTooSmallError(
                f"the KV pool asked for ({num_slots} tokens = {needed / 2**30:.2f} GiB) does not fit in "
                f"the {available / 2**30:.2f} GiB free on {device}; lower kv_cache_tokens"
            )
        self.block_size = block_size
        shape = (num_layers, num_slots, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy whole blocks (src -> dst) in every layer, in order (forks of partly filled blocks)."""
        bs = self.block_size
        for src, dst in copies:
            self.k[:, dst * bs : (dst + 1) * bs] = self.k[:, src * bs : (src + 1) * bs]
            self.v[:, dst * bs : (dst + 1) * bs] = self.v[:, src * bs : (src + 1) * bs]
