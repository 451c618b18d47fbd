// RMSNorm and the fused residual-add + RMSNorm: one block per row. Rows whose
// width is a multiple of the 16-byte vector and whose pointers are aligned go
// through 16-byte loads and stores; any other width takes the scalar path.
#include "common.cuh"

namespace ek {

constexpr int kNormThreads = 256;

// out = w * (x * inv_rms), the CPU backend's order of operations.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(T *__restrict__ out, const T *__restrict__ x, const T *__restrict__ weight,
                    int64_t hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T *xr = x + row * hidden;
  T *outr = out + row * hidden;
  constexpr int N = Vec<T>::N;
  float sum_sq = 0.f;
  if (kVec) {
    for (int64_t i = threadIdx.x; i < hidden / N; i += blockDim.x) {
      Pack<T> p = load_pack(xr + i * N);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        float v = to_float(p.v[j]);
        sum_sq += v * v;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
      float v = to_float(xr[i]);
      sum_sq += v * v;
    }
  }
  sum_sq = block_sum(sum_sq, scratch);
  const float inv_rms = 1.f / sqrtf(sum_sq / static_cast<float>(hidden) + eps);
  if (kVec) {
    for (int64_t i = threadIdx.x; i < hidden / N; i += blockDim.x) {
      Pack<T> p = load_pack(xr + i * N), w = load_pack(weight + i * N), o;
#pragma unroll
      for (int j = 0; j < N; ++j)
        o.v[j] = from_float<T>(to_float(w.v[j]) * (to_float(p.v[j]) * inv_rms));
      store_pack(outr + i * N, o);
    }
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
      outr[i] = from_float<T>(to_float(weight[i]) * (to_float(xr[i]) * inv_rms));
  }
}

// residual += x (stored in T), then x = w * (residual * inv_rms).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kNormThreads)
    fused_add_rms_norm_kernel(T *__restrict__ x, T *__restrict__ residual,
                              const T *__restrict__ weight, int64_t hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  T *xr = x + row * hidden;
  T *rr = residual + row * hidden;
  constexpr int N = Vec<T>::N;
  float sum_sq = 0.f;
  if (kVec) {
    for (int64_t i = threadIdx.x; i < hidden / N; i += blockDim.x) {
      Pack<T> a = load_pack(xr + i * N), r = load_pack(rr + i * N);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        r.v[j] = from_float<T>(to_float(r.v[j]) + to_float(a.v[j]));
        float v = to_float(r.v[j]);
        sum_sq += v * v;
      }
      store_pack(rr + i * N, r);
    }
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
      T r = from_float<T>(to_float(rr[i]) + to_float(xr[i]));
      rr[i] = r;
      float v = to_float(r);
      sum_sq += v * v;
    }
  }
  sum_sq = block_sum(sum_sq, scratch);
  const float inv_rms = 1.f / sqrtf(sum_sq / static_cast<float>(hidden) + eps);
  // Each thread reads back only the elements it wrote: no barrier needed.
  if (kVec) {
    for (int64_t i = threadIdx.x; i < hidden / N; i += blockDim.x) {
      Pack<T> r = *reinterpret_cast<const Pack<T> *>(rr + i * N), w = load_pack(weight + i * N), o;
#pragma unroll
      for (int j = 0; j < N; ++j)
        o.v[j] = from_float<T>(to_float(w.v[j]) * (to_float(r.v[j]) * inv_rms));
      store_pack(xr + i * N, o);
    }
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
      xr[i] = from_float<T>(to_float(weight[i]) * (to_float(rr[i]) * inv_rms));
  }
}

template <typename T> bool can_vectorize(int64_t hidden, std::initializer_list<const void *> ptrs) {
  if (hidden % Vec<T>::N != 0)
    return false;
  for (const void *p : ptrs)
    if (!aligned16(p))
      return false;
  return true;
}

} // namespace ek

using namespace ek;

extern "C" int32_t ek_rms_norm(void *out, const void *x, const void *weight, int32_t dtype,
                               int64_t rows, int64_t hidden, float eps, void *stream) {
  if (rows == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(dtype, {
    auto *o = static_cast<scalar_t *>(out);
    auto *xi = static_cast<const scalar_t *>(x);
    auto *w = static_cast<const scalar_t *>(weight);
    if (can_vectorize<scalar_t>(hidden, {out, x, weight}))
      rms_norm_kernel<scalar_t, true>
          <<<rows, threads_for(hidden / Vec<scalar_t>::N, kNormThreads), 0, s>>>(o, xi, w, hidden,
                                                                                 eps);
    else
      rms_norm_kernel<scalar_t, false>
          <<<rows, threads_for(hidden, kNormThreads), 0, s>>>(o, xi, w, hidden, eps);
  });
  return launch_status();
}

extern "C" int32_t ek_fused_add_rms_norm(void *x, void *residual, const void *weight, int32_t dtype,
                                         int64_t rows, int64_t hidden, float eps, void *stream) {
  if (rows == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(dtype, {
    auto *xi = static_cast<scalar_t *>(x);
    auto *r = static_cast<scalar_t *>(residual);
    auto *w = static_cast<const scalar_t *>(weight);
    if (can_vectorize<scalar_t>(hidden, {x, residual, weight}))
      fused_add_rms_norm_kernel<scalar_t, true>
          <<<rows, threads_for(hidden / Vec<scalar_t>::N, kNormThreads), 0, s>>>(xi, r, w, hidden,
                                                                                 eps);
    else
      fused_add_rms_norm_kernel<scalar_t, false>
          <<<rows, threads_for(hidden, kNormThreads), 0, s>>>(xi, r, w, hidden, eps);
  });
  return launch_status();
}
