// Paged decode attention on CPU: one query token per sequence attends to its context read
// straight from the KV pool through its block table (no gather copy). Grouped-query heads share
// each K/V row they read. Accumulates in fp32; parallel over (sequence, kv head). With AVX2 and a
// head size that is a multiple of 8, the inner loops are explicit 8-lane code (`attend_avx2`).
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

// Touch the K (or V) rows of this kv head in one block, so they are on their way from memory while
// the block before is computed: a block's rows for one head are 16 short runs 3 heads apart and
// the blocks lie anywhere in a pool far larger than the cache, so the hardware prefetcher alone
// left the kernel waiting on memory (30 layers at batch 32 with 185-token contexts: 33 ms).
constexpr int64_t kAhead = 1;  // blocks prefetched ahead of the one computed (2 measured no better)

template <typename scalar_t>
inline void prefetch_block(const scalar_t* pool, int64_t base, int64_t n, int64_t KVH, int64_t kh, int64_t D) {
  const int64_t bytes = D * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t s = 0; s < n; ++s) {
    const char* row = reinterpret_cast<const char*>(pool + ((base + s) * KVH + kh) * D);
    for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(row + off, _MM_HINT_T0);
  }
}

// One (sequence, kv head): its G query heads against the context, D a multiple of 8, block by
// block. The K and V rows are widened once into `row` and shared by the G heads; scores, exp and
// the weighted sum of V go 8 lanes at a time; the next block's rows are prefetched.
template <typename scalar_t>
void attend_avx2(const float* qf, const scalar_t* k_pool, const scalar_t* v_pool, const int64_t* table, int64_t len,
                 int64_t KVH, int64_t kh, int64_t G, int64_t D, int64_t block_size, float* scores, float* row,
                 float* acc, float* sums) {
  const int64_t blocks = (len + block_size - 1) / block_size;
  auto block_rows = [&](int64_t j) { return std::min(block_size, len - j * block_size); };
  for (int64_t j = 0; j < std::min<int64_t>(kAhead, blocks); ++j)
    prefetch_block(k_pool, table[j] * block_size, block_rows(j), KVH, kh, D);
  for (int64_t j = 0; j < blocks; ++j) {
    if (j + kAhead < blocks) prefetch_block(k_pool, table[j + kAhead] * block_size, block_rows(j + kAhead), KVH, kh, D);
    if (j + kAhead >= blocks && j + kAhead - blocks < blocks)  // the V pass's first blocks, as K's run out
      prefetch_block(v_pool, table[j + kAhead - blocks] * block_size, block_rows(j + kAhead - blocks), KVH, kh, D);
    const int64_t base = table[j] * block_size, n = block_rows(j);
    for (int64_t s = 0; s < n; ++s) {
      const int64_t t = j * block_size + s;
      const scalar_t* kp = k_pool + ((base + s) * KVH + kh) * D;
      for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(row + d, load8(kp + d));
      for (int64_t g = 0; g < G; ++g) {
        const float* qg = qf + g * D;
        __m256 a = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), _mm256_loadu_ps(row + d), a);
        scores[g * len + t] = hsum8(a);
      }
    }
  }
  const int64_t len8 = len - len % 8;
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores + g * len;
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
    sums[g] = sum;
  }
  std::fill(acc, acc + G * D, 0.f);
  for (int64_t j = 0; j < blocks; ++j) {
    if (j + kAhead < blocks) prefetch_block(v_pool, table[j + kAhead] * block_size, block_rows(j + kAhead), KVH, kh, D);
    const int64_t base = table[j] * block_size, n = block_rows(j);
    for (int64_t s = 0; s < n; ++s) {
      const int64_t t = j * block_size + s;
      const scalar_t* vp = v_pool + ((base + s) * KVH + kh) * D;
      for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(row + d, load8(vp + d));
      for (int64_t g = 0; g < G; ++g) {
        const __m256 p = _mm256_set1_ps(scores[g * len + t]);
        float* ag = acc + g * D;
        for (int64_t d = 0; d < D; d += 8)
          _mm256_storeu_ps(ag + d, _mm256_fmadd_ps(p, _mm256_loadu_ps(row + d), _mm256_loadu_ps(ag + d)));
      }
    }
  }
}
}  // namespace
#endif

template <typename scalar_t>
static void decode_attention_kernel(const scalar_t* q, const scalar_t* k_pool, const scalar_t* v_pool,
                                    const int64_t* tables, const int64_t* lens, scalar_t* out, int64_t B,
                                    int64_t H, int64_t KVH, int64_t D, int64_t max_blocks, int64_t block_size,
                                    float scale) {
  const int64_t G = H / KVH;
  at::parallel_for(0, B * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), acc(G * D), row(D), scores, maxes(G), sums(G);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / KVH, kh = idx % KVH, len = lens[b];
      const int64_t* table = tables + b * max_blocks;
      scores.assign(G * len, 0.f);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = static_cast<float>(q[(b * H + kh * G + g) * D + d]) * scale;
#ifdef SLOSERVE_ATTENTION_AVX2
      if constexpr (!std::is_same_v<scalar_t, double>) if (D % 8 == 0) {
        attend_avx2(qf.data(), k_pool, v_pool, table, len, KVH, kh, G, D, block_size, scores.data(), row.data(),
                    acc.data(), sums.data());
        for (int64_t g = 0; g < G; ++g)
          for (int64_t d = 0; d < D; ++d)
            out[(b * H + kh * G + g) * D + d] = static_cast<scalar_t>(acc[g * D + d] / sums[g]);
        continue;
      }
#endif
      std::fill(maxes.begin(), maxes.end(), -INFINITY);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const scalar_t* kp = k_pool + (slot * KVH + kh) * D;
        for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(kp[d]);
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qf.data() + g * D;
          float s = 0.f;
          for (int64_t d = 0; d < D; ++d) s += qg[d] * row[d];
          scores[g * len + t] = s;
          maxes[g] = std::max(maxes[g], s);
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float total = 0.f;
        float* sg = scores.data() + g * len;
        for (int64_t t = 0; t < len; ++t) {
          sg[t] = std::exp(sg[t] - maxes[g]);
          total += sg[t];
        }
        sums[g] = total;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const scalar_t* vp = v_pool + (slot * KVH + kh) * D;
        for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(vp[d]);
        for (int64_t g = 0; g < G; ++g) {
          const float p = scores[g * len + t];
          float* ag = acc.data() + g * D;
          for (int64_t d = 0; d < D; ++d) ag[d] += p * row[d];
        }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d)
          out[(b * H + kh * G + g) * D + d] = static_cast<scalar_t>(acc[g * D + d] / sums[g]);
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
