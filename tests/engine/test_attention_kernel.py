"""The compiled paged decode attention equals the pure-torch path (gather + SDPA) it replaces."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from inference.model.kernels import paged_decode_attention


@pytest.fixture(scope="module")
def kernel():  # type: ignore[no-untyped-def]
    if os.environ.get("SLOSERVE_DISABLE_KERNELS") == "1":
        pytest.skip("kernels disabled by SLOSERVE_DISABLE_KERNELS=1")
    op = paged_decode_attention()
    assert op is not None, "the C++ kernel should build here (gcc and torch headers are installed)"
    return op


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
# group sizes 3, 1, 8, 6 (one pass of 8 lanes per head, not two), 10 (8 heads, then 2)
@pytest.mark.parametrize(("heads", "kv_heads"), [(9, 3), (4, 4), (8, 1), (12, 2), (20, 2)])
# 16 lanes per pass; 8 lanes per pass; a head size the 8-lane code does not take (the scalar loops)
@pytest.mark.parametrize("dim", [32, 40, 36])
# one work item per (sequence, kv head) below 2 sequences per thread, one per sequence above
@pytest.mark.parametrize("batch", [1, 5])
def test_kernel_matches_gather_and_sdpa(kernel, dtype: torch.dtype, tol: float, heads: int, kv_heads: int,  # type: ignore[no-untyped-def]
                                        dim: int, batch: int) -> None:
    torch.manual_seed(0)
    block_size, num_blocks = 8, 64
    k_pool = torch.randn(num_blocks * block_size, kv_heads, dim, dtype=dtype)
    v_pool = torch.randn(num_blocks * block_size, kv_heads, dim, dtype=dtype)
    lens = torch.tensor([50, 7, 8, 33, 1][:batch])
    max_blocks = 7
    tables = torch.stack([torch.randperm(num_blocks)[:max_blocks] for _ in range(batch)])
    q = torch.randn(batch, heads, dim, dtype=dtype)

    longest = int(lens.max())
    slots = (tables[:, :, None] * block_size + torch.arange(block_size)).view(batch, -1)[:, :longest]
    k = k_pool[slots.reshape(-1)].view(batch, longest, kv_heads, dim).transpose(1, 2)
    v = v_pool[slots.reshape(-1)].view(batch, longest, kv_heads, dim).transpose(1, 2)
    mask = (torch.arange(longest)[None] < lens[:, None])[:, None, None, :]
    expected = F.scaled_dot_product_attention(
        q.view(batch, kv_heads, heads // kv_heads, dim), k, v, attn_mask=mask
    ).reshape(batch, heads, dim)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # so that batch 5 is >= 2 sequences per thread and batch 1 is not
    try:
        got = kernel(q, k_pool, v_pool, tables, lens, block_size, dim**-0.5)
    finally:
        torch.set_num_threads(threads)
    assert got.dtype == dtype and got.shape == q.shape
    assert torch.allclose(got.double(), expected.double(), atol=tol, rtol=tol)
