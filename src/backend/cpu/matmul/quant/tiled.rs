//! The 32-wide block types (Q4_0, Q4_1, Q8_0) repacked into tiles of 16
//! weight rows for AVX-512 VNNI, as llama.cpp's CPU "repack" buffers do: one
//! 512-bit register holds 4 quant bytes of each of 16 rows, so `vpdpbusd`
//! against 4 activation bytes broadcast to every lane advances 16 outputs at
//! once. A block's 16 scales are one `vcvtph2ps`, and the float work per
//! block (scale, convert, add) is shared by 16 outputs instead of repeated for
//! each — which is what made the row-by-row kernels slow at prefill.
//!
//! Layout: for each group of 16 rows (the last padded with zero rows), records
//! of 64-byte lines, each a head line of scales and then the blocks' quant lines:
//! - Q4_1: a record per block; its head holds the 16 rows' `d` as f16 (bytes
//!   0..32) and their `m` (bytes 32..64);
//! - Q4_0 / Q8_0: a record per pair of blocks (the last alone when the count is
//!   odd); its head holds the first block's 16 `d` (bytes 0..32), then the
//!   second's, so that no byte read is padding (a head per block read 11% more
//!   bytes than the GGUF blocks for Q4_0, 6% for Q8_0);
//! - Q4_0 / Q4_1 quants: 4 lines, line `t` lane `j` = bytes `4t..4t+4` of row
//!   `j`'s 16 nibble bytes (low nibbles: values `4t..`, high: `16+4t..`);
//! - Q8_0 quants: 8 lines, line `t` lane `j` = values `4t..4t+4` of row `j`, xor
//!   0x80 (biased to u8; 128·Σq is taken back out with the activation sums).
//!
//! The K-quants (Q4_K, Q5_K, Q6_K) have their own records (`tiled_k`).
//!
//! Every output is computed by the same instructions in the same order,
//! whatever the number of rows or their grouping: batch-invariant.

use std::arch::x86_64::*;

use super::acts::{ActRow, QuantActs};
use super::tiled_k;
use crate::backend::cpu::matmul::OutPtr;
use crate::backend::cpu::pool;
use crate::backend::ggml::GgmlType;

/// Weight rows per tile: the 16 i32 lanes of a 512-bit register.
pub(super) const TILE: usize = 16;
/// Activation rows multiplied per pass over a tile's unpacked blocks.
const R: usize = 4;

/// How far ahead of the line a tile kernel reads it prefetches, in lines (4 KiB).
/// These kernels do enough work per byte that the hardware prefetcher alone
/// fell behind: a 1.1B model's Q4_K decode matmuls streamed 34 GB/s against a
/// 52–56 GB/s read sweep, and 40–54 GB/s with this (2–6 KiB ahead alike; 8 KiB
/// and more fell back).
const PREFETCH_AHEAD: usize = 64;

/// Prefetches `count` lines from `PREFETCH_AHEAD` past `lines[from]`; past the
/// end of `lines` they are the next tile's (a task's tiles are contiguous), or
/// nothing of ours, which a prefetch does not mind.
#[inline(always)]
pub(super) fn prefetch_ahead(lines: &[Line], from: usize, count: usize) {
    let at = lines.as_ptr().wrapping_add(from + PREFETCH_AHEAD);
    for t in 0..count {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(t).cast()) };
    }
}

/// One 64-byte line, so records start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [u8; 64]);

/// A matrix of Q4_0, Q4_1, Q8_0 or K-quant rows in 16-row tiles.
pub struct Tiles {
    ty: GgmlType,
    n: usize,
    blocks: usize,
    lines: Vec<Line>,
}

/// Where a 16-row group's blocks lie among its lines (see the module's layout).
#[derive(Clone, Copy)]
struct Layout {
    /// Quant lines per block (the K-quants: their whole record but the head).
    quant_lines: usize,
    /// Blocks per record: 2 where one block's scales fill half a head line.
    per_record: usize,
    blocks: usize,
}

impl Layout {
    fn of(ty: GgmlType, blocks: usize) -> Layout {
        let (quant_lines, per_record) = match ty {
            GgmlType::Q4_0 => (4, 2),
            GgmlType::Q8_0 => (8, 2),
            GgmlType::Q4_1 => (4, 1),
            _ => (tiled_k::record_lines(ty) - 1, 1),
        };
        Layout {
            quant_lines,
            per_record,
            blocks,
        }
    }

    fn record_lines(self) -> usize {
        1 + self.per_record * self.quant_lines
    }

    /// Lines of one 16-row group.
    fn group_lines(self) -> usize {
        let (full, rest) = (self.blocks / self.per_record, self.blocks % self.per_record);
        full * self.record_lines() + rest.min(1) * (1 + rest * self.quant_lines)
    }

    /// Block `b`'s head line, and the byte its 16 scales start at in it.
    fn head(self, b: usize) -> (usize, usize) {
        (
            b / self.per_record * self.record_lines(),
            32 * (b % self.per_record),
        )
    }

    /// Block `b`'s first quant line.
    fn quants(self, b: usize) -> usize {
        self.head(b).0 + 1 + b % self.per_record * self.quant_lines
    }
}

impl Tiles {
    /// `n` rows of `k` values of `ty` (`row(j)`: row `j`'s blocks) in tiles, or
    /// `None` where this CPU lacks the kernels, `ty` has none here, or the copy
    /// cannot be allocated (the row-by-row kernels then serve).
    pub fn repack<'a>(
        ty: GgmlType,
        n: usize,
        k: usize,
        row: impl Fn(usize) -> &'a [u8],
    ) -> Option<Tiles> {
        let quants_at = match ty {
            GgmlType::Q4_0 | GgmlType::Q8_0 => 2,
            GgmlType::Q4_1 => 4,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 0,
            _ => return None,
        };
        let width = ty.block_elems();
        if !super::avx512::supported() || !k.is_multiple_of(width) {
            return None;
        }
        let (blocks, bb) = (k / width, ty.block_bytes());
        let layout = Layout::of(ty, blocks);
        let len = n.div_ceil(TILE).checked_mul(layout.group_lines())?;
        let mut lines = Vec::new();
        lines.try_reserve_exact(len).ok()?;
        lines.resize(len, Line([0; 64]));
        let group_lines = layout.group_lines();
        for j in 0..n {
            let (g, lane) = (j / TILE, j % TILE);
            let group = &mut lines[g * group_lines..(g + 1) * group_lines];
            for (b, blk) in row(j).chunks_exact(bb).enumerate() {
                let (at, byte) = layout.head(b);
                if width == 256 {
                    let rl = layout.record_lines();
                    tiled_k::repack_block(ty, blk, lane, &mut group[at..at + rl]);
                    continue;
                }
                let head = &mut group[at].0[byte..];
                head[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]);
                if ty == GgmlType::Q4_1 {
                    head[32 + 2 * lane..34 + 2 * lane].copy_from_slice(&blk[2..4]);
                }
                let quants = layout.quants(b);
                for t in 0..layout.quant_lines {
                    let src = &blk[quants_at + 4 * t..quants_at + 4 * t + 4];
                    let dst = &mut group[quants + t].0[4 * lane..4 * lane + 4];
                    for (d, &q) in dst.iter_mut().zip(src) {
                        *d = if ty == GgmlType::Q8_0 { q ^ 0x80 } else { q };
                    }
                }
            }
        }
        Some(Tiles {
            ty,
            n,
            blocks,
            lines,
        })
    }

    /// `out = acts · wᵀ` for the `m` rows of `acts` (32- or 256-wide blocks, as the type's).
    pub fn matmul(&self, acts: &QuantActs, m: usize, out: &mut [f32]) {
        let width = self.ty.block_elems();
        debug_assert!(
            acts.block == width && acts.k == width * self.blocks && out.len() == m * self.n
        );
        let rows: Vec<ActRow> = (0..m).map(|i| acts.row(i)).collect();
        let ptr = OutPtr(out.as_mut_ptr());
        let layout = Layout::of(self.ty, self.blocks);
        let group_lines = layout.group_lines();
        let kind = Kind::of(self.ty);
        // Runs of consecutive tiles per task: a few tasks per thread (equal,
        // not `pool::for_each_share`: see `guided_bounds`).
        let tiles = self.n.div_ceil(TILE);
        let tasks = (rayon::current_num_threads() * 4).clamp(1, tiles);
        pool::for_each(tasks, &|task| {
            for g in task * tiles / tasks..(task + 1) * tiles / tasks {
                let records = &self.lines[g * group_lines..(g + 1) * group_lines];
                let cols = (self.n - g * TILE).min(TILE);
                let mut i = 0;
                while i < m {
                    let take = if m - i >= R { R } else { 1 };
                    let mut acc = [[0f32; TILE]; R];
                    // SAFETY: the features were checked when the tiles were made;
                    // `records` holds the group's blocks as `layout` says; every
                    // row holds 32·blocks activations (debug-asserted above, and QuantActs makes them so),
                    // in 256-wide blocks with sums of 16 for the K-quants.
                    unsafe {
                        // The first pass prefetches (see `tile`).
                        macro_rules! run {
                            ($n:expr, $first:expr) => {
                                if width == 256 {
                                    let (a, acc) = (&rows[i..i + $n], &mut acc[..$n]);
                                    tiled_k::tile::<$n, $first>(self.ty, records, a, acc)
                                } else {
                                    let (a, acc) = (&rows[i..i + $n], &mut acc[..$n]);
                                    tile::<$n, $first>(records, layout, kind, a, acc)
                                }
                            };
                        }
                        match (take == R, i == 0) {
                            (true, true) => run!(R, true),
                            (true, false) => run!(R, false),
                            (false, true) => run!(1, true),
                            (false, false) => run!(1, false),
                        }
                    }
                    for (r, a) in acc[..take].iter().enumerate() {
                        for (c, &v) in a[..cols].iter().enumerate() {
                            // SAFETY: columns g·16.. belong to this task alone; (i + r, col) < (m, n).
                            unsafe { *ptr.at((i + r) * self.n + g * TILE + c) = v };
                        }
                    }
                    i += take;
                }
            }
        });
    }
}

/// What a tile's integer sums need besides the scale.
#[derive(Clone, Copy)]
struct Kind {
    /// Added to every stored quant (Q4_0: 8, Q8_0's bias: 128): `offset·Σq` comes off.
    offset: i32,
    /// Q4_1's per-row `m`: `m·da·Σq` goes on.
    min: bool,
    /// Nibbles (two values per byte) or bytes.
    nibbles: bool,
}

impl Kind {
    fn of(ty: GgmlType) -> Kind {
        match ty {
            GgmlType::Q4_0 => Kind {
                offset: 8,
                min: false,
                nibbles: true,
            },
            GgmlType::Q4_1 => Kind {
                offset: 0,
                min: true,
                nibbles: true,
            },
            _ => Kind {
                offset: 128,
                min: false,
                nibbles: false,
            },
        }
    }
}

/// The 8 registers of a block's quants (u8 per value, 16 rows × 4 values
/// each; `$quants` from the block's first quant line) and the activation
/// offset each pairs with. A macro: as an `#[inline]` function LLVM stopped
/// inlining it into `tile`, and the call cost prefill a third of its speed.
macro_rules! unpack {
    ($quants:expr, $nibbles:expr) => {{
        let quants: &[Line] = $quants;
        let load = |t: usize| _mm512_load_si512(quants[t].0.as_ptr().cast());
        if $nibbles {
            let low4 = _mm512_set1_epi8(0x0F);
            let mut w = [_mm512_setzero_si512(); 8];
            for t in 0..4 {
                let raw = load(t);
                w[2 * t] = _mm512_and_si512(raw, low4);
                w[2 * t + 1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
            }
            (w, [0, 16, 4, 20, 8, 24, 12, 28])
        } else {
            (std::array::from_fn(load), [0, 4, 8, 12, 16, 20, 24, 28])
        }
    }};
}

/// `acc[r][j] = Σ_b w_j(b) · a_r(b)` for the tile's 16 rows `j` and the `N`
/// activation rows: each row by the same operations whatever `N` is.
/// `PREFETCH` on the first pass over the tile (the one that reads it from
/// memory; later passes find it in cache, where prefetching cost prefill ~8%:
/// a constant, so that those passes compile as if it were not there).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn tile<const N: usize, const PREFETCH: bool>(
    lines: &[Line],
    layout: Layout,
    kind: Kind,
    a: &[ActRow],
    acc: &mut [[f32; TILE]],
) {
    let mut sum = [_mm512_setzero_ps(); N];
    // Block `b`'s head line and byte, and its first quant line, advanced block
    // by block rather than recomputed (`Layout::head` divides).
    let (mut line, mut byte, mut quants) = (0, 0, 1);
    for b in 0..layout.blocks {
        debug_assert_eq!(((line, byte), quants), (layout.head(b), layout.quants(b)));
        let head = lines[line].0.as_ptr();
        // SAFETY: the head line holds the block's 16 f16 `d` from `byte` (0 or
        // 32) and, for Q4_1 (a block a record), their 16 `m` from byte 32.
        let dw = unsafe { _mm512_cvtph_ps(_mm256_load_si256(head.add(byte).cast())) };
        let mw = if kind.min {
            // SAFETY: as above.
            unsafe { _mm512_cvtph_ps(_mm256_load_si256(head.add(32).cast())) }
        } else {
            _mm512_setzero_ps()
        };
        // The block's lines: its head (when it is the record's first) and quants.
        if PREFETCH {
            let first = if byte == 0 { line } else { quants };
            prefetch_ahead(lines, first, quants + layout.quant_lines - first);
        }
        // SAFETY: these are the block's quant lines.
        let (w, offs): ([__m512i; 8], [usize; 8]) =
            unsafe { unpack!(&lines[quants..], kind.nibbles) };
        if byte + 32 < 32 * layout.per_record {
            (byte, quants) = (byte + 32, quants + layout.quant_lines);
        } else {
            line += layout.record_lines();
            (byte, quants) = (0, line + 1);
        }
        for r in 0..N {
            let ar = a[r];
            let q = ar.qs[32 * b..32 * b + 32].as_ptr();
            // SAFETY: each offset + 4 ≤ 32, inside the block's activations.
            let x = |i: usize| unsafe {
                _mm512_set1_epi32(q.add(offs[i]).cast::<i32>().read_unaligned())
            };
            // Two chains, so consecutive vpdpbusd do not wait on each other.
            let mut lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], x(0));
            let mut hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], x(1));
            for i in (2..8).step_by(2) {
                lo = _mm512_dpbusd_epi32(lo, w[i], x(i));
                hi = _mm512_dpbusd_epi32(hi, w[i + 1], x(i + 1));
            }
            let (da, s) = (ar.d[b], ar.sums[b]);
            let isum =
                _mm512_sub_epi32(_mm512_add_epi32(lo, hi), _mm512_set1_epi32(kind.offset * s));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da));
            sum[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), sum[r]);
            if kind.min {
                sum[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(da * s as f32), sum[r]);
            }
        }
    }
    for r in 0..N {
        // SAFETY: acc[r] is 16 f32.
        unsafe { _mm512_storeu_ps(acc[r].as_mut_ptr(), sum[r]) };
    }
}
