// Paged decode attention on CPU: one query token per sequence attends to its context read
// straight from the KV pool through its block table (no gather copy). Grouped-query heads share
// each K/V row they read. Accumulates in fp32; parallel over (sequence, kv head).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

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
