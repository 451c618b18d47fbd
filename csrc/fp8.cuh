// FP8 KV caches: the two OCP formats as cache element types, their encoding
// (bit for bit src/backend/fp8.rs's, so the CPU backend stays the reference),
// their decoding, and how the attention kernels load N cache elements at once
// as floats, whatever the cache's type.
#pragma once

#include <cuda_fp8.h>

#include "common.cuh"

namespace ek {

// Cache element types: float and 16-bit types as they are, or an FP8 format.
template <typename C> struct Fp8Traits {
  static constexpr bool kIsFp8 = false;
};
template <> struct Fp8Traits<__nv_fp8_e4m3> {
  static constexpr bool kIsFp8 = true;
  static constexpr __nv_fp8_interpretation_t kKind = __NV_E4M3;
  static constexpr uint8_t kNan = 0x7F; // fp8.rs's NaN (sign apart)
};
template <> struct Fp8Traits<__nv_fp8_e5m2> {
  static constexpr bool kIsFp8 = true;
  static constexpr __nv_fp8_interpretation_t kKind = __NV_E5M2;
  static constexpr uint8_t kNan = 0x7E;
};

template <typename C> constexpr bool is_fp8 = Fp8Traits<C>::kIsFp8;

// The code of x / scale: IEEE division (whatever the compile flags), then
// round to nearest even, saturated to the largest finite value (infinities
// too), as fp8.rs encodes. cuda_fp8.h drops a NaN's sign (sm_80's path
// writes a positive NaN; sm_89+'s instruction is not specified to keep it);
// fp8.rs keeps it (the CPU's division keeps x's), so a NaN is written here.
// scale is positive and finite (model/kv_scales.rs checks).
template <typename C> __device__ __forceinline__ uint8_t fp8_encode(float x, float scale) {
  const float q = __fdiv_rn(x, scale);
  if (isnan(q))
    return static_cast<uint8_t>((signbit(x) ? 0x80 : 0) | Fp8Traits<C>::kNan);
  return __nv_cvt_float_to_fp8(q, __NV_SATFINITE, Fp8Traits<C>::kKind);
}

// Two codes (the low byte first) as value * scale. Every E4M3 and E5M2 value
// is an f16 one, so the widening is exact and the product is the CPU's
// table entry, decode(code) * scale, rounded once.
template <typename C>
__device__ __forceinline__ float2 fp8_pair_to_float2(uint16_t codes, float scale) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(codes, Fp8Traits<C>::kKind);
  const float2 f = __half22float2(__half2(h));
  return make_float2(__fmul_rn(f.x, scale), __fmul_rn(f.y, scale));
}

// N bytes held in 32-bit words, moved as one N-byte access (N = 4, 8 or 16;
// the pointer N-byte aligned).
template <int N> struct alignas(N) Bytes {
  static_assert(N == 4 || N == 8 || N == 16, "4, 8 or 16 bytes");
  uint32_t w[N / 4];
};

template <int N> __device__ __forceinline__ Bytes<N> load_bytes(const void *p) {
  Bytes<N> b;
  if constexpr (N == 16)
    *reinterpret_cast<uint4 *>(b.w) = __ldg(reinterpret_cast<const uint4 *>(p));
  else if constexpr (N == 8)
    *reinterpret_cast<uint2 *>(b.w) = __ldg(reinterpret_cast<const uint2 *>(p));
  else
    b.w[0] = __ldg(reinterpret_cast<const unsigned int *>(p));
  return b;
}

template <int N> __device__ __forceinline__ void store_bytes(void *p, const Bytes<N> &b) {
  if constexpr (N == 16)
    *reinterpret_cast<uint4 *>(p) = *reinterpret_cast<const uint4 *>(b.w);
  else if constexpr (N == 8)
    *reinterpret_cast<uint2 *>(p) = *reinterpret_cast<const uint2 *>(b.w);
  else
    *reinterpret_cast<uint32_t *>(p) = b.w[0];
}

// N consecutive cache elements, loaded as one vector (load or zero), made
// floats once (widen, with the pool's scale) and read as floats (get), or
// read without widening (read: an FP8 pair converted at each call).
template <typename C, int N, bool kFp8 = is_fp8<C>> struct KvVec;

// A float or 16-bit cache: one 16-byte Pack, read as it is (no scale).
template <typename C, int N> struct KvVec<C, N, false> {
  static_assert(N == Vec<C>::N, "a float or 16-bit cache moves 16-byte vectors");
  Pack<C> raw;
  __device__ __forceinline__ void load(const C *p) { raw = load_pack(p); }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int e = 0; e < N; ++e)
      raw.v[e] = from_float<C>(0.f);
  }
  __device__ __forceinline__ void widen(float) {}
  __device__ __forceinline__ float get(int e) const { return to_float(raw.v[e]); }
  __device__ __forceinline__ float read(int e, float) const { return to_float(raw.v[e]); }
};

// An FP8 cache: N codes as one N-byte access, widened pair by pair to
// value * scale once, however many query heads read them.
template <typename C, int N> struct KvVec<C, N, true> {
  Bytes<N> raw;
  float f[N];
  __device__ __forceinline__ void load(const C *p) { raw = load_bytes<N>(p); }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < N / 4; ++i)
      raw.w[i] = 0u;
  }
  __device__ __forceinline__ void widen(float scale) {
#pragma unroll
    for (int e = 0; e < N; e += 2) {
      const auto pair = static_cast<uint16_t>(raw.w[e / 4] >> (16 * ((e % 4) / 2)));
      const float2 v = fp8_pair_to_float2<C>(pair, scale);
      f[e] = v.x;
      f[e + 1] = v.y;
    }
  }
  __device__ __forceinline__ float get(int e) const { return f[e]; }
  __device__ __forceinline__ float read(int e, float scale) const {
    const auto pair = static_cast<uint16_t>(raw.w[e / 4] >> (16 * ((e % 4) / 2)));
    const float2 v = fp8_pair_to_float2<C>(pair, scale);
    return e % 2 ? v.y : v.x;
  }
};

} // namespace ek

// Runs BODY with `cache_t` bound to the C++ type of a KV cache beside
// activations of `scalar_t` (EK_DISPATCH_DTYPE's): the activations' own type
// or an FP8 format. Any other pairing is not instantiated: the enclosing
// launcher returns cudaErrorInvalidValue.
#define EK_DISPATCH_CACHE_DTYPE(dtype, cache_dtype, ...)                                           \
  if ((cache_dtype) == (dtype)) {                                                                  \
    using cache_t = scalar_t;                                                                      \
    __VA_ARGS__;                                                                                   \
  } else if ((cache_dtype) == EK_DTYPE_FP8_E4M3) {                                                 \
    using cache_t = __nv_fp8_e4m3;                                                                 \
    __VA_ARGS__;                                                                                   \
  } else if ((cache_dtype) == EK_DTYPE_FP8_E5M2) {                                                 \
    using cache_t = __nv_fp8_e5m2;                                                                 \
    __VA_ARGS__;                                                                                   \
  } else {                                                                                         \
    return static_cast<int32_t>(cudaErrorInvalidValue);                                            \
  }
