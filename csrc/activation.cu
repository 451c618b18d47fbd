// Gated activations: SiLU(gate) * up.
#include "common.cuh"

namespace ek {

__device__ __forceinline__ float silu_mul(float g, float u) {
  return g / (1.f + expf(-g)) * u;
}

// grid (column blocks, row blocks): grid.y is at most 65535, so a block
// steps over rows gridDim.y apart (a prefill step may have more tokens).
template <typename T, bool kVec>
__global__ void silu_and_mul_kernel(T *__restrict__ out, const T *__restrict__ in, int64_t rows,
                                    int64_t width) {
  constexpr int N = kVec ? Vec<T>::N : 1;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
  if (i >= width)
    return;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const T *gate = in + row * 2 * width;
    const T *up = gate + width;
    T *o = out + row * width;
    if (kVec) {
      Pack<T> g = load_pack(gate + i), u = load_pack(up + i), r;
#pragma unroll
      for (int j = 0; j < N; ++j)
        r.v[j] = from_float<T>(silu_mul(to_float(g.v[j]), to_float(u.v[j])));
      store_pack(o + i, r);
    } else {
      o[i] = from_float<T>(silu_mul(to_float(gate[i]), to_float(up[i])));
    }
  }
}

} // namespace ek

using namespace ek;

extern "C" int32_t ek_silu_and_mul(void *out, const void *input, int32_t dtype, int64_t rows,
                                   int64_t width, void *stream) {
  if (rows == 0 || width == 0)
    return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  EK_DISPATCH_DTYPE(dtype, {
    constexpr int N = Vec<scalar_t>::N;
    auto *o = static_cast<scalar_t *>(out);
    auto *in = static_cast<const scalar_t *>(input);
    const bool vec = width % N == 0 && aligned16(out) && aligned16(input);
    const int64_t lanes = vec ? width / N : width;
    const int threads = threads_for(lanes);
    const dim3 grid(static_cast<unsigned>((lanes + threads - 1) / threads),
                    static_cast<unsigned>(rows < 65535 ? rows : 65535));
    if (vec)
      silu_and_mul_kernel<scalar_t, true><<<grid, threads, 0, s>>>(o, in, rows, width);
    else
      silu_and_mul_kernel<scalar_t, false><<<grid, threads, 0, s>>>(o, in, rows, width);
  });
  return launch_status();
}
