// Paged-attention decode: our kernel (csrc/attention/decode.cu, through its C API in
// csrc/kernels.h) next to FlashInfer's BatchDecodeWithPagedKVCache (the CUDA-core
// decode kernel of the flashinfer-python wheel, header-only) on one shape, in one
// process, on the same random K/V/Q and the same shuffled page table.
//
// Shape: batch 64, context 4096, 32 query heads, 8 KV heads, head_dim 128, bf16,
// page (block) size 16. Our pools [num_blocks, num_kv_heads, block_size, head_dim]
// with separate K and V are FlashInfer's HND paged layout (paged_kv_t, kHND).
// q is a fused qkv row ((32 + 2 * 8) * 128 wide, q heads first) for both.
//
// FlashInfer is driven the way its own csrc/batch_decode.cu does (Params and
// variant as batch_decode_customize_config.jinja renders them for
// gen_batch_decode_module: DefaultAttention<false, false, false, false>,
// PosEncodingMode::kNone, no soft cap, sm_scale 1/sqrt(128)): DecodePlan with
// the work estimation and float + int workspaces, split-KV as it chooses, then
// BatchDecodeWithPagedKVCacheDispatched. PDL is on for sm_90+, as FlashInfer's
// Python default (FLASHINFER_PDL=0 turns it off).
//
// Prints markdown rows `| name | µs | GB/s | % of copy | note |` (median of 50
// after 5 warm-ups, each timed by cudaEvents behind a 200 µs spin kernel so
// host launch work is not counted; bytes = K and V read once) for a 2 GiB
// device-to-device cudaMemcpy (bytes read + written), ours single-pass
// (partitions 0), ours split into all 512-token partitions, and FlashInfer.
// Errors: relative L2 between the outputs, and against a float reference
// computed on the device for every (sequence, head).
//
// usage: flashinfer_decode [copy_GBps]   (absent or 0: the memcpy measured here)
// exit: 0 ok; 1 FlashInfer and ours differ by more than 2e-2; 2 a CUDA call
// failed; 3 FlashInfer threw.
//
// Built by scripts/device/build-flashinfer-compare.sh (FlashInfer's headers are
// fetched at build time, never committed).
#include <flashinfer/attention/decode.cuh>
#include <flashinfer/attention/scheduler.cuh>
#include <flashinfer/attention/variants.cuh>
#include <flashinfer/page.cuh>
#include <flashinfer/pos_enc.cuh>
#include <flashinfer/utils.cuh>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"

namespace {

constexpr int BATCH = 64, CONTEXT = 4096, HEADS = 32, KV_HEADS = 8, HD = 128, BS = 16;
constexpr int QKV = (HEADS + 2 * KV_HEADS) * HD;
constexpr int GROUP = HEADS / KV_HEADS;
constexpr int PAGES_PER_SEQ = (CONTEXT + BS - 1) / BS;
constexpr int NUM_BLOCKS = BATCH * PAGES_PER_SEQ;
constexpr int LAST_PAGE_LEN = CONTEXT - (PAGES_PER_SEQ - 1) * BS;
constexpr int WARMUP = 5, REPS = 50;
constexpr double MAX_REL_ERR = 2e-2;
const char *const SHAPE = "b64_ctx4096_h32_kv8_d128 bf16";

using bf16 = nv_bfloat16;

#define CK(call)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d: %s failed: %s (%d)\n", __FILE__, __LINE__, #call,         \
                   cudaGetErrorString(e_), static_cast<int>(e_));                             \
      std::exit(2);                                                                           \
    }                                                                                         \
  } while (0)

// Our launchers return a cudaError_t as int32_t.
#define CK_ENGINE(call) CK(static_cast<cudaError_t>(call))

// ---- FlashInfer's decode Params, as batch_decode_customize_config.jinja renders
// it for gen_batch_decode_module (bf16 q/kv/o, int32 ids, additional params
// maybe_alibi_slopes, logits_soft_cap, sm_scale, rope_rcp_scale, rope_rcp_theta).
struct FiParams {
  using DTypeQ = bf16;
  using DTypeKV = bf16;
  using DTypeO = bf16;
  using IdType = int32_t;

  DTypeQ *q;
  flashinfer::paged_kv_t<DTypeKV, IdType> paged_kv;
  DTypeO *o;
  float *lse;

  float *maybe_alibi_slopes;
  double logits_soft_cap;
  double sm_scale;
  double rope_rcp_scale;
  double rope_rcp_theta;

  uint32_t padded_batch_size;
  uint32_t num_qo_heads;
  IdType q_stride_n;
  IdType q_stride_h;
  int32_t window_left;
  bool enable_pdl;

  IdType *request_indices;
  IdType *kv_tile_indices;
  IdType *o_indptr;
  IdType *kv_chunk_size_ptr;
  bool *block_valid_mask;
  bool partition_kv;

  __host__ __device__ __forceinline__ int32_t get_qo_len(int32_t batch_idx) const { return 1; }

  __host__ __device__ __forceinline__ int32_t get_kv_len(int32_t batch_idx) const {
    return paged_kv.get_length(batch_idx);
  }
};

// gen_batch_decode_module's variant_name for no sliding window, no soft cap, no ALiBi.
using FiVariant = flashinfer::DefaultAttention<false, false, false, false>;
constexpr auto FI_POS_ENCODING_MODE = flashinfer::PosEncodingMode::kNone;

// ---- Data: +-[0.1, 1) * scale (as bench/cuda_kernels.rs's random(): never 0),
// from a counter-based hash so it is the same on every run.
__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__global__ void fill_random(bf16 *p, size_t n, uint64_t seed, float scale) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint64_t z = splitmix64(seed * 0xD1B54A32D192ED03ull + i);
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    const float mag = 0.1f + 0.9f * u;
    p[i] = __float2bfloat16_rn(((z & 1) ? mag : -mag) * scale);
  }
}

void fill(bf16 *p, size_t n, uint64_t seed, float scale, cudaStream_t s) {
  fill_random<<<2048, 256, 0, s>>>(p, n, seed, scale);
  CK(cudaGetLastError());
}

// ---- Float reference: one block of HD threads per (head, sequence); scores of
// the whole context in shared memory, exact softmax, then the weighted V sum.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Every thread gets the block's max (is_max) or sum of v; `red` holds 32 floats.
__device__ float block_reduce(float v, bool is_max, float *red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = is_max ? warp_max(v) : warp_sum(v);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < warps; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

__device__ __forceinline__ size_t ref_kv_offset(const int32_t *tables, int seq, int kv_head, int t) {
  const int block = tables[seq * PAGES_PER_SEQ + t / BS];
  return ((static_cast<size_t>(block) * KV_HEADS + kv_head) * BS + t % BS) * HD;
}

// grid (HEADS, BATCH), block HD threads; out float [BATCH, HEADS, HD].
__global__ void __launch_bounds__(HD) reference_decode(const bf16 *qkv, const bf16 *k_cache,
                                                       const bf16 *v_cache, const int32_t *tables,
                                                       float scale, float *out) {
  static_assert(HD % 32 == 0 && HD <= 1024, "one thread per head dim");
  __shared__ float p[CONTEXT];
  __shared__ float red[32];
  const int head = blockIdx.x, seq = blockIdx.y, kv_head = head / GROUP;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const bf16 *q = qkv + static_cast<size_t>(seq) * QKV + static_cast<size_t>(head) * HD;
  float qr[HD / 32];
  for (int i = 0; i < HD / 32; ++i) qr[i] = __bfloat162float(q[lane + 32 * i]);
  for (int t = warp; t < CONTEXT; t += warps) {
    const bf16 *k = k_cache + ref_kv_offset(tables, seq, kv_head, t);
    float dot = 0.f;
    for (int i = 0; i < HD / 32; ++i) dot += qr[i] * __bfloat162float(k[lane + 32 * i]);
    dot = warp_sum(dot);
    if (lane == 0) p[t] = dot * scale;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int t = threadIdx.x; t < CONTEXT; t += blockDim.x) m = fmaxf(m, p[t]);
  m = block_reduce(m, true, red);
  float l = 0.f;
  for (int t = threadIdx.x; t < CONTEXT; t += blockDim.x) {
    const float e = expf(p[t] - m);
    p[t] = e;
    l += e;
  }
  l = block_reduce(l, false, red);  // its barriers publish p[]
  const int d = threadIdx.x;
  float acc = 0.f;
  for (int t = 0; t < CONTEXT; ++t) acc += p[t] * __bfloat162float(v_cache[ref_kv_offset(tables, seq, kv_head, t) + d]);
  out[(static_cast<size_t>(seq) * HEADS + head) * HD + d] = acc / l;
}

// ---- Helpers.
// Keeps the GPU busy for `ns` so that the launches queued behind it (host work
// such as FlashInfer's per-call cudaFuncSetAttribute and occupancy queries)
// are not timed: the start event fires only when the spin ends.
__global__ void spin(uint64_t ns) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

template <typename F>
double median_us(F &&launch, cudaStream_t s) {
  for (int i = 0; i < WARMUP; ++i) launch();
  CK(cudaStreamSynchronize(s));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<double> us;
  for (int i = 0; i < REPS; ++i) {
    spin<<<1, 1, 0, s>>>(200000);  // 200 us
    CK(cudaGetLastError());
    CK(cudaEventRecord(a, s));
    launch();
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms = 0.f;
    CK(cudaEventElapsedTime(&ms, a, b));
    us.push_back(1e3 * ms);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

std::vector<float> download_bf16(const bf16 *d, size_t n) {
  std::vector<bf16> h(n);
  CK(cudaMemcpy(h.data(), d, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = __bfloat162float(h[i]);
  return f;
}

// ||a - b|| / ||b||; NaN (never <= a bound) if either holds a NaN.
double rel_l2(const std::vector<float> &a, const std::vector<float> &b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num) / std::sqrt(den);
}

std::string pct(double gbps, double copy_gbps) {
  if (!(copy_gbps > 0)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f%%", 100.0 * gbps / copy_gbps);
  return buf;
}

void row(const std::string &name, double us, double bytes, double copy_gbps, const std::string &note) {
  const double gbps = bytes / (us * 1e-6) / 1e9;
  std::printf("| %s | %.1f | %.0f | %s | %s |\n", name.c_str(), us, gbps, pct(gbps, copy_gbps).c_str(),
              note.c_str());
  std::fflush(stdout);
}

int run(int argc, char **argv) {
  double copy_arg = argc > 1 ? std::atof(argv[1]) : 0.0;
  int dev = 0;
  CK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  const char *pdl_env = std::getenv("FLASHINFER_PDL");
  const bool enable_pdl = pdl_env ? std::strcmp(pdl_env, "0") != 0 : prop.major >= 9;
  std::printf("device: %s (sm_%d%d, %d SMs, L2 %d MiB)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  // ---- Roofline: a 2 GiB device-to-device copy, bytes read plus written.
  const size_t copy_n = size_t(2) << 30;
  void *csrc = nullptr, *cdst = nullptr;
  CK(cudaMalloc(&csrc, copy_n));
  CK(cudaMalloc(&cdst, copy_n));
  CK(cudaMemsetAsync(csrc, 0x5a, copy_n, s));
  const double copy_us = median_us([&] { CK(cudaMemcpyAsync(cdst, csrc, copy_n, cudaMemcpyDeviceToDevice, s)); }, s);
  const double copy_measured = 2.0 * copy_n / (copy_us * 1e-6) / 1e9;
  const double copy_gbps = copy_arg > 0 ? copy_arg : copy_measured;
  CK(cudaFree(csrc));
  CK(cudaFree(cdst));

  // ---- Inputs, shared by every kernel.
  const size_t pool = size_t(NUM_BLOCKS) * KV_HEADS * BS * HD;
  const size_t out_n = size_t(BATCH) * HEADS * HD;
  bf16 *k_cache, *v_cache, *qkv, *out_ours, *out_fi;
  float *out_ref;
  CK(cudaMalloc(&k_cache, pool * sizeof(bf16)));
  CK(cudaMalloc(&v_cache, pool * sizeof(bf16)));
  CK(cudaMalloc(&qkv, size_t(BATCH) * QKV * sizeof(bf16)));
  CK(cudaMalloc(&out_ours, out_n * sizeof(bf16)));
  CK(cudaMalloc(&out_fi, out_n * sizeof(bf16)));
  CK(cudaMalloc(&out_ref, out_n * sizeof(float)));
  fill(k_cache, pool, 13, 1.0f, s);
  fill(v_cache, pool, 14, 1.0f, s);
  // q larger than K/V so the softmax is not flat (scores ~ N(0, 1)).
  fill(qkv, size_t(BATCH) * QKV, 15, 3.0f, s);

  // The page table: every block id once, shuffled; sequence s owns row s.
  std::vector<int32_t> ids(NUM_BLOCKS);
  for (int i = 0; i < NUM_BLOCKS; ++i) ids[i] = i;
  std::mt19937_64 rng(12);
  for (int i = NUM_BLOCKS - 1; i > 0; --i)
    std::swap(ids[i], ids[std::uniform_int_distribution<int>(0, i)(rng)]);
  std::vector<int32_t> ctx_h(BATCH, CONTEXT), qs_h(BATCH + 1), indptr_h(BATCH + 1),
      last_h(BATCH, LAST_PAGE_LEN);
  for (int i = 0; i <= BATCH; ++i) {
    qs_h[i] = i;
    indptr_h[i] = i * PAGES_PER_SEQ;  // FlashInfer's indices are the same flattened table
  }
  int32_t *tables, *ctx, *qs, *fi_indptr, *fi_last;
  CK(cudaMalloc(&tables, ids.size() * sizeof(int32_t)));
  CK(cudaMalloc(&ctx, BATCH * sizeof(int32_t)));
  CK(cudaMalloc(&qs, (BATCH + 1) * sizeof(int32_t)));
  CK(cudaMalloc(&fi_indptr, (BATCH + 1) * sizeof(int32_t)));
  CK(cudaMalloc(&fi_last, BATCH * sizeof(int32_t)));
  CK(cudaMemcpy(tables, ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(ctx, ctx_h.data(), BATCH * sizeof(int32_t), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(qs, qs_h.data(), (BATCH + 1) * sizeof(int32_t), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(fi_indptr, indptr_h.data(), (BATCH + 1) * sizeof(int32_t), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(fi_last, last_h.data(), BATCH * sizeof(int32_t), cudaMemcpyHostToDevice));
  // Pageable H2D copies may still be in flight when cudaMemcpy returns, and s
  // does not wait for the legacy stream: finish them (and the fills) here.
  CK(cudaDeviceSynchronize());
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));

  // ---- Ours.
  ek_attn_params p{};
  p.out = out_ours;
  p.q = qkv;
  p.k_cache = k_cache;
  p.v_cache = v_cache;
  p.block_tables = tables;
  p.context_lens = ctx;
  p.query_start = qs;
  p.q_stride = QKV;
  p.out_stride = HEADS * HD;
  p.num_seqs = BATCH;
  p.num_heads = HEADS;
  p.num_kv_heads = KV_HEADS;
  p.head_dim = HD;
  p.block_size = BS;
  p.max_blocks_per_seq = PAGES_PER_SEQ;
  p.sliding_window = 0;
  p.dtype = EK_DTYPE_BF16;
  p.scale = scale;
  // The pools are bf16 like q: a zeroed cache_dtype (f32) is refused.
  p.cache_dtype = EK_DTYPE_BF16;
  p.k_scale = 1.0f;
  p.v_scale = 1.0f;
  const int all_parts = (CONTEXT + EK_ATTN_PARTITION_SIZE - 1) / EK_ATTN_PARTITION_SIZE;
  const int64_t ws_bytes = ek_paged_attention_workspace_bytes(BATCH, HEADS, HD, all_parts);
  void *ws = nullptr;
  CK(cudaMalloc(&ws, static_cast<size_t>(ws_bytes)));

  // ---- FlashInfer: plan (csrc/batch_decode.cu's BatchDecodeWithPagedKVCachePlan).
  flashinfer::DecodePlanInfo plan;
  size_t fi_float_bytes = 0, fi_int_bytes = 0;
  void *fi_float_ws = nullptr, *fi_int_ws = nullptr, *fi_int_ws_h = nullptr;
  DISPATCH_GQA_GROUP_SIZE(HEADS / KV_HEADS, GROUP_SIZE, {
    auto work_estimation_func =
        flashinfer::BatchDecodeWithPagedKVCacheWorkEstimationDispatched<GROUP_SIZE, HD, FI_POS_ENCODING_MODE,
                                                                        FiVariant, FiParams>;
    CK((flashinfer::DecodePlanWorkspaceSize<HD, FI_POS_ENCODING_MODE, FiVariant, FiParams>(
        fi_float_bytes, fi_int_bytes, indptr_h.data(), BATCH, HEADS, BS,
        /*enable_cuda_graph=*/false, s, work_estimation_func)));
    CK(cudaMalloc(&fi_float_ws, std::max<size_t>(fi_float_bytes, 256)));
    CK(cudaMalloc(&fi_int_ws, std::max<size_t>(fi_int_bytes, 256)));
    CK(cudaMallocHost(&fi_int_ws_h, std::max<size_t>(fi_int_bytes, 256)));
    CK((flashinfer::DecodePlan<HD, FI_POS_ENCODING_MODE, FiVariant, FiParams>(
        fi_float_ws, std::max<size_t>(fi_float_bytes, 256), fi_int_ws, fi_int_ws_h,
        std::max<size_t>(fi_int_bytes, 256), plan, indptr_h.data(), BATCH, HEADS, BS,
        /*enable_cuda_graph=*/false, s, work_estimation_func)));
  });
  CK(cudaStreamSynchronize(s));
  const int32_t fi_chunk_tokens =
      *flashinfer::GetPtrFromBaseOffset<int32_t>(fi_int_ws_h, plan.kv_chunk_size_ptr_offset);

  // ---- FlashInfer: run (csrc/batch_decode.cu's BatchDecodeWithPagedKVCacheRun).
  const int64_t kv_strides[4] = {int64_t(KV_HEADS) * BS * HD, int64_t(BS) * HD, HD, 1};  // HND
  FiParams fp{};
  fp.paged_kv = flashinfer::paged_kv_t<bf16, int32_t>(
      KV_HEADS, BS, HD, BATCH, flashinfer::QKVLayout::kHND, k_cache, v_cache, kv_strides, kv_strides,
      tables, fi_indptr, fi_last);
  fp.q = qkv;
  fp.o = out_fi;
  fp.lse = nullptr;
  fp.maybe_alibi_slopes = nullptr;
  fp.logits_soft_cap = 0.0;
  fp.sm_scale = 1.0 / std::sqrt(static_cast<double>(HD));
  fp.rope_rcp_scale = 1.0;       // 1 / rope_scale (1)
  fp.rope_rcp_theta = 1.0 / 1e4;  // 1 / rope_theta (unused with kNone)
  fp.num_qo_heads = HEADS;
  fp.q_stride_n = QKV;
  fp.q_stride_h = HD;
  fp.window_left = -1;
  fp.enable_pdl = enable_pdl;
  fp.partition_kv = false;
  fp.block_valid_mask = nullptr;
  fp.request_indices = flashinfer::GetPtrFromBaseOffset<int32_t>(fi_int_ws, plan.request_indices_offset);
  fp.kv_tile_indices = flashinfer::GetPtrFromBaseOffset<int32_t>(fi_int_ws, plan.kv_tile_indices_offset);
  fp.o_indptr = flashinfer::GetPtrFromBaseOffset<int32_t>(fi_int_ws, plan.o_indptr_offset);
  fp.kv_chunk_size_ptr = flashinfer::GetPtrFromBaseOffset<int32_t>(fi_int_ws, plan.kv_chunk_size_ptr_offset);
  bf16 *tmp_v = nullptr;
  float *tmp_s = nullptr;
  if (plan.split_kv) {
    tmp_v = flashinfer::GetPtrFromBaseOffset<bf16>(fi_float_ws, plan.v_offset);
    tmp_s = flashinfer::GetPtrFromBaseOffset<float>(fi_float_ws, plan.s_offset);
    if (plan.enable_cuda_graph)
      fp.block_valid_mask = flashinfer::GetPtrFromBaseOffset<bool>(fi_int_ws, plan.block_valid_mask_offset);
  }
  fp.padded_batch_size = static_cast<uint32_t>(plan.padded_batch_size);
  auto run_fi = [&] {
    CK((flashinfer::BatchDecodeWithPagedKVCacheDispatched<HD, FI_POS_ENCODING_MODE, FiVariant>(
        fp, tmp_v, tmp_s, enable_pdl, s)));
  };
  auto run_ours = [&](int parts) { CK_ENGINE(ek_paged_attention_decode(&p, parts, ws, s)); };

  std::printf("flashinfer plan: split_kv=%d padded_batch_size=%lld kv_chunk=%d tokens, float ws %zu B, int ws %zu B, pdl=%d\n",
              int(plan.split_kv), static_cast<long long>(plan.padded_batch_size), fi_chunk_tokens,
              fi_float_bytes, fi_int_bytes, int(enable_pdl));

  // ---- Correctness: each output poisoned with NaN (0xFFFF) before its run.
  reference_decode<<<dim3(HEADS, BATCH), HD, 0, s>>>(qkv, k_cache, v_cache, tables, scale, out_ref);
  CK(cudaGetLastError());
  std::vector<float> ref(out_n);
  CK(cudaStreamSynchronize(s));
  CK(cudaMemcpy(ref.data(), out_ref, out_n * sizeof(float), cudaMemcpyDeviceToHost));

  std::vector<float> ours[2];
  const int parts_of[2] = {0, all_parts};
  for (int i = 0; i < 2; ++i) {
    CK(cudaMemsetAsync(out_ours, 0xff, out_n * sizeof(bf16), s));
    run_ours(parts_of[i]);
    CK(cudaStreamSynchronize(s));
    ours[i] = download_bf16(out_ours, out_n);
  }
  CK(cudaMemsetAsync(out_fi, 0xff, out_n * sizeof(bf16), s));
  run_fi();
  CK(cudaStreamSynchronize(s));
  const std::vector<float> fi = download_bf16(out_fi, out_n);

  const double err_fi_ours0 = rel_l2(fi, ours[0]), err_fi_ours1 = rel_l2(fi, ours[1]);
  const double err_ref[2] = {rel_l2(ours[0], ref), rel_l2(ours[1], ref)};
  const double err_fi_ref = rel_l2(fi, ref);

  // ---- Timing.
  const double kv_bytes = 2.0 * BATCH * CONTEXT * KV_HEADS * HD * sizeof(bf16);
  char note[256];
  std::snprintf(note, sizeof note, "measured here%s", copy_arg > 0 ? "; % column vs the given copy GB/s" : "");
  row("cudaMemcpy d2d 2 GiB (bytes read + written)", copy_us, 2.0 * copy_n, copy_gbps, note);
  for (int i = 0; i < 2; ++i) {
    const double us = median_us([&] { run_ours(parts_of[i]); }, s);
    std::snprintf(note, sizeof note, "rel err vs flashinfer %.1e, vs f32 ref %.1e",
                  i == 0 ? err_fi_ours0 : err_fi_ours1, err_ref[i]);
    row("ours paged_attention_decode partitions" + std::to_string(parts_of[i]) + " " + SHAPE, us, kv_bytes,
        copy_gbps, note);
  }
  {
    const double us = median_us(run_fi, s);
    std::snprintf(note, sizeof note,
                  "rel err vs ours(partitions0) %.1e, vs ours(partitions%d) %.1e, vs f32 ref %.1e; %s",
                  err_fi_ours0, all_parts, err_fi_ours1, err_fi_ref,
                  plan.split_kv ? "split-kv + merge" : "no split");
    char name[160];
    std::snprintf(name, sizeof name, "flashinfer 0.7.4 BatchDecodeWithPagedKVCache %s", SHAPE);
    row(name, us, kv_bytes, copy_gbps, note);
  }

  for (double e : {err_ref[0], err_ref[1], err_fi_ref})
    if (!(e <= MAX_REL_ERR)) std::printf("WARNING: an output differs from the f32 reference by %.1e\n", e);
  int status = 0;
  if (!(err_fi_ours0 <= MAX_REL_ERR) || !(err_fi_ours1 <= MAX_REL_ERR)) {
    std::printf("FAIL: flashinfer vs ours rel err %.1e / %.1e > %.0e\n", err_fi_ours0, err_fi_ours1, MAX_REL_ERR);
    status = 1;
  }

  for (void *ptr : {(void *)k_cache, (void *)v_cache, (void *)qkv, (void *)out_ours, (void *)out_fi,
                    (void *)out_ref, (void *)tables, (void *)ctx, (void *)qs, (void *)fi_indptr,
                    (void *)fi_last, ws, fi_float_ws, fi_int_ws})
    CK(cudaFree(ptr));
  CK(cudaFreeHost(fi_int_ws_h));
  CK(cudaStreamDestroy(s));
  return status;
}

}  // namespace

int main(int argc, char **argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "flashinfer error: %s\n", e.what());
    return 3;
  }
}
