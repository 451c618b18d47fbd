//! Intel AMX tiles for the bf16 packed matmul (layout: `packed.rs`).
//!
//! `tdpbf16ps` multiplies a tile of up to 16 activation rows × 16 bf16 pairs
//! by a tile of 16 pairs × 16 output columns into 16 × 16 f32 accumulators:
//! 16 k-steps of `vdpbf16ps` work for a whole row tile in one instruction
//! (≈ 14× the AVX-512 peak measured on a Sapphire Rapids core: `cargo bench
//! --bench batched`). A panel's k-step is already the pair-interleaved row
//! that a B tile wants, so the packed panels are read in place: a B tile is
//! 16 consecutive steps of 16 of the panel's 64 columns (a 256-byte stride).
//!
//! Tiles: tmm0–3 accumulate the panel's four 16-column groups, tmm4 holds the
//! activation rows, tmm5–7 take the weight tiles in turn.
//!
//! Results differ in the last bits from the AVX-512 kernel (the hardware sums
//! the pairs of a tile differently from a chain of `vdpbf16ps`), so where AMX
//! is used it is used for every row count: a row's result still does not
//! depend on its batch (each row of a tile is computed alone, 16 steps at a
//! time in k order, from zero).
//!
//! The instructions are written with `asm!`: Rust's AMX intrinsics are not
//! stable. Linux hands out the 8 KiB tile state only to a process that asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which [`supported`] does once.

use std::arch::asm;
use std::sync::OnceLock;

use super::avx512::TileArgs;
use super::packed::PANEL;

/// Rows of activations per tile.
pub const TILE_ROWS: usize = 16;
/// bf16 pairs (k-steps of the packed layout) per tile.
pub const TILE_STEPS: usize = 16;

/// Whether the bf16 matmul runs on AMX here: the CPU has AMX-TILE and
/// AMX-BF16, Linux granted this process the tile state, and the environment
/// variable `ENGINE_CPU_AMX` is not `0` (which keeps the AVX-512 kernel, e.g.
/// to compare the two).
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        std::env::var("ENGINE_CPU_AMX").map_or(true, |v| v != "0")
            && cpu_has_amx_bf16()
            && tile_state_granted()
    })
}

fn cpu_has_amx_bf16() -> bool {
    let max_leaf = std::arch::x86_64::__cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
    amx_bf16 && amx_tile
}

#[cfg(target_os = "linux")]
fn tile_state_granted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes which extended
    // states this process may use; it reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn tile_state_granted() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads: palette 1, the C and A tiles
/// `rows` high, the B tiles 16 pairs high, every row 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(rows: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for tile in 0..8 {
            // colsb: u16 little-endian at 16 + 2·tile; rows: u8 at 48 + tile.
            c[16 + 2 * tile] = 64;
            c[48 + tile] = if tile < 5 { rows } else { TILE_STEPS } as u8;
        }
        TileConfig(c)
    }
}

/// The tile registers of one thread for the length of one parallel task:
/// configured for a number of rows on first use (and again only when that
/// changes), released on drop.
pub struct Tiles {
    rows: usize,
}

impl Tiles {
    pub fn new() -> Tiles {
        Tiles { rows: 0 }
    }

    /// # Safety
    /// [`supported`] must be true.
    unsafe fn configure(&mut self, rows: usize) {
        if self.rows != rows {
            let config = TileConfig::new(rows);
            // SAFETY: AMX is usable (the caller's contract); the config is
            // valid for palette 1 (rows ≤ 16, 64 bytes per row).
            unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
            self.rows = rows;
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        if self.rows != 0 {
            // SAFETY: tiles were configured, so AMX is usable.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }
}

/// f32 sums of a whole tile, for tiles whose rows or columns do not all go to `out`.
#[repr(C, align(64))]
struct Scratch([f32; TILE_ROWS * PANEL]);

/// `out[r, c] = Σ_s x[r, s] · w[s, c]` over bf16 pairs for `rows` rows
/// (`t.accumulate` must be false: the sums start from zero).
/// The tile multiplies `tile_rows` (≥ `rows`) rows of `x`; the rows past
/// `rows` are padding, computed and dropped.
///
/// # Safety
/// [`supported`] must be true; `t.steps` a multiple of [`TILE_STEPS`]; `t.x`
/// readable for `tile_rows` (1..=16) rows of `t.steps` pairs and `t.w` for
/// `t.steps` panel steps; `t.out` readable and writable for `rows` rows of
/// `t.cols` columns, with no other thread touching those.
pub unsafe fn bf16_tile(tiles: &mut Tiles, tile_rows: usize, rows: usize, t: &TileArgs<u32>) {
    debug_assert!(
        rows <= tile_rows && tile_rows <= TILE_ROWS && t.steps.is_multiple_of(TILE_STEPS)
    );
    let direct = rows == tile_rows && t.cols == PANEL;
    let mut scratch = std::mem::MaybeUninit::<Scratch>::uninit();
    let (c, c_stride) = if direct {
        (t.out, t.out_stride)
    } else {
        let scratch = scratch.write(Scratch([0.0; TILE_ROWS * PANEL]));
        (scratch.0.as_mut_ptr(), PANEL)
    };
    // SAFETY (whole body): AMX is usable and the bounds are the caller's
    // contract; `c` is `out` itself only when the tile's rows and 64 columns
    // all belong to `out`, and the scratch otherwise.
    unsafe {
        tiles.configure(tile_rows);
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        let (x_stride, w_stride) = (4 * t.x_stride, 4 * PANEL);
        for chunk in 0..t.steps / TILE_STEPS {
            let x = t.x.add(chunk * TILE_STEPS);
            let w = t.w.add(chunk * TILE_STEPS * 2 * PANEL);
            asm!(
                "tileloadd tmm4, [{x} + {xs}]",
                "tileloadd tmm5, [{w} + {ws}]",
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tileloadd tmm6, [{w} + {ws} + 64]",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tileloadd tmm7, [{w} + {ws} + 128]",
                "tdpbf16ps tmm2, tmm4, tmm7",
                "tileloadd tmm5, [{w} + {ws} + 192]",
                "tdpbf16ps tmm3, tmm4, tmm5",
                x = in(reg) x, xs = in(reg) x_stride,
                w = in(reg) w, ws = in(reg) w_stride,
                options(nostack, readonly),
            );
        }
        store_sums(c, c_stride);
        if !direct {
            copy_rows(c, c_stride, t.out, t.out_stride, rows, t.cols);
        }
    }
}

/// Stores tmm0–3 to the 64 columns at `c` (`stride` f32 between rows).
unsafe fn store_sums(c: *mut f32, stride: usize) {
    // SAFETY: the caller's tile bounds (configured rows × 64 columns).
    unsafe {
        asm!(
            "tilestored [{c} + {s}], tmm0",
            "tilestored [{c} + {s} + 64], tmm1",
            "tilestored [{c} + {s} + 128], tmm2",
            "tilestored [{c} + {s} + 192], tmm3",
            c = in(reg) c, s = in(reg) 4 * stride,
            options(nostack),
        );
    }
}

unsafe fn copy_rows(
    src: *const f32,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
    rows: usize,
    cols: usize,
) {
    for r in 0..rows {
        // SAFETY: both sides hold `rows` rows of `cols` values (the caller's bounds).
        unsafe {
            std::ptr::copy_nonoverlapping(src.add(r * src_stride), dst.add(r * dst_stride), cols)
        };
    }
}

#[cfg(test)]
mod tests {
    /// A CPU that reports AMX-BF16 gets the AMX kernel unless it is switched
    /// off: a refused tile-state request must not quietly fall back.
    #[test]
    fn amx_runs_where_the_cpu_has_it() {
        let switched_off = std::env::var("ENGINE_CPU_AMX").is_ok_and(|v| v == "0");
        if !super::cpu_has_amx_bf16() || switched_off {
            eprintln!("no AMX-BF16 on this CPU (or ENGINE_CPU_AMX=0): nothing to check");
            return;
        }
        assert!(
            super::supported(),
            "the CPU has AMX-BF16 but Linux refused the tile state"
        );
    }
}
