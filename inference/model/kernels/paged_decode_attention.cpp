// Paged decode attention on CPU: one query token per sequence attends to its context read
// straight from the KV pool through its block table (no gather copy). Grouped-query heads share
// each K/V row they read. Accumulates in fp32; parallel over sequences (over (sequence, kv head)
// when there are fewer than two per thread). With AVX2 and a head size that is a multiple of 8, the
// inner loops are explicit 8-lane code (`attend_avx2`) whose accumulators stay in registers.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SLOSERVE_ATTENTION_AVX2 1

namespace {
// 8 values of the pool's dtype as fp32 (bf16 and fp16 widen exactly).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline float hsum8(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// e^x for the softmax's x <= 0: Cephes' expf (range reduction by ln 2 in two parts, degree-6
// polynomial; ~1 ulp). std::exp one value at a time was most of this kernel's time.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// Blocks whose K rows are prefetched ahead of the one computed. The blocks lie anywhere in a pool
// far larger than the cache, so the hardware prefetcher alone left the kernel waiting on memory.
// 30 layers, batch 32, 185-token contexts, a block table in random order, ms: 1 ahead 17-21,
// 2 ahead 16-22, 4 ahead 17-20 (noise between runs is larger than the differences).
constexpr int64_t kAhead = 2;

// Prefetch the bytes [first, last) of a pool, a cache line at a time: into L1 (hint 0) or L2.
inline void prefetch_span(const char* first, const char* last, int hint) {
  for (const char* p = first; p < last; p += 64) {
    if (hint == 0) _mm_prefetch(p, _MM_HINT_T0); else _mm_prefetch(p, _MM_HINT_T1);
  }
}

// Scores of NG (<= 8) query heads against rows [0, n) of one block: NG accumulators stay in
// registers, each K row is widened once per 8 lanes and shared by the heads.
template <int NG, typename scalar_t>
inline void block_scores(const float* q, const scalar_t* k_rows, int64_t n, int64_t stride, int64_t D, float* scores,
                         int64_t len) {
  for (int64_t s = 0; s < n; ++s) {
    const scalar_t* kp = k_rows + s * stride;
    __m256 a[NG];
    for (int g = 0; g < NG; ++g) a[g] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 k = load8(kp + d);
      for (int g = 0; g < NG; ++g) a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d), k, a[g]);
    }
    for (int g = 0; g < NG; ++g) scores[g * len + s] = hsum8(a[g]);
  }
}

// acc[g, :] = sum_t p[g, t] V[t, :] for NG (<= 8) heads, 8 * C lanes of the head at a time: the
// NG * C accumulators stay in registers over the whole context.
template <int NG, int C, typename scalar_t>
inline void weighted_values(const float* p, int64_t len, const scalar_t* v_pool, const int64_t* table,
                            int64_t block_size, int64_t KVH, int64_t kh, int64_t D, float* acc) {
  for (int64_t d0 = 0; d0 < D; d0 += 8 * C) {
    __m256 a[NG][C];
    for (int g = 0; g < NG; ++g)
      for (int c = 0; c < C; ++c) a[g][c] = _mm256_setzero_ps();
    for (int64_t t0 = 0; t0 < len; t0 += block_size) {
      const int64_t n = std::min(block_size, len - t0);
      const scalar_t* vb = v_pool + (table[t0 / block_size] * block_size * KVH + kh) * D + d0;
      for (int64_t s = 0; s < n; ++s) {
        const scalar_t* vp = vb + s * KVH * D;
        __m256 v[C];
        for (int c = 0; c < C; ++c) v[c] = load8(vp + 8 * c);
        for (int g = 0; g < NG; ++g) {
          const __m256 w = _mm256_broadcast_ss(p + g * len + t0 + s);
          for (int c = 0; c < C; ++c) a[g][c] = _mm256_fmadd_ps(w, v[c], a[g][c]);
        }
      }
    }
    for (int g = 0; g < NG; ++g)
      for (int c = 0; c < C; ++c) _mm256_storeu_ps(acc + g * D + d0 + 8 * c, a[g][c]);
  }
}

template <typename scalar_t>
inline void block_scores_n(int ng, const float* q, const scalar_t* k_rows, int64_t n, int64_t stride, int64_t D,
                           float* scores, int64_t len) {
  switch (ng) {
    case 1: return block_scores<1>(q, k_rows, n, stride, D, scores, len);
    case 2: return block_scores<2>(q, k_rows, n, stride, D, scores, len);
    case 3: return block_scores<3>(q, k_rows, n, stride, D, scores, len);
    case 4: return block_scores<4>(q, k_rows, n, stride, D, scores, len);
    case 5: return block_scores<5>(q, k_rows, n, stride, D, scores, len);
    case 6: return block_scores<6>(q, k_rows, n, stride, D, scores, len);
    case 7: return block_scores<7>(q, k_rows, n, stride, D, scores, len);
    default: return block_scores<8>(q, k_rows, n, stride, D, scores, len);
  }
}

template <typename scalar_t>
inline void weighted_values_n(int ng, const float* p, int64_t len, const scalar_t* v_pool, const int64_t* table,
                              int64_t block_size, int64_t KVH, int64_t kh, int64_t D, float* acc) {
  const bool two = D % 16 == 0;
#define SLOSERVE_WV(N) \
  return two && N <= 4 ? weighted_values<N, 2>(p, len, v_pool, table, block_size, KVH, kh, D, acc) \
                       : weighted_values<N, 1>(p, len, v_pool, table, block_size, KVH, kh, D, acc)
  switch (ng) {
    case 1: SLOSERVE_WV(1);
    case 2: SLOSERVE_WV(2);
    case 3: SLOSERVE_WV(3);
    case 4: SLOSERVE_WV(4);
    case 5: SLOSERVE_WV(5);
    case 6: SLOSERVE_WV(6);
    case 7: SLOSERVE_WV(7);
    default: SLOSERVE_WV(8);
  }
#undef SLOSERVE_WV
}

// One sequence's kv heads [kh0, kh1) (each with its G query heads in qf, scaled) against its
// context, D a multiple of 8. K pass block by block (the next block's K rows prefetched, and this
// block's V rows, for the V pass); softmax; V pass. Heads go 8 at a time through the register
// kernels above.
template <typename scalar_t>
void attend_avx2(const float* qf, const scalar_t* k_pool, const scalar_t* v_pool, const int64_t* table, int64_t len,
                 int64_t KVH, int64_t kh0, int64_t kh1, int64_t G, int64_t D, int64_t block_size, float* scores,
                 float* acc, float* sums) {
  const int64_t blocks = (len + block_size - 1) / block_size, stride = KVH * D;
  const int64_t NH = (kh1 - kh0) * G;  // query heads handled here; scores [NH, len]
  auto prefetch = [&](const scalar_t* pool, int64_t j, int hint) {
    const int64_t n = std::min(block_size, len - j * block_size);
    const scalar_t* first = pool + (table[j] * block_size * KVH + kh0) * D;
    prefetch_span(reinterpret_cast<const char*>(first),
                  reinterpret_cast<const char*>(first + (n - 1) * stride + (kh1 - kh0) * D), hint);
  };
  for (int64_t j = 0; j < std::min(kAhead, blocks); ++j) prefetch(k_pool, j, 0);
  for (int64_t j = 0; j < blocks; ++j) {
    if (j + kAhead < blocks) prefetch(k_pool, j + kAhead, 0);
    prefetch(v_pool, j, 1);
    const int64_t t0 = j * block_size, n = std::min(block_size, len - t0);
    for (int64_t kh = kh0; kh < kh1; ++kh) {
      const scalar_t* k_rows = k_pool + (table[j] * block_size * KVH + kh) * D;
      for (int64_t g0 = 0; g0 < G; g0 += 8) {
        const int64_t h = (kh - kh0) * G + g0;
        block_scores_n(static_cast<int>(std::min<int64_t>(8, G - g0)), qf + h * D, k_rows, n, stride, D,
                       scores + h * len + t0, len);
      }
    }
  }
  const int64_t len8 = len - len % 8;
  for (int64_t h = 0; h < NH; ++h) {
    float* sg = scores + h * len;
    float mx = -INFINITY;
    for (int64_t t = 0; t < len; ++t) mx = std::max(mx, sg[t]);
    const __m256 mv = _mm256_set1_ps(mx);
    __m256 total = _mm256_setzero_ps();
    for (int64_t t = 0; t < len8; t += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sg + t), mv));
      _mm256_storeu_ps(sg + t, e);
      total = _mm256_add_ps(total, e);
    }
    float sum = hsum8(total);
    for (int64_t t = len8; t < len; ++t) sum += (sg[t] = std::exp(sg[t] - mx));
    sums[h] = sum;
  }
  for (int64_t kh = kh0; kh < kh1; ++kh)
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
      const int64_t h = (kh - kh0) * G + g0;
      weighted_values_n(static_cast<int>(std::min<int64_t>(8, G - g0)), scores + h * len, len, v_pool, table,
                        block_size, KVH, kh, D, acc + h * D);
    }
}
}  // namespace
#endif

// One (sequence, kv head) without SIMD: its G query heads (qf, scaled) against the context.
template <typename scalar_t>
static void attend_scalar(const float* qf, const scalar_t* k_pool, const scalar_t* v_pool, const int64_t* table,
                          int64_t len, int64_t KVH, int64_t kh, int64_t G, int64_t D, int64_t block_size,
                          float* scores, float* row, float* acc, float* sums, float* maxes) {
  std::fill(maxes, maxes + G, -INFINITY);
  for (int64_t t = 0; t < len; ++t) {
    const int64_t slot = table[t / block_size] * block_size + t % block_size;
    const scalar_t* kp = k_pool + (slot * KVH + kh) * D;
    for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(kp[d]);
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = qf + g * D;
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += qg[d] * row[d];
      scores[g * len + t] = s;
      maxes[g] = std::max(maxes[g], s);
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float total = 0.f;
    float* sg = scores + g * len;
    for (int64_t t = 0; t < len; ++t) {
      sg[t] = std::exp(sg[t] - maxes[g]);
      total += sg[t];
    }
    sums[g] = total;
  }
  std::fill(acc, acc + G * D, 0.f);
  for (int64_t t = 0; t < len; ++t) {
    const int64_t slot = table[t / block_size] * block_size + t % block_size;
    const scalar_t* vp = v_pool + (slot * KVH + kh) * D;
    for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(vp[d]);
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[g * len + t];
      float* ag = acc + g * D;
      for (int64_t d = 0; d < D; ++d) ag[d] += p * row[d];
    }
  }
}

template <typename scalar_t>
static void decode_attention_kernel(const scalar_t* q, const scalar_t* k_pool, const scalar_t* v_pool,
                                    const int64_t* tables, const int64_t* lens, scalar_t* out, int64_t B,
                                    int64_t H, int64_t KVH, int64_t D, int64_t max_blocks, int64_t block_size,
                                    float scale) {
  const int64_t G = H / KVH;
  // A work item is a whole sequence when there are enough to share out (a block's rows then lie side
  // by side in the pool, all kv heads one contiguous span), else one (sequence, kv head). Batch 32,
  // 185-token contexts, 30 layers: 18 ms against 30 for (sequence, kv head) items with the K and V
  // rows widened into a buffer and the accumulators in memory (docs/engine-step.md).
  const int64_t per = B >= 2 * at::get_num_threads() ? KVH : 1, items = KVH / per;
  at::parallel_for(0, B * items, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(per * G * D), acc(per * G * D), row(D), scores, sums(per * G), maxes(G);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / items, kh0 = idx % items * per, len = lens[b];
      const int64_t* table = tables + b * max_blocks;
      scores.assign(per * G * len, 0.f);
      for (int64_t h = 0; h < per * G; ++h)
        for (int64_t d = 0; d < D; ++d) qf[h * D + d] = static_cast<float>(q[(b * H + kh0 * G + h) * D + d]) * scale;
      bool done = false;
#ifdef SLOSERVE_ATTENTION_AVX2
      if constexpr (!std::is_same_v<scalar_t, double>) if (D % 8 == 0) {
        attend_avx2(qf.data(), k_pool, v_pool, table, len, KVH, kh0, kh0 + per, G, D, block_size, scores.data(),
                    acc.data(), sums.data());
        done = true;
      }
#endif
      if (!done)
        for (int64_t kh = kh0; kh < kh0 + per; ++kh) {
          const int64_t h = (kh - kh0) * G;
          attend_scalar(qf.data() + h * D, k_pool, v_pool, table, len, KVH, kh, G, D, block_size,
                        scores.data() + h * len, row.data(), acc.data() + h * D, sums.data() + h, maxes.data());
        }
      for (int64_t h = 0; h < per * G; ++h)
        for (int64_t d = 0; d < D; ++d)
          out[(b * H + kh0 * G + h) * D + d] = static_cast<scalar_t>(acc[h * D + d] / sums[h]);
    }
  });
}

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_pool, torch::Tensor v_pool,
                                     torch::Tensor block_tables, torch::Tensor context_lens, int64_t block_size,
                                     double scale) {
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 3 && v_pool.dim() == 3, "q [B,H,D], pools [slots,KVH,D]");
  TORCH_CHECK(q.is_contiguous() && k_pool.is_contiguous() && v_pool.is_contiguous(), "inputs must be contiguous");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && context_lens.scalar_type() == at::kLong, "int64 tables");
  auto tables = block_tables.contiguous();
  auto lens = context_lens.contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KVH = k_pool.size(1);
  TORCH_CHECK(H % KVH == 0, "heads must be a multiple of kv heads");
  auto out = torch::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    decode_attention_kernel<scalar_t>(q.data_ptr<scalar_t>(), k_pool.data_ptr<scalar_t>(), v_pool.data_ptr<scalar_t>(),
                                      tables.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                                      B, H, KVH, D, tables.size(1), block_size, static_cast<float>(scale));
  });
  return out;
}

// The KV write and the attention as one op, registered with the dispatcher (not only pybind) so
// torch.compile keeps it in its graph and its generated code calls it without Python in between.
torch::Tensor paged_decode_write_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor k_pool,
                                           torch::Tensor v_pool, torch::Tensor slots, torch::Tensor block_tables,
                                           torch::Tensor context_lens, int64_t block_size, double scale) {
  k_pool.index_copy_(0, slots, k);
  v_pool.index_copy_(0, slots, v);
  return paged_decode_attention(q.contiguous(), k_pool, v_pool, block_tables, context_lens, block_size, scale);
}

TORCH_LIBRARY(sloserve, m) {
  m.def("paged_decode_write_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) k_pool, Tensor(b!) v_pool, "
        "Tensor slots, Tensor tables, Tensor lens, int block_size, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(sloserve, CPU, m) { m.impl("paged_decode_write_attention", &paged_decode_write_attention); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention, "paged decode attention (CPU)");
}
