//! Keys into lanes: a chunk of [`LANES`] key rows transposed so that each
//! position's score is its own SIMD lane.

use super::LANES;

/// `out[d][l] = rows[l][d]`: a chunk of keys into lanes.
pub(super) fn transpose(rows: &[&[f32]; LANES], out: &mut [[f32; LANES]]) {
    for (l, row) in rows.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(*row) {
            o[l] = v;
        }
    }
}

/// [`transpose`] in 16 × 16 register blocks: four rounds that each swap the
/// off-diagonal sub-blocks (8 × 8, then 4 × 4, 2 × 2, 1 × 1) of every block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_avx512(rows: &[&[f32]; LANES], out: &mut [[f32; LANES]]) {
    use std::arch::x86_64::*;
    /// For rows i (low) and i + b (high) of a round with sub-blocks of `b`:
    /// the indices into (low, high) that make the new low and high rows.
    const fn swap_indices(b: usize) -> [[i32; 16]; 2] {
        let mut idx = [[0; 16]; 2];
        let mut c = 0;
        while c < 16 {
            let first_half = c % (2 * b) < b;
            idx[0][c] = if first_half { c } else { 16 + c - b } as i32;
            idx[1][c] = if first_half { c + b } else { 16 + c } as i32;
            c += 1;
        }
        idx
    }
    const ROUNDS: [[[i32; 16]; 2]; 4] = [
        swap_indices(8),
        swap_indices(4),
        swap_indices(2),
        swap_indices(1),
    ];
    /// One round, on sub-blocks of `B`: constant indices throughout, so the
    /// 16 rows stay in registers (a loop over a filtered range left them on
    /// the stack).
    #[inline(always)]
    unsafe fn round<const B: usize>(r: &mut [__m512; LANES], idx: &[[i32; 16]; 2]) {
        // SAFETY: reads 16 i32 from each 16-element array.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_si512(idx[0].as_ptr().cast()),
                _mm512_loadu_si512(idx[1].as_ptr().cast()),
            )
        };
        for i in 0..LANES - B {
            if i % (2 * B) < B {
                let (a, c) = (r[i], r[i + B]);
                r[i] = _mm512_permutex2var_ps(a, lo, c);
                r[i + B] = _mm512_permutex2var_ps(a, hi, c);
            }
        }
    }
    let hd = out.len();
    let mut d0 = 0;
    while d0 + LANES <= hd {
        let mut r = [_mm512_setzero_ps(); LANES];
        for (r, row) in r.iter_mut().zip(rows) {
            // SAFETY: `row` has `hd` values and d0 + 16 <= hd.
            *r = unsafe { _mm512_loadu_ps(row.as_ptr().add(d0)) };
        }
        // SAFETY (each round): AVX-512F, as this function.
        unsafe {
            round::<8>(&mut r, &ROUNDS[0]);
            round::<4>(&mut r, &ROUNDS[1]);
            round::<2>(&mut r, &ROUNDS[2]);
            round::<1>(&mut r, &ROUNDS[3]);
        }
        for (o, r) in out[d0..d0 + LANES].iter_mut().zip(r) {
            // SAFETY: `o` is 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), r) };
        }
        d0 += LANES;
    }
    for (d, o) in out.iter_mut().enumerate().skip(d0) {
        for (o, row) in o.iter_mut().zip(rows) {
            *o = row[d];
        }
    }
}
