// Sampling kernels on float32 logits [rows, vocab]: one block per row for the
// row-wide ones. Semantics follow the CPU sampler (src/sampling/): see the
// comments in kernels.h. Thresholds (top-k, top-p) are found without sorting:
// a most-significant-digit-first radix search over order-preserving 32-bit
// keys of the logits, 8 bits per pass, with a shared-memory histogram of
// counts (top-k) or of probability mass (top-p).
#include "common.cuh"

namespace ek {

constexpr int kRowThreads = 512;

// Larger float -> larger key; -0.0 is taken as +0.0 (IEEE comparisons tie them).
__device__ __forceinline__ uint32_t ordered_key(float f) {
  uint32_t b = __float_as_uint(f == 0.f ? 0.f : f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The float whose ordered_key is `key`.
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// As ordered_key, but -0.0 below +0.0 (Rust's f32::total_cmp order).
__device__ __forceinline__ uint32_t total_key(float f) {
  uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__global__ void
penalties_kernel(float *__restrict__ logits, int64_t vocab, const int32_t *__restrict__ row_offsets,
                 const int32_t *__restrict__ token_ids, const int32_t *__restrict__ output_counts,
                 const float *__restrict__ repetition, const float *__restrict__ frequency,
                 const float *__restrict__ presence) {
  const int64_t r = blockIdx.x;
  float *row = logits + r * vocab;
  const float rep = repetition[r], freq = frequency[r], pres = presence[r];
  for (int i = row_offsets[r] + threadIdx.x; i < row_offsets[r + 1]; i += blockDim.x) {
    const int id = token_ids[i];
    if (id < 0 || id >= vocab)
      continue;
    float l = row[id];
    if (rep != 1.f)
      l = l > 0.f ? l / rep : l * rep;
    const int count = output_counts[i];
    if (count > 0 && (freq != 0.f || pres != 0.f)) {
      l -= freq * static_cast<float>(count);
      l -= pres;
    }
    row[id] = l;
  }
}

__global__ void temperature_kernel(float *__restrict__ logits, int64_t vocab,
                                   const float *__restrict__ temperatures) {
  const int64_t r = blockIdx.y;
  float t = temperatures[r];
  if (t < 1e-5f)
    t = 1.f;
  if (t == 1.f)
    return;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < vocab;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    logits[r * vocab + i] /= t;
}

__global__ void bitmask_kernel(float *__restrict__ logits, int64_t vocab,
                               const uint32_t *__restrict__ bitmask, int64_t words_per_row) {
  const int64_t r = blockIdx.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < vocab;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t word = bitmask[r * words_per_row + i / 32];
    if (!((word >> (i % 32)) & 1u))
      logits[r * vocab + i] = -INFINITY;
  }
}

// Entry e: logits[rows[e], ids[e]] = values[e] (set) or += values[e] (add,
// atomic: a row may list a token twice); ids outside [0, vocab) are skipped,
// as the host skips them.
__global__ void sparse_logits_kernel(float *__restrict__ logits, int64_t rows, int64_t vocab,
                                     const int32_t *__restrict__ row_ids,
                                     const int32_t *__restrict__ token_ids,
                                     const float *__restrict__ values, int64_t n, int set) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = row_ids[e], t = token_ids[e];
    if (r < 0 || r >= rows || t < 0 || t >= vocab)
      continue;
    float *l = logits + r * vocab + t;
    if (set)
      *l = values[e];
    else
      atomicAdd(l, values[e]);
  }
}

// Inclusive prefix sum over the block of one value per thread (blockDim.x a
// multiple of 32); `scratch` holds 32 values. Returns the thread's inclusive
// sum; `total` gets the block's.
template <typename T> __device__ T block_inclusive_scan(T v, T *scratch, T &total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    T n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o)
      v += n;
  }
  __syncthreads();
  if (lane == 31)
    scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? scratch[lane] : T(0);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      T n = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o)
        w += n;
    }
    if (lane < warps)
      scratch[lane] = w;
  }
  __syncthreads();
  total = scratch[warps - 1];
  return v + (warp > 0 ? scratch[warp - 1] : T(0));
}

struct TopState {
  uint32_t hist_count[256];
  double hist_mass[256];
  uint32_t prefix;
  uint32_t tie_keep;
  double above;
  float fscratch[32];
  double dscratch[32];
  uint32_t uscratch[32];
};

// Masks what top-k, top-p, min-p exclude from one row.
__global__ void __launch_bounds__(kRowThreads)
    top_k_top_p_min_p_kernel(float *__restrict__ logits, int64_t vocab,
                             const int32_t *__restrict__ top_k, const double *__restrict__ top_p,
                             const double *__restrict__ min_p) {
  __shared__ TopState st;
  float *row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const int k = top_k[blockIdx.x];
  const double pp = top_p[blockIdx.x], mp = min_p[blockIdx.x];

  if (k >= 1 && k < vocab) {
    // The k-th largest key, a digit at a time.
    uint32_t prefix = 0, mask = 0, remaining = static_cast<uint32_t>(k);
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = threadIdx.x; i < 256; i += blockDim.x)
        st.hist_count[i] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        const uint32_t key = ordered_key(row[i]);
        if ((key & mask) == prefix)
          atomicAdd(&st.hist_count[(key >> shift) & 0xff], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        uint32_t cum = 0;
        for (int d = 255; d >= 0; --d) {
          if (cum + st.hist_count[d] >= remaining) {
            st.prefix = prefix | (static_cast<uint32_t>(d) << shift);
            st.tie_keep = remaining - cum; // keys above this digit are all kept
            break;
          }
          cum += st.hist_count[d];
        }
      }
      __syncthreads();
      remaining = st.tie_keep;
      prefix = st.prefix;
      mask |= 0xffu << shift;
    }
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
      if (ordered_key(row[i]) < prefix)
        row[i] = -INFINITY;
    __syncthreads();
  }

  if (pp > 0.0 && pp < 1.0) {
    float mx = -INFINITY;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
      mx = fmaxf(mx, row[i]);
    mx = block_max(mx, st.fscratch);
    if (mx != -INFINITY && !isnan(mx)) {
      double total = 0.0;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        const double w = exp(static_cast<double>(row[i] - mx));
        if (!isnan(w))
          total += w;
      }
      total = block_sum(total, st.dscratch);
      const double target = pp * total; // keep while the mass before a token is below this
      // The largest key T with mass(key >= T) >= target: the last kept value.
      uint32_t prefix = 0, mask = 0;
      double above = 0.0; // mass of keys above the current prefix
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) {
          st.hist_count[i] = 0;
          st.hist_mass[i] = 0.0;
        }
        __syncthreads();
        for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
          const uint32_t key = ordered_key(row[i]);
          if ((key & mask) == prefix) {
            const double w = exp(static_cast<double>(row[i] - mx));
            atomicAdd(&st.hist_mass[(key >> shift) & 0xff], isnan(w) ? 0.0 : w);
            atomicAdd(&st.hist_count[(key >> shift) & 0xff], 1u);
          }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
          double cum = 0.0;
          int chosen = -1;
          for (int d = 255; d >= 0; --d) {
            if (st.hist_count[d] > 0 && above + cum + st.hist_mass[d] >= target) {
              chosen = d;
              break;
            }
            cum += st.hist_mass[d];
          }
          if (chosen < 0) { // rounding: take the lowest digit present
            for (int d = 255; d >= 0; --d)
              if (st.hist_count[d] > 0)
                chosen = d;
            chosen = chosen < 0 ? 0 : chosen;
            cum = 0.0;
            for (int d = 255; d > chosen; --d)
              cum += st.hist_mass[d];
          }
          st.prefix = prefix | (static_cast<uint32_t>(chosen) << shift);
          st.above = above + cum;
          st.tie_keep = st.hist_count[chosen];
        }
        __syncthreads();
        prefix = st.prefix;
        above = st.above;
        mask |= 0xffu << shift;
      }
      // `prefix` is the cut value's key; tokens above it are kept, below it
      // masked; of the `ties` tokens equal to it, the first by id are kept
      // while the mass before them stays below the target.
      const uint32_t ties = st.tie_keep;
      const float cut_value = key_value(prefix);
      const double w = exp(static_cast<double>(cut_value - mx));
      uint32_t keep = ties;
      if (w > 0.0) {
        const double n = ceil((target - above) / w);
        keep = n < 1.0 ? 1u : (n >= static_cast<double>(ties) ? ties : static_cast<uint32_t>(n));
      }
      uint32_t seen = 0; // ties before the current chunk
      for (int64_t c = 0; c < vocab; c += blockDim.x) {
        const int64_t i = c + threadIdx.x;
        const uint32_t key = i < vocab ? ordered_key(row[i]) : 0u;
        const uint32_t tie = (i < vocab && key == prefix) ? 1u : 0u;
        uint32_t chunk_ties;
        const uint32_t incl = keep < ties ? block_inclusive_scan(tie, st.uscratch, chunk_ties) : 0u;
        if (i < vocab && (key < prefix || (tie && keep < ties && seen + incl > keep)))
          row[i] = -INFINITY;
        if (keep < ties)
          seen += chunk_ties;
      }
      __syncthreads();
    }
  }

  if (mp > 0.0) {
    float mx = -INFINITY;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
      mx = fmaxf(mx, row[i]);
    mx = block_max(mx, st.fscratch);
    if (mx != -INFINITY && !isnan(mx))
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
        if (exp(static_cast<double>(row[i] - mx)) < mp)
          row[i] = -INFINITY;
  }
}

__global__ void __launch_bounds__(kRowThreads)
    log_softmax_kernel(float *__restrict__ out, const float *__restrict__ logits, int64_t vocab) {
  __shared__ float fs[32];
  __shared__ double ds[32];
  const float *row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float *o = out + static_cast<int64_t>(blockIdx.x) * vocab;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
    mx = fmaxf(mx, row[i]);
  mx = block_max(mx, fs);
  if (mx == -INFINITY || isnan(mx) || isinf(mx)) {
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
      o[i] = -INFINITY;
    return;
  }
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const double e = exp(static_cast<double>(row[i] - mx));
    if (!isnan(e))
      sum += e;
  }
  sum = block_sum(sum, ds);
  const double log_sum = log(sum);
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
    o[i] = static_cast<float>(static_cast<double>(row[i] - mx) - log_sum);
}

// (value, index) with the CPU argmax's preference: larger wins, NaN never
// wins over a number, the lower index wins ties.
struct ArgBest {
  float v;
  int64_t i;
};

__device__ __forceinline__ bool arg_better(const ArgBest &a, const ArgBest &b) {
  if (a.i < 0)
    return false;
  if (b.i < 0)
    return true;
  const bool an = isnan(a.v), bn = isnan(b.v);
  if (an != bn)
    return bn;
  if (!an && a.v != b.v)
    return a.v > b.v;
  return a.i < b.i;
}

__device__ ArgBest block_argbest(ArgBest b, float *vs, int64_t *is) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgBest other{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.i, o)};
    if (arg_better(other, b))
      b = other;
  }
  __syncthreads();
  if (lane == 0) {
    vs[warp] = b.v;
    is[warp] = b.i;
  }
  __syncthreads();
  b = lane < warps ? ArgBest{vs[lane], is[lane]} : ArgBest{0.f, -1};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgBest other{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.i, o)};
    if (arg_better(other, b))
      b = other;
  }
  return b;
}

__device__ int32_t row_argmax(const float *row, int64_t vocab, float *vs, int64_t *is) {
  ArgBest b{0.f, -1};
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    ArgBest c{row[i], i};
    if (arg_better(c, b))
      b = c;
  }
  b = block_argbest(b, vs, is);
  // An all-NaN row still names index 0 (NaN "wins" only when nothing else is there).
  return b.i < 0 ? 0 : static_cast<int32_t>(b.i);
}

__global__ void __launch_bounds__(kRowThreads)
    argmax_kernel(int32_t *__restrict__ out, const float *__restrict__ values, int64_t vocab) {
  __shared__ float vs[32];
  __shared__ int64_t is[32];
  const int32_t best = row_argmax(values + static_cast<int64_t>(blockIdx.x) * vocab, vocab, vs, is);
  if (threadIdx.x == 0)
    out[blockIdx.x] = best;
}

// Philox4x32-10 (Salmon et al., SC'11).
__host__ __device__ __forceinline__ void philox4x32_10(uint32_t ctr[4], uint32_t key0,
                                                       uint32_t key1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(M0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(M1) * ctr[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t c1 = ctr[1], c3 = ctr[3];
    ctr[0] = hi1 ^ c1 ^ key0;
    ctr[1] = lo1;
    ctr[2] = hi0 ^ c3 ^ key1;
    ctr[3] = lo0;
    key0 += W0;
    key1 += W1;
  }
}

// Counter (offset lo, offset hi, stream lo, stream hi), key (seed lo, seed hi):
// src/sampling/philox.rs is the same function.
__host__ __device__ __forceinline__ double philox_uniform(uint64_t seed, uint64_t stream,
                                                          uint64_t offset) {
  uint32_t c[4] = {static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                   static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)};
  philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(c[1]) << 32) | c[0];
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

__global__ void philox_uniform_kernel(double *__restrict__ out, const uint64_t *__restrict__ seeds,
                                      const uint64_t *__restrict__ streams,
                                      const uint64_t *__restrict__ offsets, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n)
    out[i] = philox_uniform(seeds[i], streams[i], offsets[i]);
}

__device__ __forceinline__ double sample_weight(float lp) {
  const double w = exp(static_cast<double>(lp));
  return isfinite(w) ? w : 0.0;
}

__global__ void __launch_bounds__(kRowThreads)
    sample_kernel(int32_t *__restrict__ out, const float *__restrict__ logprobs, int64_t vocab,
                  const uint64_t *__restrict__ seeds, const uint64_t *__restrict__ streams,
                  const uint64_t *__restrict__ offsets) {
  __shared__ double ds[32];
  __shared__ float vs[32];
  __shared__ int64_t is[32];
  __shared__ int64_t found;
  const float *row = logprobs + static_cast<int64_t>(blockIdx.x) * vocab;
  double total = 0.0;
  int64_t last_positive = -1;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const double w = sample_weight(row[i]);
    total += w;
    if (w > 0.0)
      last_positive = i;
  }
  total = block_sum(total, ds);
  if (!(total > 0.0) || !isfinite(total)) {
    const int32_t best = row_argmax(row, vocab, vs, is);
    if (threadIdx.x == 0)
      out[blockIdx.x] = best;
    return;
  }
  const double target =
      philox_uniform(seeds[blockIdx.x], streams[blockIdx.x], offsets[blockIdx.x]) * total;
  if (threadIdx.x == 0)
    found = -1;
  double base = 0.0;
  for (int64_t c = 0; c < vocab; c += blockDim.x) {
    const int64_t i = c + threadIdx.x;
    const double w = i < vocab ? sample_weight(row[i]) : 0.0;
    double chunk_total;
    const double incl = base + block_inclusive_scan(w, ds, chunk_total);
    // The first token whose cumulative weight passes the target.
    if (w > 0.0 && target < incl && target >= incl - w)
      atomicMin(reinterpret_cast<unsigned long long *>(&found), static_cast<unsigned long long>(i));
    base += chunk_total;
    __syncthreads();
    if (found >= 0)
      break;
  }
  if (found < 0) {
    // Rounding left the target past the last bucket: it belongs to the last one.
    __shared__ unsigned long long last;
    if (threadIdx.x == 0)
      last = 0;
    __syncthreads();
    if (last_positive >= 0)
      atomicMax(&last, static_cast<unsigned long long>(last_positive));
    __syncthreads();
    if (threadIdx.x == 0)
      out[blockIdx.x] = static_cast<int32_t>(last);
    return;
  }
  if (threadIdx.x == 0)
    out[blockIdx.x] = static_cast<int32_t>(found);
}

// values[r] = logprobs[r][tokens[r]], ranks[r] = 1 + how many entries of the
// row are strictly greater (vLLM's _get_ranks; NaN compares false).
__global__ void __launch_bounds__(kRowThreads)
    token_rank_kernel(float *__restrict__ values, int32_t *__restrict__ ranks,
                      const float *__restrict__ logprobs, const int32_t *__restrict__ tokens,
                      int64_t vocab) {
  __shared__ unsigned long long greater;
  const float *row = logprobs + static_cast<int64_t>(blockIdx.x) * vocab;
  const int32_t token = tokens[blockIdx.x];
  const float v = token >= 0 && token < vocab ? row[token] : -INFINITY;
  if (threadIdx.x == 0)
    greater = 0;
  __syncthreads();
  unsigned long long mine = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x)
    mine += row[i] > v ? 1ull : 0ull;
  atomicAdd(&greater, mine);
  __syncthreads();
  if (threadIdx.x == 0) {
    values[blockIdx.x] = v;
    ranks[blockIdx.x] = static_cast<int32_t>(greater + 1);
  }
}

// n passes of a block-wide best search, each restricted to what ranks after
// the previous pick in (value descending, id ascending) order.
__global__ void __launch_bounds__(kRowThreads)
    top_logprobs_kernel(int32_t *__restrict__ ids, float *__restrict__ values,
                        const float *__restrict__ logprobs, int64_t vocab, int n) {
  __shared__ uint32_t ks[32];
  __shared__ int64_t is[32];
  const float *row = logprobs + static_cast<int64_t>(blockIdx.x) * vocab;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  uint32_t prev_key = 0xffffffffu;
  int64_t prev_id = -1;
  const int count = n < vocab ? n : static_cast<int>(vocab);
  for (int pick = 0; pick < count; ++pick) {
    // Best = largest key, then smallest id, among entries after (prev_key, prev_id).
    uint32_t bk = 0;
    int64_t bi = -1;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const uint32_t key = total_key(row[i]);
      const bool after = pick == 0 || key < prev_key || (key == prev_key && i > prev_id);
      if (after && (bi < 0 || key > bk || (key == bk && i < bi))) {
        bk = key;
        bi = i;
      }
    }
    auto better = [](uint32_t ak, int64_t ai, uint32_t bk2, int64_t bi2) {
      if (ai < 0)
        return false;
      if (bi2 < 0)
        return true;
      return ak > bk2 || (ak == bk2 && ai < bi2);
    };
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const uint32_t ok = __shfl_xor_sync(0xffffffffu, bk, o);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (better(ok, oi, bk, bi)) {
        bk = ok;
        bi = oi;
      }
    }
    __syncthreads();
    if (lane == 0) {
      ks[warp] = bk;
      is[warp] = bi;
    }
    __syncthreads();
    bk = lane < warps ? ks[lane] : 0u;
    bi = lane < warps ? is[lane] : -1;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const uint32_t ok = __shfl_xor_sync(0xffffffffu, bk, o);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (better(ok, oi, bk, bi)) {
        bk = ok;
        bi = oi;
      }
    }
    if (threadIdx.x == 0) {
      ids[static_cast<int64_t>(blockIdx.x) * n + pick] = static_cast<int32_t>(bi);
      values[static_cast<int64_t>(blockIdx.x) * n + pick] = row[bi];
    }
    prev_key = bk;
    prev_id = bi;
  }
}

} // namespace ek

using namespace ek;

extern "C" int32_t ek_apply_penalties(float *logits, int64_t rows, int64_t vocab,
                                      const int32_t *row_offsets, const int32_t *token_ids,
                                      const int32_t *output_counts, const float *repetition,
                                      const float *frequency, const float *presence, void *stream) {
  if (rows == 0)
    return 0;
  penalties_kernel<<<rows, 256, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, vocab, row_offsets, token_ids, output_counts, repetition, frequency, presence);
  return launch_status();
}

extern "C" int32_t ek_apply_temperature(float *logits, int64_t rows, int64_t vocab,
                                        const float *temperatures, void *stream) {
  if (rows == 0 || vocab == 0)
    return 0;
  const unsigned blocks =
      static_cast<unsigned>((vocab + 255) / 256 < 64 ? (vocab + 255) / 256 : 64);
  temperature_kernel<<<dim3(blocks, rows), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, vocab, temperatures);
  return launch_status();
}

extern "C" int32_t ek_apply_top_k_top_p_min_p(float *logits, int64_t rows, int64_t vocab,
                                              const int32_t *top_k, const double *top_p,
                                              const double *min_p, void *stream) {
  if (rows == 0 || vocab == 0)
    return 0;
  top_k_top_p_min_p_kernel<<<rows, threads_for(vocab, kRowThreads), 0,
                             static_cast<cudaStream_t>(stream)>>>(logits, vocab, top_k, top_p,
                                                                  min_p);
  return launch_status();
}

extern "C" int32_t ek_apply_token_bitmask(float *logits, int64_t rows, int64_t vocab,
                                          const uint32_t *bitmask, int64_t words_per_row,
                                          void *stream) {
  if (rows == 0 || vocab == 0)
    return 0;
  const unsigned blocks =
      static_cast<unsigned>((vocab + 255) / 256 < 64 ? (vocab + 255) / 256 : 64);
  bitmask_kernel<<<dim3(blocks, rows), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, vocab, bitmask, words_per_row);
  return launch_status();
}

extern "C" int32_t ek_apply_sparse_logits(float *logits, int64_t rows, int64_t vocab,
                                          const int32_t *row_ids, const int32_t *token_ids,
                                          const float *values, int64_t n, int32_t set,
                                          void *stream) {
  if (n == 0 || rows == 0 || vocab == 0)
    return 0;
  sparse_logits_kernel<<<grid_for(n, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, rows, vocab, row_ids, token_ids, values, n, set);
  return launch_status();
}

extern "C" int32_t ek_log_softmax(float *out, const float *logits, int64_t rows, int64_t vocab,
                                  void *stream) {
  if (rows == 0 || vocab == 0)
    return 0;
  log_softmax_kernel<<<rows, threads_for(vocab, kRowThreads), 0,
                       static_cast<cudaStream_t>(stream)>>>(out, logits, vocab);
  return launch_status();
}

extern "C" int32_t ek_argmax(int32_t *out, const float *values, int64_t rows, int64_t vocab,
                             void *stream) {
  if (rows == 0)
    return 0;
  argmax_kernel<<<rows, threads_for(vocab, kRowThreads), 0, static_cast<cudaStream_t>(stream)>>>(
      out, values, vocab);
  return launch_status();
}

extern "C" int32_t ek_sample(int32_t *out, const float *logprobs, int64_t rows, int64_t vocab,
                             const uint64_t *seeds, const uint64_t *streams,
                             const uint64_t *offsets, void *stream) {
  if (rows == 0)
    return 0;
  sample_kernel<<<rows, threads_for(vocab, kRowThreads), 0, static_cast<cudaStream_t>(stream)>>>(
      out, logprobs, vocab, seeds, streams, offsets);
  return launch_status();
}

extern "C" int32_t ek_philox_uniform(double *out, const uint64_t *seeds, const uint64_t *streams,
                                     const uint64_t *offsets, int64_t n, void *stream) {
  if (n == 0)
    return 0;
  philox_uniform_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0,
                          static_cast<cudaStream_t>(stream)>>>(out, seeds, streams, offsets, n);
  return launch_status();
}

extern "C" int32_t ek_token_rank(float *values, int32_t *ranks, const float *logprobs,
                                 const int32_t *tokens, int64_t rows, int64_t vocab, void *stream) {
  if (rows == 0)
    return 0;
  token_rank_kernel<<<rows, threads_for(vocab, kRowThreads), 0,
                      static_cast<cudaStream_t>(stream)>>>(values, ranks, logprobs, tokens, vocab);
  return launch_status();
}

extern "C" int32_t ek_top_logprobs(int32_t *ids, float *values, const float *logprobs, int64_t rows,
                                   int64_t vocab, int32_t n, void *stream) {
  if (rows == 0 || n <= 0)
    return 0;
  top_logprobs_kernel<<<rows, threads_for(vocab, kRowThreads), 0,
                        static_cast<cudaStream_t>(stream)>>>(ids, values, logprobs, vocab, n);
  return launch_status();
}
