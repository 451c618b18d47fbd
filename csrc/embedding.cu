// Row gathers by index: the token embedding lookup (the table's dtype to the
// activations') and the selection of the hidden rows whose logits the LM head
// computes.
#include "common.cuh"

namespace ek {

template <typename O, typename T>
__global__ void embedding_kernel(O *__restrict__ out, const T *__restrict__ table,
                                 const int32_t *__restrict__ ids, int64_t width) {
  const int64_t t = blockIdx.x;
  const T *row = table + static_cast<int64_t>(ids[t]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    out[t * width + i] = from_float<O>(to_float(row[i]));
}

template <typename T>
__global__ void gather_rows_kernel(T *__restrict__ out, const T *__restrict__ x,
                                   const int32_t *__restrict__ rows, int64_t width) {
  const int64_t r = blockIdx.x;
  const T *src = x + static_cast<int64_t>(rows[r]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    out[r * width + i] = src[i];
}

} // namespace ek

using namespace ek;

extern "C" int32_t ek_embedding(void *out, int32_t out_dtype, const void *table,
                                int32_t table_dtype, const int32_t *ids, int64_t tokens,
                                int64_t width, void *stream) {
  if (tokens == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(out_dtype, {
    using out_t = scalar_t;
    EK_DISPATCH_DTYPE(table_dtype, {
      embedding_kernel<out_t, scalar_t><<<tokens, threads_for(width), 0, s>>>(
          static_cast<out_t *>(out), static_cast<const scalar_t *>(table), ids, width);
    });
  });
  return launch_status();
}

extern "C" int32_t ek_gather_rows(void *out, const void *x, int32_t dtype, const int32_t *rows,
                                  int64_t count, int64_t width, void *stream) {
  if (count == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(dtype, {
    gather_rows_kernel<scalar_t><<<count, threads_for(width), 0, s>>>(
        static_cast<scalar_t *>(out), static_cast<const scalar_t *>(x), rows, width);
  });
  return launch_status();
}
