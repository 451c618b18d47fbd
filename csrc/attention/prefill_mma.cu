// Paged-attention prefill on tensor cores (wmma, sm_80+), for 16-bit q and
// out and head widths of whole 16-wide tiles up to 128: see attention.cuh.
//
// A block serves 64 query rows of one head, 16 per warp. Per tile of 64 keys
// (K and V gathered from the pool into shared memory in q's dtype, FP8 codes
// widened with their scale first), each warp computes its scores S = Q K^T
// on tensor cores (f32 accumulation), runs the online softmax on them in
// shared memory (two lanes a row), writes the probabilities P in q's dtype,
// rescales its rows of the f32 output accumulator O by the change of the
// running max, and adds P V to O on tensor cores. O lives in shared memory,
// not in accumulator fragments, because a fragment's element-to-row mapping
// is unspecified and the rescale is per row.
#include <mma.h>

#include <type_traits>

#include "attention/attention.cuh"

namespace ek {
namespace wmma = nvcuda::wmma;

constexpr int kMmaRows = 64;                    // query rows per block
constexpr int kMmaKeys = 64;                    // keys per shared-memory tile
constexpr int kTile = 16;                       // the wmma tile: 16 x 16 x 16
constexpr int kRowsPerWarp = kMmaRows / kWarps; // 16

constexpr size_t round128(size_t bytes) {
  return (bytes + 127) / 128 * 128;
}

// Shared-memory layout: row strides padded off the 32 banks (and still whole
// 16-byte vectors, as wmma wants), arrays at 128-byte offsets (wmma wants 32).
// The queries are read only into the warps' fragments, before the key loop's
// first barrier; the scores, first written after it, reuse their space. That
// keeps d 128 (93 KiB) within the 99 KiB a block may opt into on sm_86 and
// sm_89 (A10, L4, L40S, RTX 30xx/40xx), which run the sm_80 build.
template <int HD> struct MmaLayout {
  static_assert(HD % kTile == 0 && HD <= 128, "whole 16-wide tiles, at most 128");
  static constexpr int kLdT = HD + 8;       // q, k, v rows (16-bit)
  static constexpr int kLdS = kMmaKeys + 4; // scores (f32)
  static constexpr int kLdP = kMmaKeys + 8; // probabilities (16-bit)
  static constexpr int kLdO = HD + 4;       // the output accumulator (f32)
  static constexpr size_t kQBytes = round128(sizeof(uint16_t) * kMmaRows * kLdT);
  static constexpr size_t kSBytes = round128(sizeof(float) * kMmaRows * kLdS);
  static constexpr size_t kQ = 0;
  static constexpr size_t kS = 0; // over the queries (see above)
  static constexpr size_t kK = kQBytes > kSBytes ? kQBytes : kSBytes;
  static constexpr size_t kV = kK + round128(sizeof(uint16_t) * kMmaKeys * kLdT);
  static constexpr size_t kP = kV + round128(sizeof(uint16_t) * kMmaKeys * kLdT);
  static constexpr size_t kO = kP + round128(sizeof(uint16_t) * kMmaRows * kLdP);
  static constexpr size_t kBytes = kO + round128(sizeof(float) * kMmaRows * kLdO);
  static_assert(kBytes <= 99 * 1024, "within sm_86/sm_89's opt-in shared memory");
};

// 16-bit K or V elements [d, d + VEC) of one cache row into shared memory in
// T: a 16-bit pool copied as it is, an FP8 one widened as code * scale (the
// CPU's value) and rounded to T, as the SIMT kernel's floats would be by
// the tensor cores' inputs.
template <typename T, typename C, int VEC>
__device__ __forceinline__ void stage_kv(T *dst, const C *src, float scale) {
  if constexpr (is_fp8<C>) {
    KvVec<C, VEC> kv;
    kv.load(src);
    kv.widen(scale);
#pragma unroll
    for (int h = 0; h < VEC / Vec<T>::N; ++h) {
      Pack<T> out;
#pragma unroll
      for (int e = 0; e < Vec<T>::N; ++e)
        out.v[e] = from_float<T>(kv.get(h * Vec<T>::N + e));
      store_pack(dst + h * Vec<T>::N, out);
    }
  } else {
    static_assert(sizeof(C) == sizeof(T) && VEC == Vec<T>::N, "a pool in q's dtype");
    store_pack(dst, load_pack(reinterpret_cast<const T *>(src)));
  }
}

template <typename T> __device__ __forceinline__ void store_zeros(T *dst) {
  Pack<T> z;
#pragma unroll
  for (int e = 0; e < Vec<T>::N; ++e)
    z.v[e] = from_float<T>(0.f);
  store_pack(dst, z);
}

// grid: (64-row query tiles, heads, sequences); dynamic shared memory
// MmaLayout<HD>::kBytes.
template <typename T, typename C, int HD>
__global__ void __launch_bounds__(kAttnThreads) prefill_mma_kernel(ek_attn_params p) {
  using L = MmaLayout<HD>;
  constexpr int VEC = Vec<C>::N; // cache elements per 16-byte load
  extern __shared__ __align__(128) unsigned char smem[];
  T *sq = reinterpret_cast<T *>(smem + L::kQ);
  T *sk = reinterpret_cast<T *>(smem + L::kK);
  T *sv = reinterpret_cast<T *>(smem + L::kV);
  float *ss = reinterpret_cast<float *>(smem + L::kS);
  T *sp = reinterpret_cast<T *>(smem + L::kP);
  float *so = reinterpret_cast<float *>(smem + L::kO);

  const int seq = blockIdx.z, head = blockIdx.y;
  const int q0 = p.query_start[seq], qlen = p.query_start[seq + 1] - q0;
  const int tile_row0 = blockIdx.x * kMmaRows;
  if (tile_row0 >= qlen)
    return;
  const int tile_rows = min(kMmaRows, qlen - tile_row0);
  const int first_pos = p.context_lens[seq] - qlen; // position of query row 0
  const int kv_head = head / (p.num_heads / p.num_kv_heads);

  // The tile's queries (rows past the sequence's zero) and a zero accumulator.
  const T *qbase = static_cast<const T *>(p.q) + static_cast<int64_t>(head) * HD;
  for (int idx = threadIdx.x; idx < kMmaRows * (HD / Vec<T>::N); idx += blockDim.x) {
    const int r = idx / (HD / Vec<T>::N), d = (idx % (HD / Vec<T>::N)) * Vec<T>::N;
    if (r < tile_rows)
      store_pack(sq + r * L::kLdT + d,
                 load_pack(qbase + static_cast<int64_t>(q0 + tile_row0 + r) * p.q_stride + d));
    else
      store_zeros(sq + r * L::kLdT + d);
  }
  for (int idx = threadIdx.x; idx < kMmaRows * HD; idx += blockDim.x)
    so[(idx / HD) * L::kLdO + idx % HD] = 0.f;
  __syncthreads();

  // This warp's rows; lanes 2r and 2r + 1 own row r of them in the softmax,
  // the even columns and the odd ones.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr0 = warp * kRowsPerWarp;
  const int warp_rows = max(0, min(kRowsPerWarp, tile_rows - wr0));
  const int r = lane / 2, half = lane % 2;
  const bool row_valid = r < warp_rows;
  const int pos = first_pos + tile_row0 + wr0 + r;
  const int row_lo = window_start(pos, p.sliding_window);
  const int warp_first = first_pos + tile_row0 + wr0;
  const int warp_last = warp_first + warp_rows - 1;
  float m = -INFINITY, l = 0.f;
  // The warp's queries stay in registers for every key tile. (The scores
  // overwrite sq: no warp writes them before the loop's first barrier.)
  wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, wmma::row_major> qf[HD / kTile];
#pragma unroll
  for (int kk = 0; kk < HD / kTile; ++kk)
    wmma::load_matrix_sync(qf[kk], sq + wr0 * L::kLdT + kk * kTile, L::kLdT);

  const int key_lo = window_start(first_pos + tile_row0, p.sliding_window);
  const int key_hi = first_pos + tile_row0 + tile_rows - 1; // inclusive
  const C *kc = static_cast<const C *>(p.k_cache);
  const C *vc = static_cast<const C *>(p.v_cache);
  for (int k0 = key_lo; k0 <= key_hi; k0 += kMmaKeys) {
    __syncthreads(); // the previous tile's K and V are no longer read
    for (int idx = threadIdx.x; idx < kMmaKeys * (HD / VEC); idx += blockDim.x) {
      const int t = idx / (HD / VEC), d = (idx % (HD / VEC)) * VEC;
      const int j = k0 + t;
      if (j <= key_hi) {
        const int64_t off = kv_offset(p, seq, kv_head, j) + d;
        stage_kv<T, C, VEC>(sk + t * L::kLdT + d, kc + off, p.k_scale);
        stage_kv<T, C, VEC>(sv + t * L::kLdT + d, vc + off, p.v_scale);
      } else {
        // Zero, not stale: a masked key's probability is 0, and 0 * NaN is not.
#pragma unroll
        for (int h = 0; h < VEC; h += Vec<T>::N) {
          store_zeros(sk + t * L::kLdT + d + h);
          store_zeros(sv + t * L::kLdT + d + h);
        }
      }
    }
    __syncthreads();
    // A warp none of whose rows sees a key of this tile skips it (the causal
    // diagonal, a sliding window's start, rows past the sequence).
    if (warp_rows == 0 || k0 > warp_last ||
        k0 + kMmaKeys - 1 < window_start(warp_first, p.sliding_window))
      continue;

      // S = Q K^T for this warp's 16 rows.
#pragma unroll
    for (int n = 0; n < kMmaKeys / kTile; ++n) {
      wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < HD / kTile; ++kk) {
        wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, wmma::col_major> b;
        wmma::load_matrix_sync(b, sk + n * kTile * L::kLdT + kk * kTile, L::kLdT);
        wmma::mma_sync(acc, qf[kk], b, acc);
      }
      wmma::store_matrix_sync(ss + wr0 * L::kLdS + n * kTile, acc, L::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // The online softmax over this tile, two lanes a row.
    float *srow = ss + (wr0 + r) * L::kLdS;
    T *prow = sp + (wr0 + r) * L::kLdP;
    float tile_max = -INFINITY;
#pragma unroll 8
    for (int c = half; c < kMmaKeys; c += 2) {
      const int j = k0 + c;
      const float s = (row_valid && j >= row_lo && j <= pos) ? srow[c] * p.scale : -INFINITY;
      srow[c] = s;
      tile_max = fmaxf(tile_max, s);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    // Nothing visible yet: no weight, and no exp(-inf - -inf).
    const bool none = m_new == -INFINITY;
    const float corr = none ? 1.f : expf(m - m_new);
    float sum = 0.f;
#pragma unroll 8
    for (int c = half; c < kMmaKeys; c += 2) {
      // The weights that multiply V, rounded to T, are the ones summed.
      const T w = from_float<T>(none ? 0.f : expf(srow[c] - m_new));
      prow[c] = w;
      sum += to_float(w);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * corr + sum;
    m = m_new;
    if (corr != 1.f) {
      float *orow = so + (wr0 + r) * L::kLdO;
#pragma unroll 8
      for (int c = half; c < HD; c += 2)
        orow[c] *= corr;
    }
    __syncwarp();

    // O += P V for this warp's rows.
#pragma unroll
    for (int n = 0; n < HD / kTile; ++n) {
      wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
      wmma::load_matrix_sync(acc, so + wr0 * L::kLdO + n * kTile, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kMmaKeys / kTile; ++kk) {
        wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, T, wmma::row_major> b;
        wmma::load_matrix_sync(a, sp + wr0 * L::kLdP + kk * kTile, L::kLdP);
        wmma::load_matrix_sync(b, sv + kk * kTile * L::kLdT + n * kTile, L::kLdT);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(so + wr0 * L::kLdO + n * kTile, acc, L::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (!row_valid)
    return;
  T *out = static_cast<T *>(p.out) + static_cast<int64_t>(q0 + tile_row0 + wr0 + r) * p.out_stride +
           static_cast<int64_t>(head) * HD;
  const float *orow = so + (wr0 + r) * L::kLdO;
  for (int c = half; c < HD; c += 2)
    out[c] = from_float<T>(l > 0.f ? orow[c] / l : 0.f);
}

template <typename T, typename C, int HD>
int32_t launch_prefill_mma(const ek_attn_params &p, int32_t max_query_len, cudaStream_t s) {
  constexpr size_t bytes = MmaLayout<HD>::kBytes;
  // Above the default 48 KiB: opted into per launch (cheap, and per device).
  cudaError_t err =
      cudaFuncSetAttribute(prefill_mma_kernel<T, C, HD>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess)
    return static_cast<int32_t>(err);
  const dim3 grid((max_query_len + kMmaRows - 1) / kMmaRows, p.num_heads, p.num_seqs);
  prefill_mma_kernel<T, C, HD><<<grid, kAttnThreads, bytes, s>>>(p);
  return launch_status();
}

// The head widths this kernel is built for (attention.cuh's, but 256).
constexpr bool mma_head_dim(int hd) {
  return hd % kTile == 0 && hd <= 128;
}

} // namespace ek

using namespace ek;

extern "C" int64_t ek_paged_attention_prefill_mma_smem_bytes(int32_t head_dim) {
  switch (head_dim) {
  case 16:
    return MmaLayout<16>::kBytes;
  case 32:
    return MmaLayout<32>::kBytes;
  case 64:
    return MmaLayout<64>::kBytes;
  case 80:
    return MmaLayout<80>::kBytes;
  case 96:
    return MmaLayout<96>::kBytes;
  case 128:
    return MmaLayout<128>::kBytes;
  default:
    return -1;
  }
}

extern "C" int32_t ek_paged_attention_prefill_mma(const ek_attn_params *p, int32_t max_query_len,
                                                  void *stream) {
  if (!valid_params(p))
    return static_cast<int32_t>(cudaErrorInvalidValue);
  if (p->num_seqs == 0 || max_query_len <= 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(p->dtype, {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return static_cast<int32_t>(cudaErrorInvalidValue); // 16-bit only
    } else {
      EK_DISPATCH_CACHE_DTYPE(p->dtype, p->cache_dtype, {
        EK_DISPATCH_HEAD_DIM(p->head_dim, {
          if constexpr (mma_head_dim(HD))
            return launch_prefill_mma<scalar_t, cache_t, HD>(*p, max_query_len, s);
          else
            return static_cast<int32_t>(cudaErrorInvalidValue);
        });
      });
    }
  });
  return 0;
}
