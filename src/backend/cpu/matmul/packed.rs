//! Weights repacked into column panels for the AVX-512 kernels, and the loop
//! nest that runs those kernels over a matmul.
//!
//! A panel is [`PANEL`] consecutive output columns (weight rows), stored
//! k-step by k-step: for bf16 a step is one pair of k (`vdpbf16ps` multiplies
//! pairs), 64 columns × 2 values; for f16 a step is one k, 64 values. Columns
//! past `n`, the odd k of an odd `k` and, for bf16, the steps that round the
//! count up to a whole AMX tile (16 pairs) are zero. A kernel thus reads each panel
//! front to back, 256 (bf16) or 128 (f16) bytes per step, and keeps 4 × 16
//! output columns of up to [`MR`] rows in registers.
//!
//! Batch invariance: output `(i, j)` is always the same accumulator lane fed the
//! same steps in k order, starting from zero; blocking over k spills and
//! reloads that accumulator exactly (f32 to memory and back), and splitting rows
//! into tiles or columns into tasks only changes which call computes it. So a
//! row gets bitwise the same result for every `m`.

use half::{bf16, f16};
use rayon::prelude::*;

use super::OutPtr;
use super::{amx, avx512};
use crate::backend::cpu::pool;

/// Output columns per panel: four AVX-512 registers of f32.
pub const PANEL: usize = 64;
/// Rows per register tile: 6 rows × 4 registers = 24 accumulators of the 32.
pub const MR: usize = 6;
/// k-steps per block on the many-row path: the 16 KiB (bf16) or 8 KiB (f16)
/// of panel they span stay in L1 while every row tile uses them.
const KC: usize = 64;
/// Bytes of activations a row block may take (they are re-read from L2 once per panel).
const ROW_BLOCK_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKind {
    Bf16,
    F16,
}

pub struct PackedMatrix {
    kind: PackedKind,
    /// Output features (weight rows).
    n: usize,
    /// Input features (weight columns).
    k: usize,
    /// The panels, one after another; bf16 or f16 bits.
    data: Vec<u16>,
}

impl PackedMatrix {
    /// Whether this CPU runs the bf16 kernel (AVX-512F + AVX-512 BF16).
    pub fn bf16_supported() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// Whether this CPU runs the f16 kernel (AVX-512F, which converts f16).
    pub fn f16_supported() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// Packs the row-major `[n, k]` bf16 matrix `w`; `None` on CPUs without the
    /// bf16 kernel (so a bf16 `PackedMatrix` exists only where it can run).
    pub fn pack_bf16(w: &[bf16], n: usize, k: usize) -> Option<PackedMatrix> {
        if !PackedMatrix::bf16_supported() {
            return None;
        }
        let mut p = PackedMatrix::zeroed(PackedKind::Bf16, n, k);
        let (steps, panel_len) = (p.steps(), p.panel_len());
        p.data
            .par_chunks_mut(panel_len)
            .enumerate()
            .for_each(|(panel, dst)| {
                for c in 0..PANEL.min(n - panel * PANEL) {
                    let row = &w[(panel * PANEL + c) * k..][..k];
                    for (kk, v) in row.iter().enumerate() {
                        dst[(kk / 2) * 2 * PANEL + 2 * c + kk % 2] = v.to_bits();
                    }
                }
                debug_assert_eq!(dst.len(), steps * 2 * PANEL);
            });
        Some(p)
    }

    /// Packs the row-major `[n, k]` f16 matrix `w`; `None` on CPUs without the
    /// f16 kernel.
    pub fn pack_f16(w: &[f16], n: usize, k: usize) -> Option<PackedMatrix> {
        if !PackedMatrix::f16_supported() {
            return None;
        }
        let mut p = PackedMatrix::zeroed(PackedKind::F16, n, k);
        let panel_len = p.panel_len();
        p.data
            .par_chunks_mut(panel_len)
            .enumerate()
            .for_each(|(panel, dst)| {
                for c in 0..PANEL.min(n - panel * PANEL) {
                    let row = &w[(panel * PANEL + c) * k..][..k];
                    for (kk, v) in row.iter().enumerate() {
                        dst[kk * PANEL + c] = v.to_bits();
                    }
                }
            });
        Some(p)
    }

    fn zeroed(kind: PackedKind, n: usize, k: usize) -> PackedMatrix {
        let mut p = PackedMatrix {
            kind,
            n,
            k,
            data: Vec::new(),
        };
        p.data = vec![0; p.panels() * p.panel_len()];
        p
    }

    pub fn kind(&self) -> PackedKind {
        self.kind
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// k-steps per panel: pairs of k (whole AMX tiles of them) for bf16,
    /// single k for f16.
    fn steps(&self) -> usize {
        match self.kind {
            PackedKind::Bf16 => self.k.div_ceil(2).next_multiple_of(amx::TILE_STEPS),
            PackedKind::F16 => self.k,
        }
    }

    /// u16 values per k-step of a panel.
    fn step_len(&self) -> usize {
        match self.kind {
            PackedKind::Bf16 => 2 * PANEL,
            PackedKind::F16 => PANEL,
        }
    }

    fn panel_len(&self) -> usize {
        self.steps() * self.step_len()
    }

    /// Element `(row, col)` of the `[n, k]` matrix.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        let (panel, c) = (row / PANEL, row % PANEL);
        let base = panel * self.panel_len();
        match self.kind {
            PackedKind::Bf16 => {
                let i = base + (col / 2) * 2 * PANEL + 2 * c + col % 2;
                bf16::from_bits(self.data[i]).to_f32()
            }
            PackedKind::F16 => f16::from_bits(self.data[base + col * PANEL + c]).to_f32(),
        }
    }

    /// Row `row` of the `[n, k]` matrix as f32 into `out` (`k` values).
    pub fn read_row_f32(&self, row: usize, out: &mut [f32]) {
        for (col, o) in out[..self.k].iter_mut().enumerate() {
            *o = self.get(row, col);
        }
    }
}

/// The kernel family of a bf16 matmul. Where AMX runs it runs every bf16
/// matmul, whatever the number of rows (see `amx.rs` on batch invariance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    Avx512,
    Amx,
}

impl Bf16Kernel {
    /// AMX where the CPU and OS run it (`amx::supported`), AVX-512 otherwise.
    pub fn best() -> Bf16Kernel {
        if amx::supported() {
            Bf16Kernel::Amx
        } else {
            Bf16Kernel::Avx512
        }
    }

    /// Every family this machine runs, the best first.
    pub fn available() -> Vec<Bf16Kernel> {
        let mut kernels = vec![Bf16Kernel::Avx512];
        if amx::supported() {
            kernels.insert(0, Bf16Kernel::Amx);
        }
        kernels
    }
}

/// `out = x · wᵀ` for the `m` rows of `x` (`k > 0`).
pub fn matmul(x: &[f32], m: usize, w: &PackedMatrix, out: &mut [f32]) {
    matmul_with(x, m, w, out, Bf16Kernel::best());
}

/// As [`matmul`], with a bf16 matrix multiplied by `bf16` (which must be
/// available: [`Bf16Kernel::available`]).
pub fn matmul_with(x: &[f32], m: usize, w: &PackedMatrix, out: &mut [f32], bf16: Bf16Kernel) {
    if m == 0 || w.n == 0 {
        return;
    }
    match (w.kind, bf16) {
        (PackedKind::Bf16, Bf16Kernel::Avx512) => bf16_avx512(x, m, w, out),
        (PackedKind::Bf16, Bf16Kernel::Amx) => {
            assert!(
                amx::supported(),
                "the AMX kernel was asked for where it does not run"
            );
            bf16_amx(x, m, w, out);
        }
        (PackedKind::F16, _) => f16_avx512(x, m, w, out),
    }
}

fn bf16_avx512(x: &[f32], m: usize, w: &PackedMatrix, out: &mut [f32]) {
    let ptr = OutPtr(out.as_mut_ptr());
    let x_stride = w.steps();
    // SAFETY: bf16 matrices are packed only on CPUs with AVX-512 BF16
    // (`pack_bf16` checks).
    let xb = unsafe { avx512::round_to_bf16_pairs(x, (m, w.k), (m, x_stride)) };
    run(m, w, x_stride * 4, |t: Tile| {
        let tile = tile_args(w, &xb, x_stride, ptr, t);
        // SAFETY: the CPU has AVX-512 BF16 (`pack_bf16` checked); `x` holds
        // `rows` rows of `x_stride` pairs from `step` on, `w` holds `steps`
        // steps of the panel, and the tile of `out` (rows × cols from the
        // panel's first column) is in bounds and owned by this task alone.
        unsafe { avx512::bf16_tile(t.rows, &tile) }
    });
}

fn f16_avx512(x: &[f32], m: usize, w: &PackedMatrix, out: &mut [f32]) {
    let ptr = OutPtr(out.as_mut_ptr());
    let k = w.k;
    run(m, w, k * 4, |t: Tile| {
        let tile = tile_args(w, x, k, ptr, t);
        // SAFETY: as for bf16, with AVX-512F (`pack_f16` checked) and `x` rows
        // of `k` f32.
        unsafe { avx512::f16_tile(t.rows, &tile) }
    });
}

/// The bf16 matmul on AMX tiles, each tile call over the whole of k (its sums
/// stay in the tile registers: blocking k, which stores and reloads them,
/// measured 10–15% slower at 32–128 rows). Up to 16 rows the tiles are as
/// high as the rows; past that every tile is 16 rows, over activations padded
/// with zero rows.
fn bf16_amx(x: &[f32], m: usize, w: &PackedMatrix, out: &mut [f32]) {
    let ptr = OutPtr(out.as_mut_ptr());
    let steps = w.steps();
    // Two rows at least: a one-row tile runs at 0.8× the AVX-512 decode kernel,
    // a two-row one at its speed (`cargo bench --bench batched`).
    let tile_rows = m.clamp(2, amx::TILE_ROWS);
    let padded_rows = m.next_multiple_of(tile_rows);
    // SAFETY: AMX BF16 CPUs have AVX-512 BF16 (Sapphire Rapids on).
    let xb = unsafe { avx512::round_to_bf16_pairs(x, (m, w.k), (padded_rows, steps)) };
    let row_block = (ROW_BLOCK_BYTES / (steps * 4)).max(tile_rows) / tile_rows * tile_rows;
    pool::for_each_share(w.panels(), &|panels| {
        let mut tiles = amx::Tiles::new();
        for r_block in (0..m).step_by(row_block) {
            let r_end = (r_block + row_block).min(m);
            for panel in panels.clone() {
                for row in (r_block..r_end).step_by(tile_rows) {
                    let rows = tile_rows.min(m - row);
                    let t = Tile {
                        panel,
                        row,
                        rows,
                        step: 0,
                        steps,
                    };
                    let tile = tile_args(w, &xb, steps, ptr, t);
                    // SAFETY: AMX runs here (`matmul_with` checked); `steps` is
                    // a multiple of 16 (the panel's steps are); `xb` holds
                    // `tile_rows` rows from `row` on (padded to a multiple of
                    // them); the rest as in `bf16_avx512`.
                    unsafe { amx::bf16_tile(&mut tiles, tile_rows, rows, &tile) }
                }
            }
        }
    });
}

/// The kernel arguments of tile `t` over activations `xb` (`x_stride`
/// elements a row: bf16 pairs, or f32 for an f16 matrix).
fn tile_args<X>(
    w: &PackedMatrix,
    xb: &[X],
    x_stride: usize,
    out: OutPtr,
    t: Tile,
) -> avx512::TileArgs<X> {
    avx512::TileArgs {
        x: xb[t.row * x_stride + t.step..].as_ptr(),
        x_stride,
        w: w.data[t.panel * w.panel_len() + t.step * w.step_len()..].as_ptr(),
        steps: t.steps,
        out: out.at(t.row * w.n + t.panel * PANEL),
        out_stride: w.n,
        cols: PANEL.min(w.n - t.panel * PANEL),
        accumulate: t.step > 0,
    }
}

/// One kernel call: rows `row..row + rows` × the panel's columns, k-steps
/// `step..step + steps`.
#[derive(Clone, Copy)]
struct Tile {
    panel: usize,
    row: usize,
    rows: usize,
    step: usize,
    steps: usize,
}

/// Runs `kernel` over every tile of the matmul, columns split across threads.
/// `row_bytes` is the size of one row of the kernel's activations.
fn run(m: usize, w: &PackedMatrix, row_bytes: usize, kernel: impl Fn(Tile) + Sync) {
    let steps = w.steps();
    // Few rows: one register tile covers them, the whole k in one go; each
    // weight byte is read once, straight from memory.
    let few_rows = m <= MR;
    let kc = if few_rows { steps } else { KC };
    let row_block = (ROW_BLOCK_BYTES / row_bytes.max(1)).max(MR) / MR * MR;
    pool::for_each_share(w.panels(), &|panels| {
        for r_block in (0..m).step_by(row_block) {
            let r_end = (r_block + row_block).min(m);
            let tiles = row_tiles(r_end - r_block);
            for panel in panels.clone() {
                for step in (0..steps).step_by(kc) {
                    for (row, rows) in tiles.clone() {
                        kernel(Tile {
                            panel,
                            row: r_block + row,
                            rows,
                            step,
                            steps: kc.min(steps - step),
                        });
                    }
                }
            }
        }
    });
}

/// `(first row, rows)` of the register tiles that cover `m` rows: as few tiles
/// as [`MR`] allows, their sizes within one of each other (7 rows are 4 + 3, not
/// 6 + 1: a one-row tile has only 4 independent accumulators, too few to hide
/// the latency of `vdpbf16ps`). Which tile a row lands in does not change its
/// result (see the module's note on batch invariance).
pub(super) fn row_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
    let tiles = m.div_ceil(MR).max(1);
    (0..tiles).map(move |t| {
        let (start, end) = (t * m / tiles, (t + 1) * m / tiles);
        (start, end - start)
    })
}
