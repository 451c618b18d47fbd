//! One core's peak bf16 multiply-add rate, for the matmul figures to be read
//! against: a loop of independent `vdpbf16ps` (AVX-512 BF16) and one of
//! `tdpbf16ps` (AMX), on registers and tiles only (no memory traffic).

use std::arch::asm;
use std::arch::x86_64::*;
use std::hint::black_box;
use std::mem::transmute;
use std::time::Instant;

use engine::backend::cpu::matmul::packed::Bf16Kernel;

const ITERATIONS: usize = 2_000_000;

pub fn report() {
    if is_x86_feature_detected!("avx512bf16") {
        // SAFETY: the CPU has AVX-512 BF16 (checked).
        let gflops = best_of(|| unsafe { vdpbf16ps_gflops() });
        println!("peak, one core: vdpbf16ps {gflops:.0} GFLOP/s");
    }
    // `available` lists AMX only where Linux granted this process the tiles.
    if Bf16Kernel::available().contains(&Bf16Kernel::Amx) {
        // SAFETY: AMX is usable in this process (checked).
        let gflops = best_of(|| unsafe { tdpbf16ps_gflops() });
        println!("peak, one core: AMX tdpbf16ps {gflops:.0} GFLOP/s");
    }
}

fn best_of(f: impl Fn() -> f64) -> f64 {
    (0..5).map(|_| f()).fold(0.0, f64::max)
}

/// 16 independent accumulators (enough to cover the instruction's latency).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn vdpbf16ps_gflops() -> f64 {
    let a: __m512bh = transmute(_mm512_set1_epi32(black_box(0x3f80_3f80)));
    let mut acc = [_mm512_setzero_ps(); 16];
    let t = Instant::now();
    for _ in 0..ITERATIONS {
        for c in acc.iter_mut() {
            *c = _mm512_dpbf16_ps(*c, a, a);
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    black_box(acc);
    // 16 lanes × 2 products × (multiply + add) per instruction.
    (ITERATIONS * 16 * 64) as f64 / seconds / 1e9
}

/// Four independent 16 × 16 accumulator tiles fed by one A and one B tile.
unsafe fn tdpbf16ps_gflops() -> f64 {
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut config = Config([0; 64]);
    config.0[0] = 1;
    for tile in 0..8 {
        config.0[16 + 2 * tile] = 64;
        config.0[48 + tile] = 16;
    }
    let t = Instant::now();
    // SAFETY: AMX is usable (the caller's contract); the loop touches tiles only.
    unsafe {
        asm!("ldtilecfg [{}]", "tilezero tmm4", "tilezero tmm5", in(reg) config.0.as_ptr());
        for _ in 0..ITERATIONS / 4 {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tdpbf16ps tmm1, tmm4, tmm5",
                "tdpbf16ps tmm2, tmm4, tmm5",
                "tdpbf16ps tmm3, tmm4, tmm5",
                options(nostack, nomem)
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
    let seconds = t.elapsed().as_secs_f64();
    // 16 rows × 16 columns × 16 pairs × 2 products × (multiply + add).
    (ITERATIONS * 16 * 16 * 32 * 2) as f64 / seconds / 1e9
}
