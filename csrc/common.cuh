// Shared helpers for the kernels: element types, conversions to and from
// float, 16-byte vector access, warp/block reductions, launch geometry and
// the dtype dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h"

namespace ek {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <> __device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Elements of T in one 16-byte vector.
template <typename T> struct Vec {
  static constexpr int N = 16 / sizeof(T);
};

// N elements of T moved as one 16-byte access (pointer 16-byte aligned).
template <typename T> struct alignas(16) Pack {
  T v[Vec<T>::N];
};

// The 16 bytes move between a Pack and a uint4 by memcpy, not a pointer cast:
// a Pack read as a uint4 breaks the aliasing rules, and a host compiler that
// enforces them was seen to reorder such code.
template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T *p) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4 *>(p));
  Pack<T> out;
  memcpy(&out, &raw, sizeof out);
  return out;
}

template <typename T> __device__ __forceinline__ void store_pack(T *p, const Pack<T> &v) {
  uint4 raw;
  memcpy(&raw, &v, sizeof raw);
  *reinterpret_cast<uint4 *>(p) = raw;
}

__host__ __device__ __forceinline__ bool aligned16(const void *p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `scratch` holds 32 values; the call synchronizes.
template <typename T> __device__ __forceinline__ T block_sum(T v, T *scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0)
    scratch[warp] = v;
  __syncthreads();
  T total = lane < warps ? scratch[lane] : T(0);
  return warp_sum(total);
}

__device__ __forceinline__ float block_max(float v, float *scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0)
    scratch[warp] = v;
  __syncthreads();
  float m = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(m);
}

inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

inline int threads_for(int64_t work, int max_threads = 256) {
  int t = 32;
  while (t < max_threads && t < work)
    t *= 2;
  return t;
}

inline int32_t launch_status() {
  return static_cast<int32_t>(cudaGetLastError());
}

} // namespace ek

// Runs BODY with `scalar_t` bound to the C++ type of an EK_DTYPE_* value;
// an unknown dtype returns cudaErrorInvalidValue from the enclosing launcher.
#define EK_DISPATCH_DTYPE(dtype, ...)                                                              \
  switch (dtype) {                                                                                 \
  case EK_DTYPE_F32: {                                                                             \
    using scalar_t = float;                                                                        \
    __VA_ARGS__;                                                                                   \
    break;                                                                                         \
  }                                                                                                \
  case EK_DTYPE_F16: {                                                                             \
    using scalar_t = __half;                                                                       \
    __VA_ARGS__;                                                                                   \
    break;                                                                                         \
  }                                                                                                \
  case EK_DTYPE_BF16: {                                                                            \
    using scalar_t = __nv_bfloat16;                                                                \
    __VA_ARGS__;                                                                                   \
    break;                                                                                         \
  }                                                                                                \
  default:                                                                                         \
    return static_cast<int32_t>(cudaErrorInvalidValue);                                            \
  }
