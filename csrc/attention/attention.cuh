#pragma once

// Attention over the paged KV cache: what decode.cu and prefill.cu share.
//
// Decode (one query per sequence): a block serves one sequence and up to
// EK_ATTN_MAX_GROUP query heads that share a KV head, so each K and V row
// is read once for the whole group. Lanes split into groups of L that each
// own one token at a time: a lane holds 16-byte vectors of the token's K (then
// V) row, head dims padded to a power of two (80 and 96 run as 128 with the
// extra vectors masked). Each lane group keeps an online softmax (running
// max, sum and weighted V) per query head over the tokens it visits; the
// groups are merged through shared memory at the end. No score is stored, so
// any context fits one block. The partitioned variant runs the same loop over
// EK_ATTN_PARTITION_SIZE-token slices in parallel blocks and a reduce
// kernel merges the slices (flash-decoding).
//
// Prefill (any number of queries per sequence): a block serves 16 query rows
// of one head; 8 lanes per row each own head_dim / 8 output dims. K and V
// tiles of the sequence's visible positions are gathered from the pool into
// shared memory (as float), scored against the rows and folded into an
// online softmax: no [queries, keys] matrix exists anywhere. For 16-bit
// models at head widths up to 128, prefill_mma.cu does the same on tensor
// cores (64 rows a block, 64-key tiles); the f32 path keeps this kernel.
//
// The pools are in q's dtype or FP8 (cache_dtype): an FP8 element reads as
// code * k_scale or code * v_scale (fp8.cuh's KvVec), exactly the CPU
// backend's dequantized value, so both backends attend over the same K and V.
#include "common.cuh"
#include "fp8.cuh"

namespace ek {

constexpr int kAttnThreads = 128;
constexpr int kWarps = kAttnThreads / 32;

// Lowest position a query at `pos` attends to.
__device__ __forceinline__ int window_start(int pos, int window) {
  return window > 0 ? max(0, pos + 1 - window) : 0;
}

__device__ __forceinline__ int64_t kv_offset(const ek_attn_params &p, int seq, int kv_head,
                                             int token) {
  const int block =
      p.block_tables[static_cast<int64_t>(seq) * p.max_blocks_per_seq + token / p.block_size];
  return ((static_cast<int64_t>(block) * p.num_kv_heads + kv_head) * p.block_size +
          token % p.block_size) *
         p.head_dim;
}

inline bool valid_params(const ek_attn_params *p) {
  return p != nullptr && p->num_kv_heads > 0 && p->num_heads % p->num_kv_heads == 0 &&
         p->block_size > 0 && p->num_seqs >= 0 && aligned16(p->q) && aligned16(p->k_cache) &&
         aligned16(p->v_cache) && p->q_stride % (p->dtype == EK_DTYPE_F32 ? 4 : 8) == 0;
}

} // namespace ek

// Runs BODY with `HD` bound to a supported head_dim as a constant; any other
// returns cudaErrorInvalidValue from the enclosing launcher.
#define EK_DISPATCH_HEAD_DIM(hd, ...)                                                              \
  switch (hd) {                                                                                    \
  case 16: {                                                                                       \
    constexpr int HD = 16;                                                                         \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  case 32: {                                                                                       \
    constexpr int HD = 32;                                                                         \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  case 64: {                                                                                       \
    constexpr int HD = 64;                                                                         \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  case 80: {                                                                                       \
    constexpr int HD = 80;                                                                         \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  case 96: {                                                                                       \
    constexpr int HD = 96;                                                                         \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  case 128: {                                                                                      \
    constexpr int HD = 128;                                                                        \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  case 256: {                                                                                      \
    constexpr int HD = 256;                                                                        \
    __VA_ARGS__;                                                                                   \
  }                                                                                                \
  default:                                                                                         \
    return static_cast<int32_t>(cudaErrorInvalidValue);                                            \
  }
