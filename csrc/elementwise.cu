// Row-wise and element-wise kernels: rotary embedding, KV cache writes,
// SiLU-and-multiply, dtype conversion, embedding lookup, row gather, bias.
#include "common.cuh"

namespace engine {

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

// One block per token; threads over the token's K and V elements, 16 bytes at
// a time when head_dim and the strides allow it.
template <typename T, bool kVec>
__global__ void reshape_and_cache_kernel(const T *__restrict__ key, const T *__restrict__ value,
                                         T *__restrict__ k_cache, T *__restrict__ v_cache,
                                         const int64_t *__restrict__ slot_mapping,
                                         int64_t key_stride, int64_t value_stride,
                                         int num_kv_heads, int head_dim, int block_size) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
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

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.f + expf(-g)) * u; }

// grid (column blocks, rows).
template <typename T, bool kVec>
__global__ void silu_and_mul_kernel(T *__restrict__ out, const T *__restrict__ in, int64_t width) {
  const int64_t row = blockIdx.y;
  const T *gate = in + row * 2 * width;
  const T *up = gate + width;
  T *o = out + row * width;
  constexpr int N = kVec ? Vec<T>::N : 1;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
  if (i >= width) return;
  if (kVec) {
    Pack<T> g = load_pack(gate + i), u = load_pack(up + i), r;
#pragma unroll
    for (int j = 0; j < N; ++j) r.v[j] = from_float<T>(silu_mul(to_float(g.v[j]), to_float(u.v[j])));
    store_pack(o + i, r);
  } else {
    o[i] = from_float<T>(silu_mul(to_float(gate[i]), to_float(up[i])));
  }
}

template <typename O, typename I>
__global__ void convert_kernel(O *__restrict__ out, const I *__restrict__ in, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<O>(to_float(in[i]));
}

template <typename T>
__global__ void embedding_kernel(float *__restrict__ out, const T *__restrict__ table,
                                 const int32_t *__restrict__ ids, int64_t width) {
  const int64_t t = blockIdx.x;
  const T *row = table + static_cast<int64_t>(ids[t]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[t * width + i] = to_float(row[i]);
}

__global__ void gather_rows_kernel(float *__restrict__ out, const float *__restrict__ x,
                                   const int32_t *__restrict__ rows, int64_t width) {
  const int64_t r = blockIdx.x;
  const float *src = x + static_cast<int64_t>(rows[r]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[r * width + i] = src[i];
}

__global__ void add_bias_kernel(float *__restrict__ x, const float *__restrict__ bias,
                                int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += bias[i % cols];
}

inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

inline int threads_for(int64_t work, int max_threads = 256) {
  int t = 32;
  while (t < max_threads && t < work) t *= 2;
  return t;
}

}  // namespace engine

using namespace engine;

extern "C" int32_t engine_rotary(void *q, void *k, const int32_t *positions, const float *cos_sin,
                                 int32_t dtype, int64_t tokens, int32_t num_q_heads,
                                 int32_t num_k_heads, int32_t head_dim, int32_t rot_dim,
                                 int64_t q_stride, int64_t k_stride, int32_t neox, void *stream) {
  if (tokens == 0) return 0;
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > head_dim)
    return static_cast<int32_t>(cudaErrorInvalidValue);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads = threads_for(static_cast<int64_t>(num_q_heads + num_k_heads) * rot_dim / 2, 512);
  ENGINE_DISPATCH_DTYPE(dtype, {
    auto *qp = static_cast<scalar_t *>(q);
    auto *kp = static_cast<scalar_t *>(k);
    if (neox)
      rotary_kernel<scalar_t, true><<<tokens, threads, 0, s>>>(
          qp, kp, positions, cos_sin, num_q_heads, num_k_heads, head_dim, rot_dim, q_stride, k_stride);
    else
      rotary_kernel<scalar_t, false><<<tokens, threads, 0, s>>>(
          qp, kp, positions, cos_sin, num_q_heads, num_k_heads, head_dim, rot_dim, q_stride, k_stride);
  });
  return launch_status();
}

extern "C" int32_t engine_reshape_and_cache(const void *key, const void *value, void *k_cache,
                                            void *v_cache, const int64_t *slot_mapping,
                                            int32_t dtype, int64_t tokens, int64_t key_stride,
                                            int64_t value_stride, int32_t num_kv_heads,
                                            int32_t head_dim, int32_t block_size, void *stream) {
  if (tokens == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  ENGINE_DISPATCH_DTYPE(dtype, {
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
      reshape_and_cache_kernel<scalar_t, false><<<tokens, threads_for(num_kv_heads * head_dim), 0, s>>>(
          kp, vp, kc, vc, slot_mapping, key_stride, value_stride, num_kv_heads, head_dim, block_size);
  });
  return launch_status();
}

extern "C" int32_t engine_silu_and_mul(void *out, const void *input, int32_t dtype, int64_t rows,
                                       int64_t width, void *stream) {
  if (rows == 0 || width == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  ENGINE_DISPATCH_DTYPE(dtype, {
    constexpr int N = Vec<scalar_t>::N;
    auto *o = static_cast<scalar_t *>(out);
    auto *in = static_cast<const scalar_t *>(input);
    const bool vec = width % N == 0 && aligned16(out) && aligned16(input);
    const int64_t lanes = vec ? width / N : width;
    const int threads = threads_for(lanes);
    const dim3 grid(static_cast<unsigned>((lanes + threads - 1) / threads), static_cast<unsigned>(rows));
    if (vec)
      silu_and_mul_kernel<scalar_t, true><<<grid, threads, 0, s>>>(o, in, width);
    else
      silu_and_mul_kernel<scalar_t, false><<<grid, threads, 0, s>>>(o, in, width);
  });
  return launch_status();
}

extern "C" int32_t engine_convert(void *out, int32_t out_dtype, const void *in, int32_t in_dtype,
                                  int64_t n, void *stream) {
  if (n == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  ENGINE_DISPATCH_DTYPE(out_dtype, {
    using out_t = scalar_t;
    ENGINE_DISPATCH_DTYPE(in_dtype, {
      convert_kernel<out_t, scalar_t><<<grid_for(n, 256), 256, 0, s>>>(
          static_cast<out_t *>(out), static_cast<const scalar_t *>(in), n);
    });
  });
  return launch_status();
}

extern "C" int32_t engine_embedding(float *out, const void *table, int32_t dtype,
                                    const int32_t *ids, int64_t tokens, int64_t width,
                                    void *stream) {
  if (tokens == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  ENGINE_DISPATCH_DTYPE(dtype, {
    embedding_kernel<scalar_t><<<tokens, threads_for(width), 0, s>>>(
        out, static_cast<const scalar_t *>(table), ids, width);
  });
  return launch_status();
}

extern "C" int32_t engine_gather_rows(float *out, const float *x, const int32_t *rows,
                                      int64_t count, int64_t width, void *stream) {
  if (count == 0) return 0;
  gather_rows_kernel<<<count, threads_for(width), 0, static_cast<cudaStream_t>(stream)>>>(out, x, rows,
                                                                                          width);
  return launch_status();
}

extern "C" int32_t engine_add_bias(float *x, const float *bias, int64_t rows, int64_t cols,
                                   void *stream) {
  if (rows == 0 || cols == 0) return 0;
  add_bias_kernel<<<grid_for(rows * cols, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      x, bias, rows, cols);
  return launch_status();
}
