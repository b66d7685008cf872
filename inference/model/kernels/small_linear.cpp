// y = x W^T + b for the few rows of x of a decode step, fp32 on CPU: every weight row is read
// once from memory, streamed through AVX2 FMAs against the rows of x, and the rows of W are split
// across torch's threads. At one row this is a GEMV, bound by reading the weights; the library
// sgemv behind F.linear reads them at ~13 GB/s on the 2-core AMD EPYC whatever the thread count,
// while two threads stream ~25-28 GB/s (docs/engine-step.md). More rows than `kMaxRows`, other
// dtypes, or a build without AVX2/FMA go to at::linear unchanged. bf16 x (with bf16, 4-bit or 8-bit weights)
// is widened to fp32 for up to `kMaxRowsBf16` rows.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SLOSERVE_SMALL_LINEAR 1
#endif

namespace {

// Measured per token of the packaged model's linears: 32 rows 80 vs 110 ms (F.linear), 64 rows even.
constexpr int64_t kMaxRows = 32;
constexpr int64_t kTileBytes = 64 * 1024;
// bf16 x through the 4-bit kernel (widened to fp32) up to this many rows; above it at::linear's
// bf16 GEMM (oneDNN, AVX512-BF16) is as fast or faster: the model's 30 layers per token, ms, kernel vs
// GEMM, Zen 4, 2 threads: 1 row 6.2 vs 19.7, 4 rows 9.8 vs 21.8, 8 rows 23.6 vs 23.3, 32 rows 69.7 vs 37.0.
constexpr int64_t kMaxRowsBf16 = 4;

#ifdef SLOSERVE_SMALL_LINEAR
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// 8 weights as fp32: fp32 as they are, bf16 widened exactly (its bits are the top half of an fp32).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// One weight row at a time against M rows of x, 16 floats per step in two accumulators per row
// (2 * M + 3 of AVX2's 16 registers at M = 4). Tried: two or four weight rows per step sharing
// each x load (NR * M accumulators): slower here at every row count (M = 4: 30 vs 24 ms/token).
template <int M, typename W>
void rows_kernel(const float* x, const W* w, const float* bias, float* y, int64_t K, int64_t N, int64_t begin,
                 int64_t end) {
  const int64_t k16 = K - K % 16;
  for (int64_t n = begin; n < end; ++n) {
    const W* wr = w + n * K;
    __m256 a0[M], a1[M];
    for (int m = 0; m < M; ++m) a0[m] = a1[m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < k16; k += 16) {
      const __m256 w0 = load8(wr + k), w1 = load8(wr + k + 8);
      for (int m = 0; m < M; ++m) {
        a0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + k), a0[m]);
        a1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * K + k + 8), a1[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s = hsum(_mm256_add_ps(a0[m], a1[m]));
      for (int64_t k = k16; k < K; ++k) s += static_cast<float>(wr[k]) * x[m * K + k];
      y[m * N + n] = bias ? s + bias[n] : s;
    }
  }
}

// Weight rows [begin, end) against every row of x, 4 rows of x at a time.
template <typename W>
void row_chunks(const float* x, const W* w, const float* bias, float* y, int64_t rows, int64_t K, int64_t N,
                int64_t begin, int64_t end) {
  for (int64_t m0 = 0; m0 < rows; m0 += 4) {
    const float* xm = x + m0 * K;
    float* ym = y + m0 * N;
    switch (std::min<int64_t>(4, rows - m0)) {
      case 1: rows_kernel<1>(xm, w, bias, ym, K, N, begin, end); break;
      case 2: rows_kernel<2>(xm, w, bias, ym, K, N, begin, end); break;
      case 3: rows_kernel<3>(xm, w, bias, ym, K, N, begin, end); break;
      default: rows_kernel<4>(xm, w, bias, ym, K, N, begin, end); break;
    }
  }
}

// Rows of x in chunks of 4 against a tile of weight rows small enough to stay in L2 between
// chunks (64 KiB: 16 and 256 KiB measured no better): the weights come from memory once whatever
// the row count, and each chunk after the first reads them from cache.
template <typename W>
void run(const float* x, const W* w, const float* bias, float* y, int64_t rows, int64_t K, int64_t N) {
  // ~16 KiB of weights per task at least, so a small projection is not split finer than it pays
  const int64_t grain = std::max<int64_t>(1, 4096 / K);
  const int64_t tile = std::max<int64_t>(1, kTileBytes / (K * static_cast<int64_t>(sizeof(W))));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n0 = begin; n0 < end; n0 += tile) row_chunks(x, w, bias, y, rows, K, N, n0, std::min(end, n0 + tile));
  });
}

// The packed formats, as `run_packed` reads them: one group of 32 weights of row n as four
// vectors of 8 fp32 values (elements 0-7, 8-15, 16-23, 24-31).
// 4-bit: w = d * q + m (q in 0..15; the layout of GGUF's Q4_1 with d and m kept as fp32), 16 bytes
// per group, byte j holding element j (low nibble) and j + 16. d * q is exact in fp32 (an
// fp16-sized d times a 4-bit q), so fused or not, one rounding.
struct Q4Weights {
  const uint8_t* packed;
  const float *d, *m;
  int64_t K;
  inline void group(int64_t n, int64_t g, __m256 w[4]) const {
    const __m128i low = _mm_set1_epi8(0x0F);
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + n * K / 2 + g * 16));
    const __m128i lo = _mm_and_si128(bytes, low), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low);
    const __m256 dv = _mm256_set1_ps(d[n * (K / 32) + g]), mv = _mm256_set1_ps(m[n * (K / 32) + g]);
    w[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), dv, mv);
    w[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), dv, mv);
    w[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), dv, mv);
    w[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), dv, mv);
  }
};

// 8-bit: w = d * q (q in -128..127; the layout of GGUF's Q8_0 with d kept as fp32), 32 bytes per
// group; d * q is exact in fp32 (an fp16-sized d times an 8-bit q).
struct Q8Weights {
  const int8_t* packed;
  const float* d;
  int64_t K;
  inline void group(int64_t n, int64_t g, __m256 w[4]) const {
    const int8_t* p = packed + n * K + g * 32;
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
    const __m256 dv = _mm256_set1_ps(d[n * (K / 32) + g]);
    w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), dv);
    w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), dv);
    w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), dv);
    w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), dv);
  }
};

// Row n of packed weights as fp32 values: what the row kernel computes with, exactly.
template <typename F>
void dequant_row(const F& f, int64_t n, float* out) {
  for (int64_t g = 0; g < f.K / 32; ++g) {
    __m256 w[4];
    f.group(n, g, w);
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + g * 32 + 8 * i, w[i]);
  }
}

// All N rows of packed weights as an fp32 [N, K] tensor.
template <typename F>
torch::Tensor dequantize(const F& f, int64_t N, const torch::TensorOptions& options) {
  auto out = torch::empty({N, f.K}, options);
  float* data = out.template data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) dequant_row(f, n, data + n * f.K);
  return out;
}

// `rows_kernel` over packed weights without a buffer, for the first few rows: each group's 32
// values are dequantized in registers and used at once, added into the accumulators in the same
// order as `rows_kernel` (elements 0-7 and 16-23 to the first, 8-15 and 24-31 to the second), so
// the result is the same bit for bit.
template <int M, typename F>
void rows_kernel_packed(const float* x, const F& f, const float* bias, float* y, int64_t K, int64_t N, int64_t begin,
                        int64_t end) {
  const int64_t groups = K / 32;
  for (int64_t n = begin; n < end; ++n) {
    __m256 a0[M], a1[M];
    for (int r = 0; r < M; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      __m256 w[4];
      f.group(n, g, w);
      const int64_t k = g * 32;
      for (int r = 0; r < M; ++r) {
        const float* xr = x + r * K + k;
        a0[r] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xr), a0[r]);
        a1[r] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xr + 8), a1[r]);
        a0[r] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xr + 16), a0[r]);
        a1[r] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xr + 24), a1[r]);
      }
    }
    for (int r = 0; r < M; ++r) {
      const float s = hsum(_mm256_add_ps(a0[r], a1[r]));  // K % 32 == 0: no tail
      y[r * N + n] = bias ? s + bias[n] : s;
    }
  }
}

// The tiled loop of `run` over packed weights: each tile is dequantized once into a per-thread
// buffer, then goes through the same row kernel as fp32 weights, so the result equals
// `small_linear` on the dequantized weights bit for bit, from a fraction of the memory traffic.
template <typename F>
void run_packed(const float* x, const F& f, const float* bias, float* y, int64_t rows, int64_t K, int64_t N) {
  const int64_t grain = std::max<int64_t>(1, 4096 / K);
  const int64_t tile = std::max<int64_t>(1, kTileBytes / (K * static_cast<int64_t>(sizeof(float))));
  if (rows <= 4) {  // one pass over the weights: dequantized in registers, no buffer
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      switch (rows) {
        case 1: rows_kernel_packed<1>(x, f, bias, y, K, N, begin, end); break;
        case 2: rows_kernel_packed<2>(x, f, bias, y, K, N, begin, end); break;
        case 3: rows_kernel_packed<3>(x, f, bias, y, K, N, begin, end); break;
        default: rows_kernel_packed<4>(x, f, bias, y, K, N, begin, end); break;
      }
    });
    return;
  }
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(tile * K);
    for (int64_t n0 = begin; n0 < end; n0 += tile) {
      const int64_t n1 = std::min(end, n0 + tile);
      for (int64_t n = n0; n < n1; ++n) dequant_row(f, n, buffer.data() + (n - n0) * K);
      // the tile is rows 0.. of the buffer: bias and y are offset to match
      row_chunks(x, buffer.data(), bias ? bias + n0 : nullptr, y + n0, rows, K, N, 0, n1 - n0);
    }
  });
}
#endif

}  // namespace

#ifdef SLOSERVE_SMALL_LINEAR
// Whether the kernel takes x (fp32 up to `kMaxRows` rows, bf16 up to `kMaxRowsBf16`) and `bias`
// (none, or [N] contiguous) for a linear of N outputs.
bool kernel_fits(const torch::Tensor& x, const std::optional<torch::Tensor>& bias, int64_t N) {
  const int64_t K = x.size(-1), rows = x.numel() / std::max<int64_t>(K, 1);
  const int64_t max_rows =
      x.scalar_type() == at::kFloat ? kMaxRows : (x.scalar_type() == at::kBFloat16 ? kMaxRowsBf16 : 0);
  return rows >= 1 && rows <= max_rows && K > 0 &&
         (!bias || (bias->scalar_type() == x.scalar_type() && bias->dim() == 1 && bias->size(0) == N));
}

// x as fp32 rows [rows, K] (bf16 widened), `body(x, bias, y, rows, K)` filling fp32 y [rows, N],
// and y in x's dtype and shape (bf16 rounded once, at the end).
template <typename Body>
torch::Tensor in_fp32(const torch::Tensor& x, const std::optional<torch::Tensor>& bias, int64_t N, Body body) {
  const int64_t K = x.size(-1), rows = x.numel() / K;
  auto x2 = x.reshape({rows, K}).to(at::kFloat).contiguous();
  auto b = bias ? std::optional<torch::Tensor>(bias->to(at::kFloat).contiguous()) : std::nullopt;
  auto y = torch::empty({rows, N}, x2.options());
  body(x2.data_ptr<float>(), b ? b->data_ptr<float>() : nullptr, y.data_ptr<float>(), rows, K);
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  return y.to(x.scalar_type()).view(sizes);
}
#endif

// F.linear for a decode step's few rows on CPU: fp32 x with fp32 weights, or bf16 x with bf16
// weights (widened exactly in registers, accumulated in fp32, y rounded to bf16 once: at one row
// oneDNN's bf16 GEMM reads the weights at a third of this speed). Anything else: at::linear.
torch::Tensor small_linear(torch::Tensor x, torch::Tensor weight, std::optional<torch::Tensor> bias) {
#ifdef SLOSERVE_SMALL_LINEAR
  const auto dtype = x.scalar_type();
  if (weight.scalar_type() == dtype && weight.dim() == 2 && weight.size(1) == x.size(-1) && weight.is_contiguous() &&
      kernel_fits(x, bias, weight.size(0))) {
    const int64_t N = weight.size(0);
    return in_fp32(x, bias, N, [&](const float* xp, const float* b, float* yp, int64_t rows, int64_t K) {
      if (dtype == at::kFloat)
        run(xp, weight.data_ptr<float>(), b, yp, rows, K, N);
      else
        run(xp, weight.data_ptr<at::BFloat16>(), b, yp, rows, K, N);
    });
  }
#endif
  return at::linear(x, weight, bias);
}

void check_q4(const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& mins) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous(), "packed: uint8 [N, K/2]");
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  TORCH_CHECK(K % 32 == 0, "4-bit weights come in groups of 32 along K");
  for (const auto* t : {&scales, &mins})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 && t->size(0) == N &&
                    t->size(1) == K / 32,
                "scales and mins: fp32 [N, K/32]");
}

// The fp32 weights the 4-bit ones stand for (what `q4_linear` computes with, exactly).
torch::Tensor q4_dequantize(torch::Tensor packed, torch::Tensor scales, torch::Tensor mins) {
  check_q4(packed, scales, mins);
#ifdef SLOSERVE_SMALL_LINEAR
  const Q4Weights f{packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), mins.data_ptr<float>(), packed.size(1) * 2};
  return dequantize(f, packed.size(0), scales.options());
#else
  TORCH_CHECK(false, "4-bit weights need a build with AVX2 and FMA");
#endif
}

// x W^T + b where W is held twice: 4-bit (`packed`, `scales`, `mins`, read by the kernel) and as
// `weight` (at::linear's, for prompts and anything else the kernel does not cover). An fp32
// `weight` equals the 4-bit one's dequantization: up to `kMaxRows` rows of fp32 x. A bf16 `weight`
// (a bf16 model on a CPU with native bf16 matmul) is its rounding to bf16: then up to
// `kMaxRowsBf16` rows of bf16 x are widened to fp32, go through the kernel on the exact 4-bit
// weights, and the result is rounded to bf16; more rows go to at::linear's bf16 GEMM.
torch::Tensor q4_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor scales, torch::Tensor mins,
                        torch::Tensor weight, std::optional<torch::Tensor> bias) {
#ifdef SLOSERVE_SMALL_LINEAR
  if (packed.size(1) * 2 == x.size(-1) && kernel_fits(x, bias, packed.size(0))) {
    check_q4(packed, scales, mins);
    const int64_t N = packed.size(0);
    return in_fp32(x, bias, N, [&](const float* xp, const float* b, float* yp, int64_t rows, int64_t K) {
      const Q4Weights f{packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), mins.data_ptr<float>(), K};
      run_packed(xp, f, b, yp, rows, K, N);
    });
  }
#endif
  return at::linear(x, weight, bias);
}

void check_q8(const torch::Tensor& packed, const torch::Tensor& scales) {
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 2 && packed.is_contiguous(),
              "packed: int8 [N, K]");
  const int64_t N = packed.size(0), K = packed.size(1);
  TORCH_CHECK(K % 32 == 0, "8-bit weights come in groups of 32 along K");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 2 &&
                  scales.size(0) == N && scales.size(1) == K / 32,
              "scales: fp32 [N, K/32]");
}

// The fp32 weights the 8-bit ones stand for (what `q8_linear` computes with, exactly).
torch::Tensor q8_dequantize(torch::Tensor packed, torch::Tensor scales) {
  check_q8(packed, scales);
#ifdef SLOSERVE_SMALL_LINEAR
  const Q8Weights f{packed.data_ptr<int8_t>(), scales.data_ptr<float>(), packed.size(1)};
  return dequantize(f, packed.size(0), scales.options());
#else
  TORCH_CHECK(false, "8-bit weights need a build with AVX2 and FMA");
#endif
}

// `q4_linear` for weights that are exactly 8-bit (GGUF's Q8_0: w = d * q per group of 32): a
// decode step's few rows read 1.125 bytes per weight instead of 4 (fp32) or 2 (bf16), and compute
// with the exact fp32 values; anything else goes to at::linear on `weight`.
torch::Tensor q8_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor scales, torch::Tensor weight,
                        std::optional<torch::Tensor> bias) {
#ifdef SLOSERVE_SMALL_LINEAR
  if (packed.size(1) == x.size(-1) && kernel_fits(x, bias, packed.size(0))) {
    check_q8(packed, scales);
    const int64_t N = packed.size(0);
    return in_fp32(x, bias, N, [&](const float* xp, const float* b, float* yp, int64_t rows, int64_t K) {
      const Q8Weights f{packed.data_ptr<int8_t>(), scales.data_ptr<float>(), K};
      run_packed(xp, f, b, yp, rows, K, N);
    });
  }
#endif
  return at::linear(x, weight, bias);
}

// Per-token activation quantization for the int8-compute variant (`inference/w8a8_linear.py`), in
// one pass instead of nine torch ops: each row of x (times `inv_smooth`, SmoothQuant's 1/s, if
// given) is scaled by max|row| / qmax, rounded to nearest and offset by `zero_point` (the u8 the
// oneDNN GEMM takes). Returns (u8 [M, K], fp32 scale [M, 1]); x ~ (q - zero_point) * scale.
std::tuple<torch::Tensor, torch::Tensor> quantize_rows(torch::Tensor x, std::optional<torch::Tensor> inv_smooth,
                                                       double qmax, int64_t zero_point) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(), "x: fp32 [M, K], contiguous");
  TORCH_CHECK(qmax > 0 && zero_point >= qmax && zero_point + qmax <= 255, "qmax and zero_point must fit in u8");
  const int64_t M = x.size(0), K = x.size(1);
  const float* smooth = nullptr;
  if (inv_smooth) {
    TORCH_CHECK(inv_smooth->scalar_type() == at::kFloat && inv_smooth->is_contiguous() && inv_smooth->numel() == K,
                "inv_smooth: fp32 [K]");
    smooth = inv_smooth->data_ptr<float>();
  }
  auto q = torch::empty({M, K}, x.options().dtype(at::kByte));
  auto scale = torch::empty({M, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  uint8_t* qp = q.data_ptr<uint8_t>();
  float* sp = scale.data_ptr<float>();
  const float qm = static_cast<float>(qmax), zp = static_cast<float>(zero_point);
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(K);
    for (int64_t m = begin; m < end; ++m) {
      const float* xr = xp + m * K;
      float amax = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const float v = smooth ? xr[k] * smooth[k] : xr[k];
        row[k] = v;
        amax = std::max(amax, std::fabs(v));
      }
      const float sc = std::max(amax, 1e-8f) / qm, inv = 1.0f / sc;
      uint8_t* qr = qp + m * K;
      for (int64_t k = 0; k < K; ++k) {
        const float r = std::min(std::max(std::nearbyint(row[k] * inv), -qm), qm);
        qr[k] = static_cast<uint8_t>(static_cast<int>(r + zp));
      }
      sp[m] = sc;
    }
  });
  return {q, scale};
}

TORCH_LIBRARY_FRAGMENT(sloserve, m) {
  m.def("quantize_rows(Tensor x, Tensor? inv_smooth, float qmax, int zero_point) -> (Tensor, Tensor)");
  m.def("small_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("q4_linear(Tensor x, Tensor packed, Tensor scales, Tensor mins, Tensor weight, Tensor? bias) -> Tensor");
  m.def("q4_dequantize(Tensor packed, Tensor scales, Tensor mins) -> Tensor");
  m.def("q8_linear(Tensor x, Tensor packed, Tensor scales, Tensor weight, Tensor? bias) -> Tensor");
  m.def("q8_dequantize(Tensor packed, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(sloserve, CPU, m) {
  m.impl("small_linear", &small_linear);
  m.impl("q4_linear", &q4_linear);
  m.impl("q4_dequantize", &q4_dequantize);
  m.impl("q8_linear", &q8_linear);
  m.impl("q8_dequantize", &q8_dequantize);
  m.impl("quantize_rows", &quantize_rows);
}
