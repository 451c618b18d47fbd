// Paged-attention prefill, chunked prefill and mixed batches: see attention.cuh.
#include "attention/attention.cuh"

namespace ek {

constexpr int kPrefillRows = 16;                       // query rows per block
constexpr int kRowLanes = kAttnThreads / kPrefillRows; // lanes per row (8)

template <int HD> struct PrefillGeometry {
  static constexpr int BK = HD > 128 ? 16 : 32; // keys per shared-memory tile
  static constexpr int DPL = HD / kRowLanes;    // dims per lane
};

// grid: (query tiles, heads, sequences). T: q and out; C: the pools (T, or
// FP8 read as code * k_scale / v_scale), gathered VEC elements (16 bytes) at a time.
template <typename T, typename C, int HD>
__global__ void __launch_bounds__(kAttnThreads) prefill_kernel(ek_attn_params p) {
  using G = PrefillGeometry<HD>;
  constexpr int BK = G::BK, DPL = G::DPL, VEC = Vec<C>::N;
  __shared__ float ks[BK][HD];
  __shared__ float vs[BK][HD];

  const int seq = blockIdx.z, head = blockIdx.y;
  const int q0 = p.query_start[seq], q1 = p.query_start[seq + 1];
  const int qlen = q1 - q0;
  const int tile_row0 = blockIdx.x * kPrefillRows;
  if (tile_row0 >= qlen)
    return;
  const int ctx = p.context_lens[seq];
  const int first_pos = ctx - qlen; // position of query row 0
  const int kv_head = head / (p.num_heads / p.num_kv_heads);

  const int r = threadIdx.x / kRowLanes, sub = threadIdx.x % kRowLanes;
  const int row = tile_row0 + r;
  const bool row_valid = row < qlen;
  const int pos = row_valid ? first_pos + row : -1;
  const int row_lo = row_valid ? window_start(pos, p.sliding_window) : 0;

  float q[DPL], acc[DPL];
  const T *qrow = static_cast<const T *>(p.q) +
                  static_cast<int64_t>(q0 + (row_valid ? row : 0)) * p.q_stride +
                  static_cast<int64_t>(head) * HD;
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    q[i] = row_valid ? to_float(qrow[sub + kRowLanes * i]) * p.scale : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;

  const int last_row = min(qlen, tile_row0 + kPrefillRows) - 1;
  const int key_lo = window_start(first_pos + tile_row0, p.sliding_window);
  const int key_hi = first_pos + last_row; // inclusive
  const C *kc = static_cast<const C *>(p.k_cache);
  const C *vc = static_cast<const C *>(p.v_cache);
  for (int k0 = key_lo; k0 <= key_hi; k0 += BK) {
    __syncthreads(); // the previous tile is no longer read
    for (int idx = threadIdx.x; idx < BK * (HD / VEC); idx += blockDim.x) {
      const int t = idx / (HD / VEC), d = (idx % (HD / VEC)) * VEC;
      const int j = k0 + t;
      if (j <= key_hi) {
        const int64_t off = kv_offset(p, seq, kv_head, j) + d;
        KvVec<C, VEC> kp, vp;
        kp.load(kc + off);
        vp.load(vc + off);
        kp.widen(p.k_scale);
        vp.widen(p.v_scale);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          ks[t][d + e] = kp.get(e);
          vs[t][d + e] = vp.get(e);
        }
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          ks[t][d + e] = vs[t][d + e] = 0.f;
      }
    }
    __syncthreads();
    float s[BK];
    float tile_max = -INFINITY;
#pragma unroll
    for (int t = 0; t < BK; ++t) {
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < DPL; ++i)
        dot += q[i] * ks[t][sub + kRowLanes * i];
#pragma unroll
      for (int o = kRowLanes / 2; o > 0; o >>= 1)
        dot += __shfl_xor_sync(0xffffffffu, dot, o);
      const int j = k0 + t;
      s[t] = (row_valid && j >= row_lo && j <= pos) ? dot : -INFINITY;
      tile_max = fmaxf(tile_max, s[t]);
    }
    if (tile_max == -INFINITY)
      continue;
    const float m_new = fmaxf(m, tile_max);
    const float corr = expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < DPL; ++i)
      acc[i] *= corr;
#pragma unroll
    for (int t = 0; t < BK; ++t) {
      const float w = expf(s[t] - m_new);
      l += w;
#pragma unroll
      for (int i = 0; i < DPL; ++i)
        acc[i] += w * vs[t][sub + kRowLanes * i];
    }
    m = m_new;
  }
  if (!row_valid)
    return;
  T *out = static_cast<T *>(p.out) + static_cast<int64_t>(q0 + row) * p.out_stride +
           static_cast<int64_t>(head) * HD;
#pragma unroll
  for (int i = 0; i < DPL; ++i)
    out[sub + kRowLanes * i] = from_float<T>(l > 0.f ? acc[i] / l : 0.f);
}

template <typename T, typename C, int HD>
int32_t launch_prefill(const ek_attn_params &p, int32_t max_query_len, cudaStream_t s) {
  const dim3 grid((max_query_len + kPrefillRows - 1) / kPrefillRows, p.num_heads, p.num_seqs);
  prefill_kernel<T, C, HD><<<grid, kAttnThreads, 0, s>>>(p);
  return launch_status();
}

} // namespace ek

using namespace ek;

extern "C" int32_t ek_paged_attention_prefill(const ek_attn_params *p, int32_t max_query_len,
                                              void *stream) {
  if (!valid_params(p))
    return static_cast<int32_t>(cudaErrorInvalidValue);
  if (p->num_seqs == 0 || max_query_len <= 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(p->dtype, {
    EK_DISPATCH_CACHE_DTYPE(p->dtype, p->cache_dtype, {
      EK_DISPATCH_HEAD_DIM(p->head_dim,
                           return launch_prefill<scalar_t, cache_t, HD>(*p, max_query_len, s));
    });
  });
  return 0;
}
