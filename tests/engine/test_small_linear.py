"""The few-row linear kernel equals F.linear (fp32 checked against float64; bf16 widened to fp32
and rounded once), and hands everything it does not cover (more rows, other dtypes, odd layouts)
to at::linear unchanged."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from inference.model.kernels import small_linear_op


@pytest.fixture(scope="module")
def op():  # type: ignore[no-untyped-def]
    if os.environ.get("SLOSERVE_DISABLE_KERNELS") == "1":
        pytest.skip("kernels disabled by SLOSERVE_DISABLE_KERNELS=1")
    small = small_linear_op()
    assert small is not None, "the C++ kernels should build here (gcc and torch headers are installed)"
    return small


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.double(), w.double(), None if b is None else b.double()).float()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 32, 33])
@pytest.mark.parametrize("in_features", [576, 37])  # 37: not a multiple of the 16-wide vector loop
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64(op, rows: int, in_features: int, with_bias: bool) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(rows)
    x, w = torch.randn(rows, in_features), torch.randn(301, in_features)
    b = torch.randn(301) if with_bias else None
    got = op(x, w, b)
    assert got.shape == (rows, 301) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference(x, w, b), rtol=1e-5, atol=1e-4)


def test_leading_dims_and_strided_input(op) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    w, b = torch.randn(64, 48), torch.randn(64)
    x3 = torch.randn(2, 3, 48)
    torch.testing.assert_close(op(x3, w, b), reference(x3, w, b), rtol=1e-5, atol=1e-4)
    strided = torch.randn(48, 4).t()  # [4, 48], not contiguous
    torch.testing.assert_close(op(strided, w, None), reference(strided, w, None), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bf16_rows_are_widened_through_the_fp32_kernel(op, rows: int, with_bias: bool) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(rows)
    w, x = torch.randn(301, 576, dtype=torch.bfloat16), torch.randn(rows, 576, dtype=torch.bfloat16)
    b = torch.randn(301, dtype=torch.bfloat16) if with_bias else None
    got = op(x, w, b)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 301)
    # bf16 widens to fp32 exactly: the fp32 kernel on the widened values, rounded once
    assert torch.equal(got, op(x.float(), w.float(), None if b is None else b.float()).bfloat16())
    # and it is F.linear up to bf16 rounding of the output (F.linear rounds its own fp32 sum)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1.6e-2, atol=1e-2)


def test_what_it_does_not_cover_is_at_linear(op) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    w = torch.randn(40, 24, dtype=torch.bfloat16)
    x = torch.randn(5, 24, dtype=torch.bfloat16)  # bf16 past 4 rows: the library's bf16 GEMM is faster
    assert torch.equal(op(x, w, None), F.linear(x, w))
    xh, wh = torch.randn(2, 24, dtype=torch.float16), torch.randn(40, 24, dtype=torch.float16)
    assert torch.equal(op(xh, wh, None), F.linear(xh, wh))
    with pytest.raises(RuntimeError):
        op(x[:2], w.float(), None)  # mixed dtypes: at::linear's error
    wt = torch.randn(24, 40).t()  # a non-contiguous weight
    xf = torch.randn(2, 24)
    assert torch.equal(op(xf, wt, None), F.linear(xf, wt))
    with pytest.raises(RuntimeError):
        op(torch.randn(2, 23), torch.randn(40, 24), None)  # mismatched widths: at::linear's error


def q4_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """fp32 weights that are exactly 4-bit: per group of 32, d * q + m (d fp16), as GGUF Q4_1 gives."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # each group spans the whole 0..15, as a quantizer's output does
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.02 + 1e-3).half().float()
    m = (torch.randn(n, k // 32, 1, generator=g) * 0.1).half().float()
    return (d * q + m).reshape(n, k)


@pytest.mark.parametrize("rows", [1, 3, 4, 8, 32, 33])
def test_exact_4bit_weights_pack_and_compute_the_same_values(op, rows: int) -> None:  # type: ignore[no-untyped-def]
    from inference.model.kernels import pack_q4_exact

    w, b = q4_weight(200, 96, seed=rows), torch.randn(200)
    packed = pack_q4_exact(w)
    assert packed is not None, "exact 4-bit weights should pack"
    linear, data, scales, mins = packed
    assert data.dtype == torch.uint8 and data.numel() == w.numel() // 2
    x = torch.randn(rows, 96)
    got = linear(x, data, scales, mins, w, b)
    # the same fp32 values through the same kernel (or at::linear past 32 rows): equal bit for bit
    assert torch.equal(got, op(x, w, b))


@pytest.mark.parametrize("rows", [1, 4, 5])
def test_bf16_rows_compute_with_the_exact_4bit_values(op, rows: int) -> None:  # type: ignore[no-untyped-def]
    from inference.model.kernels import pack_q4_exact

    w = q4_weight(200, 96, seed=rows)
    linear, data, scales, mins = pack_q4_exact(w)  # type: ignore[misc]
    x = torch.randn(rows, 96, dtype=torch.bfloat16)
    got = linear(x, data, scales, mins, w.bfloat16(), None)
    assert got.dtype == torch.bfloat16
    if rows <= 4:  # the fp32 kernel on the exact weights, rounded once (not the bf16-rounded weights)
        assert torch.equal(got, op(x.float(), w, None).bfloat16())
    else:  # more rows: the bf16 GEMM on the bf16 copy
        assert torch.equal(got, F.linear(x, w.bfloat16()))


def test_weights_that_are_not_exactly_4bit_stay_fp32(op) -> None:  # type: ignore[no-untyped-def]
    from inference.model.kernels import pack_q4_exact

    w = q4_weight(16, 64, seed=0)
    w[3, 5] += 1e-4  # one value off the 4-bit grid
    assert pack_q4_exact(w) is None
    assert pack_q4_exact(torch.randn(16, 64)) is None
    assert pack_q4_exact(q4_weight(16, 64, seed=0)[:, :48]) is None  # K not a multiple of 32
    assert pack_q4_exact(q4_weight(16, 64, seed=0).double()) is None


def test_packing_can_be_turned_off(op, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from inference.model.kernels import pack_q4_exact

    monkeypatch.setenv("SLOSERVE_PACK_4BIT", "0")
    assert pack_q4_exact(q4_weight(16, 64, seed=0)) is None


def q8_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """fp32 weights that are exactly 8-bit: per group of 32, d * q with d = fp16(max |w| / 127), as
    GGUF Q8_0 gives (the packaged model's embedding and tied LM head)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k // 32, 32, generator=g) * 0.05
    d = (w.abs().amax(-1, keepdim=True) / 127).half().float()
    return ((w / d).round().clamp(-127, 127) * d).reshape(n, k)


@pytest.mark.parametrize("rows", [1, 3, 4, 8, 32, 33])
def test_exact_8bit_weights_pack_and_compute_the_same_values(op, rows: int) -> None:  # type: ignore[no-untyped-def]
    from inference.model.kernels import pack_exact, pack_q4_exact, pack_q8_exact

    w, b = q8_weight(200, 96, seed=rows), torch.randn(200)
    assert pack_q4_exact(w) is None  # 255 levels are not 4-bit
    packed = pack_q8_exact(w)
    assert packed is not None, "exact 8-bit weights should pack"
    linear, data, scales = packed
    assert data.dtype == torch.int8 and data.shape == w.shape and scales.shape == (200, 3)
    assert pack_exact(w)[0] is linear  # type: ignore[index]
    x = torch.randn(rows, 96)
    # the same fp32 values through the same kernel (or at::linear past 32 rows): equal bit for bit
    assert torch.equal(linear(x, data, scales, w, b), op(x, w, b))
    xb = x.bfloat16()
    got = linear(xb, data, scales, w.bfloat16(), None)
    if rows <= 4:  # bf16 rows: the fp32 kernel on the exact weights, rounded once
        assert torch.equal(got, op(xb.float(), w, None).bfloat16())
    else:  # more rows: the bf16 GEMM on the bf16 copy
        assert torch.equal(got, F.linear(xb, w.bfloat16()))


def test_weights_that_are_not_exactly_8bit_stay_fp32(op) -> None:  # type: ignore[no-untyped-def]
    from inference.model.kernels import pack_exact, pack_q8_exact

    w = q8_weight(16, 64, seed=0)
    w[3, 5] += 1e-4  # one value off the group's grid
    assert pack_q8_exact(w) is None and pack_exact(w) is None
    assert pack_q8_exact(torch.randn(16, 64)) is None
    assert pack_q8_exact(q8_weight(16, 64, seed=0)[:, :48]) is None  # K not a multiple of 32
    assert pack_q8_exact(q8_weight(16, 64, seed=0).double()) is None
    assert pack_q8_exact(torch.zeros(16, 64)) is not None  # all-zero groups are d = 0, q = 0
