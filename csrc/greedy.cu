// Greedy rows that ask for no top logprobs, fused: the token ek_log_softmax
// then ek_argmax choose and the logprob ek_token_rank reports (its rank is 1),
// in two passes over the logits with each row split over many blocks (one
// block a row left most of the GPU idle: the H200 ran log_softmax at 6% and
// argmax at 13% of its copy bandwidth on 64 rows of 128k).
//
// Pass 1 reduces each chunk of a row to its max and its sum of exp(x - max).
// Pass 2 merges a row's chunks into the max M and log_sum = log(sum exp(x - M))
// (double), then finds the first index whose log_softmax value,
// float(double(x - M) - log_sum), equals the row's largest, float(-log_sum):
// values that round to the max's logprob tie with it, and the lowest index
// wins, as the argmax of the log_softmax row does. NaN never wins; a row with
// no finite maximum reads as all -inf (token 0), as in ek_log_softmax.
#include "common.cuh"

namespace ek {

constexpr int kGreedyChunk = 4096;
constexpr int kGreedyThreads = 256;

__global__ void __launch_bounds__(kGreedyThreads)
    greedy_partials_kernel(float *__restrict__ part_max, double *__restrict__ part_sum,
                           int32_t *__restrict__ out, const float *__restrict__ logits,
                           int64_t vocab, int chunks) {
  __shared__ float fs[32];
  __shared__ double ds[32];
  const int64_t row = blockIdx.x;
  const int chunk = blockIdx.y;
  const int64_t lo = static_cast<int64_t>(chunk) * kGreedyChunk;
  const int64_t hi = min(vocab, lo + kGreedyChunk);
  const float *x = logits + row * vocab;
  float mx = -INFINITY;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x)
    mx = fmaxf(mx, x[i]);
  mx = block_max(mx, fs);
  double sum = 0.0;
  if (isfinite(mx))
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      const double e = exp(static_cast<double>(x[i] - mx));
      if (!isnan(e))
        sum += e;
    }
  sum = block_sum(sum, ds);
  if (threadIdx.x == 0) {
    part_max[row * chunks + chunk] = mx;
    part_sum[row * chunks + chunk] = sum;
    if (chunk == 0)
      out[row] = INT32_MAX; // lowered by pass 2's atomicMin
  }
}

__global__ void __launch_bounds__(kGreedyThreads)
    greedy_choose_kernel(int32_t *__restrict__ out, float *__restrict__ logprob,
                         const float *__restrict__ part_max, const double *__restrict__ part_sum,
                         const float *__restrict__ logits, int64_t vocab, int chunks) {
  __shared__ float fs[32];
  __shared__ double ds[32];
  __shared__ int32_t first;
  const int64_t row = blockIdx.x;
  const int chunk = blockIdx.y;
  const float *pm = part_max + row * chunks;
  const double *ps = part_sum + row * chunks;
  float m = -INFINITY;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x)
    m = fmaxf(m, pm[c]);
  m = block_max(m, fs);
  // Any +inf, or no number at all: ek_log_softmax's all -inf row.
  if (!isfinite(m)) {
    if (chunk == 0 && threadIdx.x == 0) {
      out[row] = 0;
      logprob[row] = -INFINITY;
    }
    return;
  }
  double s = 0.0;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x)
    if (isfinite(pm[c]))
      s += ps[c] * exp(static_cast<double>(pm[c]) - static_cast<double>(m));
  s = block_sum(s, ds);
  const double log_sum = log(s);
  const float best = static_cast<float>(-log_sum);
  if (threadIdx.x == 0)
    first = INT32_MAX;
  __syncthreads();
  const int64_t lo = static_cast<int64_t>(chunk) * kGreedyChunk;
  const int64_t hi = min(vocab, lo + kGreedyChunk);
  const float *x = logits + row * vocab;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x)
    if (static_cast<float>(static_cast<double>(x[i] - m) - log_sum) == best)
      atomicMin(&first, static_cast<int32_t>(i));
  __syncthreads();
  if (threadIdx.x == 0) {
    if (first != INT32_MAX)
      atomicMin(&out[row], first);
    if (chunk == 0)
      logprob[row] = best;
  }
}

} // namespace ek

using namespace ek;

extern "C" int64_t ek_greedy_workspace_bytes(int64_t rows, int64_t vocab) {
  const int64_t chunks = (vocab + kGreedyChunk - 1) / kGreedyChunk;
  return rows * chunks * static_cast<int64_t>(sizeof(float) + sizeof(double));
}

extern "C" int32_t ek_greedy(int32_t *out, float *logprob, const float *logits, int64_t rows,
                             int64_t vocab, void *workspace, void *stream) {
  if (rows == 0 || vocab == 0)
    return 0;
  const int64_t chunks64 = (vocab + kGreedyChunk - 1) / kGreedyChunk;
  if (workspace == nullptr || rows > INT32_MAX || chunks64 > 65535)
    return static_cast<int32_t>(cudaErrorInvalidValue);
  const int chunks = static_cast<int>(chunks64);
  // The doubles first: 8-byte aligned in a workspace the allocator aligns.
  double *part_sum = static_cast<double *>(workspace);
  float *part_max = reinterpret_cast<float *>(part_sum + rows * chunks);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(rows), chunks);
  greedy_partials_kernel<<<grid, kGreedyThreads, 0, s>>>(part_max, part_sum, out, logits, vocab,
                                                         chunks);
  greedy_choose_kernel<<<grid, kGreedyThreads, 0, s>>>(out, logprob, part_max, part_sum, logits,
                                                       vocab, chunks);
  return launch_status();
}
