//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
//! SC'11), the counter-based generator both backends draw from, so a seeded
//! request samples the same tokens on the CPU and on CUDA (csrc/sampling.cu's
//! `philox_uniform` is the same function).
//!
//! A draw is addressed, not stateful: key = the request's seed (low word, high
//! word), counter = (draw lo, draw hi, stream lo, stream hi), where the stream is
//! the sequence's and the draw its number of draws so far. The uniform is the
//! first two output words as a 64-bit integer (word 1 high) shifted to 53 bits.

const M0: u64 = 0xD251_1F53;
const M1: u64 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Ten rounds of Philox4x32 over `ctr` with `key`.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for _ in 0..10 {
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The uniform double in [0, 1) of draw `counter` of stream `stream` under `seed`.
pub fn philox_uniform(seed: u64, stream: u64, counter: u64) -> f64 {
    let c = philox4x32_10(
        [
            counter as u32,
            (counter >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    );
    let bits = (c[1] as u64) << 32 | c[0] as u64;
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_random123s_known_answers() {
        // Random123 1.09, examples/kat_vectors, "philox4x32 10".
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniform_follows_the_kernels_bit_layout() {
        // Counter (draw lo, draw hi, stream lo, stream hi), key (seed lo, seed hi).
        let (seed, stream, counter) = (
            0x299f31d0_a4093822,
            0x03707344_13198a2e,
            0x85a308d3_243f6a88,
        );
        let bits = (0x94fdcceb_u64 << 32) | 0xd16cfe09;
        let want = (bits >> 11) as f64 / 9007199254740992.0;
        assert_eq!(philox_uniform(seed, stream, counter), want);
        // All-zero inputs: word 0 = 0x6627e8d5, word 1 = 0xe169c58d.
        let bits = (0xe169c58d_u64 << 32) | 0x6627e8d5;
        assert_eq!(
            philox_uniform(0, 0, 0),
            (bits >> 11) as f64 / 9007199254740992.0
        );
        let u: Vec<f64> = (0..1000).map(|c| philox_uniform(7, 1, c)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
    }
}
