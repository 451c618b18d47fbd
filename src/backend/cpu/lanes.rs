//! Reductions written lane by lane, so that a loop of them vectorizes in any
//! SIMD width with the same result, and [`avx512_dispatch`] to run such loops
//! in an AVX-512 build where the CPU has it.

/// `avx512_dispatch!(/// docs  pub fn name(a: A, b: B) -> R => body);` defines
/// `name`, which calls `body` (an `#[inline(always)]` fn of the same
/// arguments) from a copy compiled with AVX-512F where the CPU reports it,
/// and from the baseline build otherwise. Only the width changes, so a body
/// written lane by lane gives the same bits either way.
macro_rules! avx512_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected at run time.
                return unsafe { avx512($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use avx512_dispatch;

/// Independent partial results: one AVX-512 register of f32.
const LANES: usize = 16;

/// The largest value (NaNs ignored, as by `f32::max`; -inf for none), found
/// lane by lane: a maximum does not depend on the order it is taken in.
#[inline(always)]
pub fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    let tail = chunks.remainder().iter();
    tail.chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

avx512_dispatch!(
    /// How many of `values` are greater than `than` (NaNs are not).
    pub fn count_greater(values: &[f32], than: f32) -> usize => count_greater_lanes
);

/// Counted in u32 lanes: a usize count (`filter().count()`) vectorized two
/// entries at a time.
#[inline(always)]
fn count_greater_lanes(values: &[f32], than: f32) -> usize {
    let mut lanes = [0u32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (n, &v) in lanes.iter_mut().zip(chunk) {
            *n += u32::from(v > than);
        }
    }
    let tail = chunks.remainder().iter().filter(|&&v| v > than).count();
    // Each lane counts at most 1/16 of a slice's length, which fits a u32
    // for any vocabulary.
    lanes.iter().map(|&n| n as usize).sum::<usize>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the plain iterator forms, over lengths around the lane width
    /// and rows with NaN and infinities.
    #[test]
    fn reductions_match_the_plain_loops() {
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0];
        for len in [0usize, 1, 15, 16, 17, 100, 1000] {
            for special in specials {
                let values: Vec<f32> = (0..len)
                    .map(|i| match i % 7 {
                        3 => special,
                        _ => ((i * 37) % 101) as f32 - 50.0,
                    })
                    .collect();
                let plain_max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(
                    max_of(&values).to_bits(),
                    plain_max.to_bits(),
                    "{len} {special}"
                );
                for than in [-50.0, 0.0, 3.5, 50.0, f32::NEG_INFINITY, f32::NAN] {
                    let plain = values.iter().filter(|&&v| v > than).count();
                    assert_eq!(
                        count_greater(&values, than),
                        plain,
                        "{len} {special} {than}"
                    );
                }
            }
        }
    }
}
