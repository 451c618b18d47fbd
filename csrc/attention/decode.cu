// Paged-attention decode (one query per sequence) and the split-K
// (flash-decoding) reduce of its partitions: see attention.cuh.
#include "attention/attention.cuh"

namespace ek {

__host__ __device__ constexpr int pow2_at_least(int n) {
  int p = 1;
  while (p < n)
    p *= 2;
  return p;
}

template <typename T, int HD> struct DecodeGeometry {
  static constexpr int VEC = Vec<T>::N;
  static constexpr int PAD = pow2_at_least(HD);
  static constexpr int L = PAD / VEC < 32 ? PAD / VEC : 32; // lanes per token
  static constexpr int NV = PAD / (L * VEC);                // vectors per lane
  static constexpr int GROUPS = kWarps * (32 / L);          // token groups per block
};

// grid: (kv heads x head chunks, sequences, partitions or 1). T: q and out;
// C: the pools (T, or FP8 read as code * k_scale / v_scale). A lane's layout
// is T's: VEC dims per vector, so an FP8 lane loads VEC bytes at a time.
template <typename T, typename C, int HD, int MAXG>
__global__ void __launch_bounds__(kAttnThreads)
    decode_kernel(ek_attn_params p, int partitioned, float *__restrict__ part_out,
                  float *__restrict__ part_max, float *__restrict__ part_sum, int num_partitions) {
  using G = DecodeGeometry<T, HD>;
  constexpr int VEC = G::VEC, L = G::L, NV = G::NV, GROUPS = G::GROUPS;
  constexpr int TPG = MAXG >= 8 ? 2 : 4; // tokens a lane group loads per step

  __shared__ float red_m[GROUPS][MAXG];
  __shared__ float red_l[GROUPS][MAXG];
  __shared__ float red_acc[GROUPS][MAXG][HD];

  const int group_size = p.num_heads / p.num_kv_heads;
  const int chunks_per_kv = (group_size + MAXG - 1) / MAXG;
  const int kv_head = blockIdx.x / chunks_per_kv;
  const int chunk = blockIdx.x % chunks_per_kv;
  const int head0 = kv_head * group_size + chunk * MAXG;
  const int nh = min(MAXG, group_size - chunk * MAXG);
  const int seq = blockIdx.y;
  const int ctx = p.context_lens[seq];
  const int lo = window_start(ctx - 1, p.sliding_window);
  int start = lo, end = ctx;
  if (partitioned) {
    const int part = blockIdx.z;
    start = max(lo, part * EK_ATTN_PARTITION_SIZE);
    end = min(ctx, (part + 1) * EK_ATTN_PARTITION_SIZE);
    if (start >= end)
      return; // the reduce skips partitions with no visible token
  }

  const int lane = threadIdx.x & 31;
  const int sub = lane % L;                                // lane within the token group
  const int gi = (threadIdx.x >> 5) * (32 / L) + lane / L; // token group in the block

  // This lane's dims of each query head, pre-scaled.
  float q[MAXG][NV][VEC];
  const T *qrow = static_cast<const T *>(p.q) + static_cast<int64_t>(seq) * p.q_stride;
#pragma unroll
  for (int h = 0; h < MAXG; ++h)
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      const int d = (v * L + sub) * VEC;
      if (h < nh && d < HD) {
        Pack<T> pk = load_pack(qrow + static_cast<int64_t>(head0 + h) * HD + d);
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          q[h][v][e] = to_float(pk.v[e]) * p.scale;
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          q[h][v][e] = 0.f;
      }
    }

  float m[MAXG], l[MAXG], acc[MAXG][NV][VEC];
#pragma unroll
  for (int h = 0; h < MAXG; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int v = 0; v < NV; ++v)
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        acc[h][v][e] = 0.f;
  }

  const C *kc = static_cast<const C *>(p.k_cache);
  const C *vc = static_cast<const C *>(p.v_cache);
  // Where this lane group's tokens of a step sit in the pools (-1: past the
  // end). A step issues its K and V loads together, then looks up the next
  // step's offsets (block-table loads) while those are in flight: on the H200
  // the block-table load, K, then V were three serialized latencies a step.
  int64_t off[TPG];
#pragma unroll
  for (int t = 0; t < TPG; ++t) {
    const int j = start + t * GROUPS + gi;
    off[t] = j < end ? kv_offset(p, seq, kv_head, j) : -1;
  }
  for (int base = start; base < end; base += GROUPS * TPG) {
    bool valid[TPG];
    KvVec<C, VEC> kr[TPG][NV], vr[TPG][NV];
#pragma unroll
    for (int t = 0; t < TPG; ++t) {
      valid[t] = off[t] >= 0;
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const int d = (v * L + sub) * VEC;
        if (valid[t] && d < HD) {
          kr[t][v].load(kc + off[t] + d);
          vr[t][v].load(vc + off[t] + d);
        } else {
          kr[t][v].zero();
          vr[t][v].zero();
        }
      }
    }
#pragma unroll
    for (int t = 0; t < TPG; ++t) {
      const int j = base + (TPG + t) * GROUPS + gi;
      off[t] = j < end ? kv_offset(p, seq, kv_head, j) : -1;
    }
    // After the next offsets' loads are issued: K as floats once for every head.
#pragma unroll
    for (int t = 0; t < TPG; ++t)
#pragma unroll
      for (int v = 0; v < NV; ++v)
        kr[t][v].widen(p.k_scale);
    float s[TPG][MAXG];
#pragma unroll
    for (int t = 0; t < TPG; ++t)
#pragma unroll
      for (int h = 0; h < MAXG; ++h) {
        float dot = 0.f;
#pragma unroll
        for (int v = 0; v < NV; ++v)
#pragma unroll
          for (int e = 0; e < VEC; ++e)
            dot += q[h][v][e] * kr[t][v].get(e);
#pragma unroll
        for (int o = L / 2; o > 0; o >>= 1)
          dot += __shfl_xor_sync(0xffffffffu, dot, o);
        s[t][h] = valid[t] ? dot : -INFINITY;
      }
    // V likewise beside 16-bit q; beside f32 q (half the dims per vector) the
    // floats' registers made ptxas spill (HD 128, MAXG 4): V reads codes.
    constexpr bool kWidenV = sizeof(T) == 2;
    if constexpr (kWidenV)
#pragma unroll
      for (int t = 0; t < TPG; ++t)
#pragma unroll
        for (int v = 0; v < NV; ++v)
          vr[t][v].widen(p.v_scale);
#pragma unroll
    for (int h = 0; h < MAXG; ++h) {
      float step_max = s[0][h];
#pragma unroll
      for (int t = 1; t < TPG; ++t)
        step_max = fmaxf(step_max, s[t][h]);
      if (step_max == -INFINITY)
        continue; // no visible token in this step
      const float m_new = fmaxf(m[h], step_max);
      const float corr = expf(m[h] - m_new); // exp(-inf) = 0 on the first step
      l[h] *= corr;
#pragma unroll
      for (int v = 0; v < NV; ++v)
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          acc[h][v][e] *= corr;
#pragma unroll
      for (int t = 0; t < TPG; ++t) {
        const float w = valid[t] ? expf(s[t][h] - m_new) : 0.f;
        l[h] += w;
#pragma unroll
        for (int v = 0; v < NV; ++v)
#pragma unroll
          for (int e = 0; e < VEC; ++e)
            acc[h][v][e] += w * (kWidenV ? vr[t][v].get(e) : vr[t][v].read(e, p.v_scale));
      }
      m[h] = m_new;
    }
  }

  // Merge the token groups.
#pragma unroll
  for (int h = 0; h < MAXG; ++h) {
    if (sub == 0) {
      red_m[gi][h] = m[h];
      red_l[gi][h] = l[h];
    }
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      const int d = (v * L + sub) * VEC;
      if (d < HD)
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          red_acc[gi][h][d + e] = acc[h][v][e];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * HD; idx += blockDim.x) {
    const int h = idx / HD, d = idx % HD;
    float gm = -INFINITY;
    for (int g = 0; g < GROUPS; ++g)
      gm = fmaxf(gm, red_m[g][h]);
    float sum = 0.f, o = 0.f;
    if (gm != -INFINITY)
      for (int g = 0; g < GROUPS; ++g) {
        const float w = expf(red_m[g][h] - gm);
        sum += red_l[g][h] * w;
        o += red_acc[g][h][d] * w;
      }
    const float result = sum > 0.f ? o / sum : 0.f;
    const int head = head0 + h;
    if (partitioned) {
      const int64_t slot =
          (static_cast<int64_t>(seq) * p.num_heads + head) * num_partitions + blockIdx.z;
      part_out[slot * HD + d] = result;
      if (d == 0) {
        part_max[slot] = gm;
        part_sum[slot] = sum;
      }
    } else {
      T *out = static_cast<T *>(p.out) + static_cast<int64_t>(seq) * p.out_stride;
      out[static_cast<int64_t>(head) * HD + d] = from_float<T>(result);
    }
  }
}

// grid: (heads, sequences). Merges the partitions of one (sequence, head).
template <typename T, int HD>
__global__ void decode_reduce_kernel(ek_attn_params p, const float *__restrict__ part_out,
                                     const float *__restrict__ part_max,
                                     const float *__restrict__ part_sum, int num_partitions) {
  const int head = blockIdx.x, seq = blockIdx.y;
  const int ctx = p.context_lens[seq];
  const int lo = window_start(ctx - 1, p.sliding_window);
  const int first = lo / EK_ATTN_PARTITION_SIZE;
  const int last = (ctx + EK_ATTN_PARTITION_SIZE - 1) / EK_ATTN_PARTITION_SIZE;
  const int64_t base = (static_cast<int64_t>(seq) * p.num_heads + head) * num_partitions;
  float gm = -INFINITY;
  for (int q = first; q < last; ++q)
    gm = fmaxf(gm, part_max[base + q]);
  T *out = static_cast<T *>(p.out) + static_cast<int64_t>(seq) * p.out_stride +
           static_cast<int64_t>(head) * HD;
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float sum = 0.f, o = 0.f;
    if (gm != -INFINITY)
      for (int q = first; q < last; ++q) {
        const float w = part_sum[base + q] * expf(part_max[base + q] - gm);
        sum += w;
        o += w * part_out[(base + q) * HD + d];
      }
    out[d] = from_float<T>(sum > 0.f ? o / sum : 0.f);
  }
}

template <typename T, typename C, int HD>
int32_t launch_decode(const ek_attn_params &p, int32_t num_partitions, void *workspace,
                      cudaStream_t s) {
  const int group = p.num_heads / p.num_kv_heads;
  float *part_out = nullptr, *part_max = nullptr, *part_sum = nullptr;
  if (num_partitions > 0) {
    if (workspace == nullptr)
      return static_cast<int32_t>(cudaErrorInvalidValue);
    const int64_t slots = static_cast<int64_t>(p.num_seqs) * p.num_heads * num_partitions;
    part_out = static_cast<float *>(workspace);
    part_max = part_out + slots * HD;
    part_sum = part_max + slots;
  }
  auto run = [&](auto maxg_tag) {
    constexpr int MAXG = decltype(maxg_tag)::value;
    const int chunks = (group + MAXG - 1) / MAXG;
    const dim3 grid(p.num_kv_heads * chunks, p.num_seqs, num_partitions > 0 ? num_partitions : 1);
    decode_kernel<T, C, HD, MAXG><<<grid, kAttnThreads, 0, s>>>(p, num_partitions > 0, part_out,
                                                                part_max, part_sum, num_partitions);
  };
  if (group == 1)
    run(std::integral_constant<int, 1>{});
  else if (group <= 4)
    run(std::integral_constant<int, 4>{});
  else
    run(std::integral_constant<int, EK_ATTN_MAX_GROUP>{});
  if (num_partitions > 0)
    decode_reduce_kernel<T, HD><<<dim3(p.num_heads, p.num_seqs), 128, 0, s>>>(
        p, part_out, part_max, part_sum, num_partitions);
  return launch_status();
}

} // namespace ek

using namespace ek;

extern "C" int64_t ek_paged_attention_workspace_bytes(int32_t num_seqs, int32_t num_heads,
                                                      int32_t head_dim, int32_t num_partitions) {
  return static_cast<int64_t>(num_seqs) * num_heads * num_partitions * (head_dim + 2) *
         static_cast<int64_t>(sizeof(float));
}

extern "C" int32_t ek_paged_attention_decode(const ek_attn_params *p, int32_t num_partitions,
                                             void *workspace, void *stream) {
  if (!valid_params(p))
    return static_cast<int32_t>(cudaErrorInvalidValue);
  if (p->num_seqs == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(p->dtype, {
    EK_DISPATCH_CACHE_DTYPE(p->dtype, p->cache_dtype, {
      EK_DISPATCH_HEAD_DIM(p->head_dim, return launch_decode<scalar_t, cache_t, HD>(
                                            *p, num_partitions, workspace, s));
    });
  });
  return 0;
}
