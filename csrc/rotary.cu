// Rotary position embedding (RoPE) of the q and k heads, in place.
#include "common.cuh"

namespace ek {

// One block per token; threads over (head, pair). Pair i of a neox head is
// (x[i], x[i + rot/2]); of a GPT-J head (x[2i], x[2i + 1]). Same arithmetic
// as the CPU backend: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin.
template <typename T, bool kNeox>
__global__ void rotary_kernel(T *__restrict__ q, T *__restrict__ k,
                              const int32_t *__restrict__ positions,
                              const float *__restrict__ cos_sin, int num_q_heads, int num_k_heads,
                              int head_dim, int rot_dim, int64_t q_stride, int64_t k_stride) {
  const int64_t t = blockIdx.x;
  const int half = rot_dim / 2;
  const float *cs = cos_sin + static_cast<int64_t>(positions[t]) * rot_dim;
  const int pairs = (num_q_heads + num_k_heads) * half;
  for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
    const int head = idx / half, i = idx % half;
    T *x = head < num_q_heads ? q + t * q_stride + head * head_dim
                              : k + t * k_stride + (head - num_q_heads) * head_dim;
    const int i1 = kNeox ? i : 2 * i, i2 = kNeox ? i + half : 2 * i + 1;
    const float c = cs[i], s = cs[half + i];
    const float a = to_float(x[i1]), b = to_float(x[i2]);
    x[i1] = from_float<T>(a * c - b * s);
    x[i2] = from_float<T>(b * c + a * s);
  }
}

} // namespace ek

using namespace ek;

extern "C" int32_t ek_rotary(void *q, void *k, const int32_t *positions, const float *cos_sin,
                             int32_t dtype, int64_t tokens, int32_t num_q_heads,
                             int32_t num_k_heads, int32_t head_dim, int32_t rot_dim,
                             int64_t q_stride, int64_t k_stride, int32_t neox, void *stream) {
  if (tokens == 0)
    return 0;
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > head_dim)
    return static_cast<int32_t>(cudaErrorInvalidValue);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads =
      threads_for(static_cast<int64_t>(num_q_heads + num_k_heads) * rot_dim / 2, 512);
  EK_DISPATCH_DTYPE(dtype, {
    auto *qp = static_cast<scalar_t *>(q);
    auto *kp = static_cast<scalar_t *>(k);
    if (neox)
      rotary_kernel<scalar_t, true><<<tokens, threads, 0, s>>>(qp, kp, positions, cos_sin,
                                                               num_q_heads, num_k_heads, head_dim,
                                                               rot_dim, q_stride, k_stride);
    else
      rotary_kernel<scalar_t, false><<<tokens, threads, 0, s>>>(qp, kp, positions, cos_sin,
                                                                num_q_heads, num_k_heads, head_dim,
                                                                rot_dim, q_stride, k_stride);
  });
  return launch_status();
}
