// Around the cuBLAS GEMM of a linear layer: activations converted to the
// weights' 16-bit dtype before it, the bias added after it.
#include "common.cuh"

namespace ek {

template <typename O, typename I>
__global__ void convert_kernel(O *__restrict__ out, const I *__restrict__ in, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<O>(to_float(in[i]));
}

template <typename T>
__global__ void add_bias_kernel(T *__restrict__ x, const T *__restrict__ bias, int64_t rows,
                                int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = from_float<T>(to_float(x[i]) + to_float(bias[i % cols]));
}

} // namespace ek

using namespace ek;

extern "C" int32_t ek_convert(void *out, int32_t out_dtype, const void *in, int32_t in_dtype,
                              int64_t n, void *stream) {
  if (n == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(out_dtype, {
    using out_t = scalar_t;
    EK_DISPATCH_DTYPE(in_dtype, {
      convert_kernel<out_t, scalar_t><<<grid_for(n, 256), 256, 0, s>>>(
          static_cast<out_t *>(out), static_cast<const scalar_t *>(in), n);
    });
  });
  return launch_status();
}

extern "C" int32_t ek_add_bias(void *x, const void *bias, int32_t dtype, int64_t rows, int64_t cols,
                               void *stream) {
  if (rows == 0 || cols == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(dtype, {
    add_bias_kernel<scalar_t><<<grid_for(rows * cols, 256), 256, 0, s>>>(
        static_cast<scalar_t *>(x), static_cast<const scalar_t *>(bias), rows, cols);
  });
  return launch_status();
}
