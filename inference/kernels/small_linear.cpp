// y = x W^T + b for the few rows of x of a decode step, fp32 on CPU: every weight row is read
// once from memory, streamed through AVX2 FMAs against the rows of x, and the rows of W are split
// across torch's threads. At one row this is a GEMV, bound by reading the weights; the library
// sgemv behind F.linear reads them at ~13 GB/s on the 2-core AMD EPYC whatever the thread count,
// while two threads stream ~25-28 GB/s (docs/engine-step.md). More rows than `kMaxRows`, other
// dtypes, or a build without AVX2/FMA go to at::linear unchanged.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SLOSERVE_SMALL_LINEAR 1
#endif

namespace {

// Measured per token of the packaged model's linears: 32 rows 80 vs 110 ms (F.linear), 64 rows even.
constexpr int64_t kMaxRows = 32;
constexpr int64_t kTileBytes = 64 * 1024;

#ifdef SLOSERVE_SMALL_LINEAR
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// One weight row at a time against M rows of x, 16 floats per step in two accumulators per row
// (2 * M + 3 of AVX2's 16 registers at M = 4). Tried: two or four weight rows per step sharing
// each x load (NR * M accumulators): slower here at every row count (M = 4: 30 vs 24 ms/token).
template <int M>
void rows_kernel(const float* x, const float* w, const float* bias, float* y, int64_t K, int64_t N, int64_t begin,
                 int64_t end) {
  const int64_t k16 = K - K % 16;
  for (int64_t n = begin; n < end; ++n) {
    const float* wr = w + n * K;
    __m256 a0[M], a1[M];
    for (int m = 0; m < M; ++m) a0[m] = a1[m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < k16; k += 16) {
      const __m256 w0 = _mm256_loadu_ps(wr + k), w1 = _mm256_loadu_ps(wr + k + 8);
      for (int m = 0; m < M; ++m) {
        a0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + k), a0[m]);
        a1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * K + k + 8), a1[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s = hsum(_mm256_add_ps(a0[m], a1[m]));
      for (int64_t k = k16; k < K; ++k) s += wr[k] * x[m * K + k];
      y[m * N + n] = bias ? s + bias[n] : s;
    }
  }
}

// Rows of x in chunks of 4 against a tile of weight rows small enough to stay in L2 between
// chunks (64 KiB: 16 and 256 KiB measured no better): the weights come from memory once whatever
// the row count, and each chunk after the first reads them from cache.
void run(const float* x, const float* w, const float* bias, float* y, int64_t rows, int64_t K, int64_t N) {
  // ~16 KiB of weights per task at least, so a small projection is not split finer than it pays
  const int64_t grain = std::max<int64_t>(1, 4096 / K);
  const int64_t tile = std::max<int64_t>(1, kTileBytes / (K * static_cast<int64_t>(sizeof(float))));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n0 = begin; n0 < end; n0 += tile) {
      const int64_t n1 = std::min(end, n0 + tile);
      for (int64_t m0 = 0; m0 < rows; m0 += 4) {
        const float* xm = x + m0 * K;
        float* ym = y + m0 * N;
        switch (std::min<int64_t>(4, rows - m0)) {
          case 1: rows_kernel<1>(xm, w, bias, ym, K, N, n0, n1); break;
          case 2: rows_kernel<2>(xm, w, bias, ym, K, N, n0, n1); break;
          case 3: rows_kernel<3>(xm, w, bias, ym, K, N, n0, n1); break;
          default: rows_kernel<4>(xm, w, bias, ym, K, N, n0, n1); break;
        }
      }
    }
  });
}
#endif

}  // namespace

torch::Tensor small_linear(torch::Tensor x, torch::Tensor weight, std::optional<torch::Tensor> bias) {
#ifdef SLOSERVE_SMALL_LINEAR
  const int64_t K = x.size(-1), rows = x.numel() / std::max<int64_t>(K, 1);
  const bool fits = x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && weight.dim() == 2 &&
                    weight.size(1) == K && weight.is_contiguous() && rows >= 1 && rows <= kMaxRows &&
                    (!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->dim() == 1 &&
                                bias->size(0) == weight.size(0)));
  if (fits) {
    const int64_t N = weight.size(0);
    auto x2 = x.reshape({rows, K}).contiguous();
    auto sizes = x.sizes().vec();
    sizes.back() = N;
    auto y = torch::empty({rows, N}, x.options());
    const float* b = bias ? bias->data_ptr<float>() : nullptr;
    const float *xp = x2.data_ptr<float>(), *wp = weight.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    run(xp, wp, b, yp, rows, K, N);
    return y.view(sizes);
  }
#endif
  return at::linear(x, weight, bias);
}

TORCH_LIBRARY_FRAGMENT(sloserve, m) { m.def("small_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(sloserve, CPU, m) { m.impl("small_linear", &small_linear); }
