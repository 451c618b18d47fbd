// Writes of new tokens' K and V into the paged KV cache pools.
#include "common.cuh"

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

} // namespace ek

using namespace ek;

extern "C" int32_t ek_reshape_and_cache(const void *key, const void *value, void *k_cache,
                                        void *v_cache, const int64_t *slot_mapping, int32_t dtype,
                                        int64_t tokens, int64_t key_stride, int64_t value_stride,
                                        int32_t num_kv_heads, int32_t head_dim, int32_t block_size,
                                        void *stream) {
  if (tokens == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
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
