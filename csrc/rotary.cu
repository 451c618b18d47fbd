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

// Neox with whole 16-byte vectors: each thread rotates N consecutive pairs,
// (x[i..i+N], x[i+half..i+half+N]), as two vector loads and stores (2-byte
// scalars left bf16 at 43% of the copy bandwidth on the H200). Same arithmetic.
template <typename T>
__global__ void
rotary_neox_vec_kernel(T *__restrict__ q, T *__restrict__ k, const int32_t *__restrict__ positions,
                       const float *__restrict__ cos_sin, int num_q_heads, int num_k_heads,
                       int head_dim, int rot_dim, int64_t q_stride, int64_t k_stride) {
  constexpr int N = Vec<T>::N;
  const int64_t t = blockIdx.x;
  const int half = rot_dim / 2, chunks = half / N;
  const float *cs = cos_sin + static_cast<int64_t>(positions[t]) * rot_dim;
  const int work = (num_q_heads + num_k_heads) * chunks;
  for (int idx = threadIdx.x; idx < work; idx += blockDim.x) {
    const int head = idx / chunks, i = (idx % chunks) * N;
    T *x = head < num_q_heads ? q + t * q_stride + head * head_dim
                              : k + t * k_stride + (head - num_q_heads) * head_dim;
    // Plain loads: the thread writes these addresses back.
    const Pack<T> a = *reinterpret_cast<const Pack<T> *>(x + i);
    const Pack<T> b = *reinterpret_cast<const Pack<T> *>(x + i + half);
    Pack<T> oa, ob;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float c = cs[i + j], s = cs[half + i + j];
      const float fa = to_float(a.v[j]), fb = to_float(b.v[j]);
      oa.v[j] = from_float<T>(fa * c - fb * s);
      ob.v[j] = from_float<T>(fb * c + fa * s);
    }
    store_pack(x + i, oa);
    store_pack(x + i + half, ob);
  }
}

// Every head start of q and k on a 16-byte boundary and whole vectors per half.
template <typename T>
bool rotary_vectorizes(const void *q, const void *k, int head_dim, int rot_dim, int64_t q_stride,
                       int64_t k_stride) {
  constexpr int N = Vec<T>::N;
  return aligned16(q) && aligned16(k) && head_dim % N == 0 && (rot_dim / 2) % N == 0 &&
         q_stride % N == 0 && k_stride % N == 0;
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
  const int64_t pairs = static_cast<int64_t>(num_q_heads + num_k_heads) * rot_dim / 2;
  EK_DISPATCH_DTYPE(dtype, {
    auto *qp = static_cast<scalar_t *>(q);
    auto *kp = static_cast<scalar_t *>(k);
    const int threads = threads_for(pairs, 512);
    if (neox && rotary_vectorizes<scalar_t>(q, k, head_dim, rot_dim, q_stride, k_stride))
      rotary_neox_vec_kernel<scalar_t>
          <<<tokens, threads_for(pairs / Vec<scalar_t>::N, 512), 0, s>>>(
              qp, kp, positions, cos_sin, num_q_heads, num_k_heads, head_dim, rot_dim, q_stride,
              k_stride);
    else if (neox)
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
