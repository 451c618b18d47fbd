// Writes of new tokens' K and V into the paged KV cache pools, and the FP8
// encoding and decoding on their own (what the tests compare with the CPU's).
#include "common.cuh"
#include "fp8.cuh"

namespace ek {

// One block per token; threads over the token's K and V elements, 16 bytes at
// a time when head_dim and the strides allow it.
template <typename T, bool kVec>
__global__ void reshape_and_cache_kernel(const T *__restrict__ key, const T *__restrict__ value,
                                         T *__restrict__ k_cache, T *__restrict__ v_cache,
                                         const int64_t *__restrict__ slot_mapping,
                                         int64_t key_stride, int64_t value_stride, int num_kv_heads,
                                         int head_dim, int block_size) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0)
    return;
  const int64_t block = slot / block_size, offset = slot % block_size;
  constexpr int N = kVec ? Vec<T>::N : 1;
  const int per_head = head_dim / N;
  const int count = num_kv_heads * per_head;
  const T *kr = key + t * key_stride;
  const T *vr = value + t * value_stride;
  for (int idx = threadIdx.x; idx < count; idx += blockDim.x) {
    const int g = idx / per_head, d = (idx % per_head) * N;
    const int64_t dst = ((block * num_kv_heads + g) * block_size + offset) * head_dim + d;
    const int src = g * head_dim + d;
    if (kVec) {
      store_pack(k_cache + dst, load_pack(kr + src));
      store_pack(v_cache + dst, load_pack(vr + src));
    } else {
      k_cache[dst] = kr[src];
      v_cache[dst] = vr[src];
    }
  }
}

// The FP8 pools' variant of reshape_and_cache_kernel: N = Vec<T>::N inputs
// (one 16-byte load) become N codes (one N-byte store), each value / scale.
template <typename T, typename C, bool kVec>
__global__ void
reshape_and_cache_fp8_kernel(const T *__restrict__ key, const T *__restrict__ value,
                             uint8_t *__restrict__ k_cache, uint8_t *__restrict__ v_cache,
                             const int64_t *__restrict__ slot_mapping, float k_scale, float v_scale,
                             int64_t key_stride, int64_t value_stride, int num_kv_heads,
                             int head_dim, int block_size) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0)
    return;
  const int64_t block = slot / block_size, offset = slot % block_size;
  constexpr int N = kVec ? Vec<T>::N : 1;
  const int per_head = head_dim / N;
  const int count = num_kv_heads * per_head;
  const T *kr = key + t * key_stride;
  const T *vr = value + t * value_stride;
  for (int idx = threadIdx.x; idx < count; idx += blockDim.x) {
    const int g = idx / per_head, d = (idx % per_head) * N;
    const int64_t dst = ((block * num_kv_heads + g) * block_size + offset) * head_dim + d;
    const int src = g * head_dim + d;
    if constexpr (kVec) {
      const Pack<T> k = load_pack(kr + src), v = load_pack(vr + src);
      Bytes<N> kb, vb;
#pragma unroll
      for (int i = 0; i < N / 4; ++i)
        kb.w[i] = vb.w[i] = 0u;
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const int shift = 8 * (e % 4);
        kb.w[e / 4] |= static_cast<uint32_t>(fp8_encode<C>(to_float(k.v[e]), k_scale)) << shift;
        vb.w[e / 4] |= static_cast<uint32_t>(fp8_encode<C>(to_float(v.v[e]), v_scale)) << shift;
      }
      store_bytes<N>(k_cache + dst, kb);
      store_bytes<N>(v_cache + dst, vb);
    } else {
      k_cache[dst] = fp8_encode<C>(to_float(kr[src]), k_scale);
      v_cache[dst] = fp8_encode<C>(to_float(vr[src]), v_scale);
    }
  }
}

template <typename C>
__global__ void fp8_quantize_kernel(uint8_t *__restrict__ out, const float *__restrict__ in,
                                    float scale, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = fp8_encode<C>(in[i], scale);
}

// One code per thread, read as the attention kernels read it (a pair's half).
template <typename C>
__global__ void fp8_dequantize_kernel(float *__restrict__ out, const uint8_t *__restrict__ in,
                                      float scale, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = fp8_pair_to_float2<C>(in[i], scale).x;
}

// The launch of the FP8 variant: vectorized when N inputs (one 16-byte load)
// and N codes (an N-byte store) stay aligned.
template <typename T, typename C>
void launch_reshape_and_cache_fp8(const T *kp, const T *vp, void *k_cache, void *v_cache,
                                  const int64_t *slot_mapping, float k_scale, float v_scale,
                                  int64_t tokens, int64_t key_stride, int64_t value_stride,
                                  int num_kv_heads, int head_dim, int block_size, cudaStream_t s) {
  constexpr int N = Vec<T>::N;
  auto *kc = static_cast<uint8_t *>(k_cache);
  auto *vc = static_cast<uint8_t *>(v_cache);
  const bool vec = head_dim % N == 0 && key_stride % N == 0 && value_stride % N == 0 &&
                   aligned16(kp) && aligned16(vp) && aligned16(k_cache) && aligned16(v_cache);
  if (vec)
    reshape_and_cache_fp8_kernel<T, C, true>
        <<<tokens, threads_for(num_kv_heads * head_dim / N), 0, s>>>(
            kp, vp, kc, vc, slot_mapping, k_scale, v_scale, key_stride, value_stride, num_kv_heads,
            head_dim, block_size);
  else
    reshape_and_cache_fp8_kernel<T, C, false>
        <<<tokens, threads_for(num_kv_heads * head_dim), 0, s>>>(
            kp, vp, kc, vc, slot_mapping, k_scale, v_scale, key_stride, value_stride, num_kv_heads,
            head_dim, block_size);
}

} // namespace ek

using namespace ek;

// Runs BODY with `fp8_t` bound to the FP8 type of an EK_DTYPE_FP8_* value;
// any other returns cudaErrorInvalidValue from the enclosing launcher.
#define EK_DISPATCH_FP8(fp8_dtype, ...)                                                            \
  if ((fp8_dtype) == EK_DTYPE_FP8_E4M3) {                                                          \
    using fp8_t = __nv_fp8_e4m3;                                                                   \
    __VA_ARGS__;                                                                                   \
  } else if ((fp8_dtype) == EK_DTYPE_FP8_E5M2) {                                                   \
    using fp8_t = __nv_fp8_e5m2;                                                                   \
    __VA_ARGS__;                                                                                   \
  } else {                                                                                         \
    return static_cast<int32_t>(cudaErrorInvalidValue);                                            \
  }

extern "C" int32_t ek_fp8_quantize(void *out, const float *in, int32_t fp8_dtype, float scale,
                                   int64_t n, void *stream) {
  if (n == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_FP8(fp8_dtype, fp8_quantize_kernel<fp8_t>
                  <<<grid_for(n, 256), 256, 0, s>>>(static_cast<uint8_t *>(out), in, scale, n));
  return launch_status();
}

extern "C" int32_t ek_fp8_dequantize(float *out, const void *in, int32_t fp8_dtype, float scale,
                                     int64_t n, void *stream) {
  if (n == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_FP8(fp8_dtype, fp8_dequantize_kernel<fp8_t><<<grid_for(n, 256), 256, 0, s>>>(
                                 out, static_cast<const uint8_t *>(in), scale, n));
  return launch_status();
}

extern "C" int32_t ek_reshape_and_cache(const void *key, const void *value, void *k_cache,
                                        void *v_cache, const int64_t *slot_mapping, int32_t dtype,
                                        int32_t cache_dtype, float k_scale, float v_scale,
                                        int64_t tokens, int64_t key_stride, int64_t value_stride,
                                        int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
                                        void *stream) {
  if (tokens == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (cache_dtype != dtype) {
    EK_DISPATCH_DTYPE(dtype, {
      auto *kp = static_cast<const scalar_t *>(key);
      auto *vp = static_cast<const scalar_t *>(value);
      EK_DISPATCH_FP8(cache_dtype,
                      launch_reshape_and_cache_fp8<scalar_t, fp8_t>(
                          kp, vp, k_cache, v_cache, slot_mapping, k_scale, v_scale, tokens,
                          key_stride, value_stride, num_kv_heads, head_dim, block_size, s));
    });
    return launch_status();
  }
  EK_DISPATCH_DTYPE(dtype, {
    constexpr int N = Vec<scalar_t>::N;
    auto *kp = static_cast<const scalar_t *>(key);
    auto *vp = static_cast<const scalar_t *>(value);
    auto *kc = static_cast<scalar_t *>(k_cache);
    auto *vc = static_cast<scalar_t *>(v_cache);
    const bool vec = head_dim % N == 0 && key_stride % N == 0 && value_stride % N == 0 &&
                     aligned16(key) && aligned16(value) && aligned16(k_cache) && aligned16(v_cache);
    if (vec)
      reshape_and_cache_kernel<scalar_t, true>
          <<<tokens, threads_for(num_kv_heads * head_dim / N), 0, s>>>(
              kp, vp, kc, vc, slot_mapping, key_stride, value_stride, num_kv_heads, head_dim,
              block_size);
    else
      reshape_and_cache_kernel<scalar_t, false>
          <<<tokens, threads_for(num_kv_heads * head_dim), 0, s>>>(
              kp, vp, kc, vc, slot_mapping, key_stride, value_stride, num_kv_heads, head_dim,
              block_size);
  });
  return launch_status();
}
