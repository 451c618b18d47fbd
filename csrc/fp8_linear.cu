// Linear layers over FP8 (e4m3) weights with one float32 scale per output row,
// multiplied as they are stored (weight-only: the activations stay in the
// model's dtype, as the CPU's FP8 matmul keeps them). A few activation rows
// (decode) take a GEMV that reads each weight byte once: there the weight
// bytes are the whole cost, half of bf16's. Many rows (prefill) are
// compute-bound: the weights are dequantized into the activations' dtype for
// cuBLAS.
#include <cuda_fp8.h>

#include "common.cuh"

namespace ek {

constexpr int kFp8GemvThreads = 256; // 8 warps, one weight row each
constexpr int kFp8Chunk = 16;        // codes a lane loads at once (16 bytes)
constexpr int kFp8Unroll = 4;        // chunk loads a lane keeps in flight

// The 16 e4m3 codes of `raw`, in memory order, as floats (exact: every e4m3
// value is a half).
__device__ __forceinline__ void fp8x16_to_float(const uint4 raw, float (&out)[kFp8Chunk]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // The lower byte of a pair is the earlier code and becomes .x.
      const auto pair = static_cast<__nv_fp8x2_storage_t>(words[w] >> (16 * h));
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3)));
      out[w * 4 + h * 2] = f.x;
      out[w * 4 + h * 2 + 1] = f.y;
    }
  }
}

// out[r, row] = scales[row] * sum_c x[r, c] * w[row, c] for r < m <= M: a warp
// per weight row, each lane 16 codes at a time (k a multiple of 16, every row
// 16-byte aligned), the x rows read through the cache (every warp reads them).
template <typename X, typename O, int M>
__global__ void __launch_bounds__(kFp8GemvThreads)
    fp8_gemv_kernel(O *__restrict__ out, const X *__restrict__ x, const uint8_t *__restrict__ w,
                    const float *__restrict__ scales, int m, int64_t n, int64_t k) {
  constexpr int XN = Vec<X>::N;
  constexpr int kStep = 32 * kFp8Chunk;
  const int lane = threadIdx.x & 31;
  const int64_t row =
      static_cast<int64_t>(blockIdx.x) * (kFp8GemvThreads / 32) + (threadIdx.x >> 5);
  if (row >= n)
    return; // the whole warp: its shuffles below stay full
  const uint8_t *wr = w + row * k;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r)
    acc[r] = 0.f;
  for (int64_t base = static_cast<int64_t>(lane) * kFp8Chunk; base < k;
       base += static_cast<int64_t>(kStep) * kFp8Unroll) {
    uint4 raw[kFp8Unroll];
#pragma unroll
    for (int u = 0; u < kFp8Unroll; ++u) {
      const int64_t i = base + u * kStep;
      // Streaming loads: each weight byte is read once a step.
      raw[u] = i < k ? __ldcs(reinterpret_cast<const uint4 *>(wr + i)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kFp8Unroll; ++u) {
      const int64_t i = base + u * kStep;
      if (i < k) {
        float wf[kFp8Chunk];
        fp8x16_to_float(raw[u], wf);
#pragma unroll
        for (int r = 0; r < M; ++r) {
          if (r < m) {
            const X *xr = x + r * k + i;
#pragma unroll
            for (int p = 0; p < kFp8Chunk / XN; ++p) {
              const Pack<X> xv = load_pack(xr + p * XN);
#pragma unroll
              for (int e = 0; e < XN; ++e)
                acc[r] = fmaf(to_float(xv.v[e]), wf[p * XN + e], acc[r]);
            }
          }
        }
      }
    }
  }
  const float s = scales[row];
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0 && r < m)
      out[r * n + row] = from_float<O>(v * s);
  }
}

// out[i] = code_i * scales[row of i], 16 codes a thread (cols a multiple of
// 16, so a chunk never straddles two rows).
template <typename T>
__global__ void fp8_weight_rows_kernel(T *__restrict__ out, const uint8_t *__restrict__ w,
                                       const float *__restrict__ scales, int64_t rows,
                                       int64_t cols) {
  constexpr int N = Vec<T>::N;
  const int64_t chunks = rows * cols / kFp8Chunk;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = c * kFp8Chunk;
    const float s = scales[i / cols];
    float f[kFp8Chunk];
    fp8x16_to_float(__ldg(reinterpret_cast<const uint4 *>(w + i)), f);
#pragma unroll
    for (int p = 0; p < kFp8Chunk / N; ++p) {
      Pack<T> v;
#pragma unroll
      for (int e = 0; e < N; ++e)
        v.v[e] = from_float<T>(f[p * N + e] * s);
      store_pack(out + i + p * N, v);
    }
  }
}

// Every address the 16-byte accesses use is aligned, and rows are whole chunks.
inline bool fp8_shapes_ok(const void *a, const void *w, int64_t k) {
  return k > 0 && k % kFp8Chunk == 0 && aligned16(a) && aligned16(w);
}

template <typename X, typename O>
void launch_fp8_gemv(O *out, const X *x, const uint8_t *w, const float *scales, int m, int64_t n,
                     int64_t k, cudaStream_t s) {
  const unsigned blocks =
      static_cast<unsigned>((n + kFp8GemvThreads / 32 - 1) / (kFp8GemvThreads / 32));
  if (m <= 1)
    fp8_gemv_kernel<X, O, 1><<<blocks, kFp8GemvThreads, 0, s>>>(out, x, w, scales, m, n, k);
  else if (m <= 2)
    fp8_gemv_kernel<X, O, 2><<<blocks, kFp8GemvThreads, 0, s>>>(out, x, w, scales, m, n, k);
  else if (m <= 4)
    fp8_gemv_kernel<X, O, 4><<<blocks, kFp8GemvThreads, 0, s>>>(out, x, w, scales, m, n, k);
  else
    fp8_gemv_kernel<X, O, 8><<<blocks, kFp8GemvThreads, 0, s>>>(out, x, w, scales, m, n, k);
}

} // namespace ek

using namespace ek;

extern "C" int32_t ek_fp8_gemv(void *out, int32_t out_dtype, const void *x, int32_t x_dtype,
                               const void *w, const float *scales, int64_t m, int64_t n, int64_t k,
                               void *stream) {
  if (m == 0 || n == 0)
    return 0;
  const bool out_ok = out_dtype == x_dtype || out_dtype == EK_DTYPE_F32;
  if (m < 0 || m > EK_FP8_GEMV_MAX_ROWS || n < 0 || n > INT32_MAX * 8LL || !out_ok ||
      !fp8_shapes_ok(x, w, k))
    return static_cast<int32_t>(cudaErrorInvalidValue);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const auto *wp = static_cast<const uint8_t *>(w);
  const int rows = static_cast<int>(m);
  EK_DISPATCH_DTYPE(x_dtype, {
    const auto *xp = static_cast<const scalar_t *>(x);
    if (out_dtype == x_dtype)
      launch_fp8_gemv(static_cast<scalar_t *>(out), xp, wp, scales, rows, n, k, s);
    else
      launch_fp8_gemv(static_cast<float *>(out), xp, wp, scales, rows, n, k, s);
  });
  return launch_status();
}

extern "C" int32_t ek_fp8_weight_rows(void *out, int32_t out_dtype, const void *w,
                                      const float *scales, int64_t rows, int64_t cols,
                                      void *stream) {
  if (rows == 0 || cols == 0)
    return 0;
  if (rows < 0 || !fp8_shapes_ok(out, w, cols))
    return static_cast<int32_t>(cudaErrorInvalidValue);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = rows * cols / kFp8Chunk;
  EK_DISPATCH_DTYPE(out_dtype, {
    fp8_weight_rows_kernel<scalar_t><<<grid_for(chunks, 256), 256, 0, s>>>(
        static_cast<scalar_t *>(out), static_cast<const uint8_t *>(w), scales, rows, cols);
  });
  return launch_status();
}
