//! Random weights for a model that has only its config.json (vLLM's
//! `--load-format dummy`): benchmarks of 7B/8B shapes need no 16 GB file on
//! the machine that runs them. As vLLM's dummy loader, every value is uniform
//! in [-1e-3, 1e-3]; here a value depends only on the seed, the tensor's name
//! and its index, so every rank of a tensor-parallel group, and every run,
//! sees the same weights.

use rayon::prelude::*;

use super::weights::TensorSource;
use crate::backend::{DType, HostTensor, TensorBytes};
use crate::error::Result;
use crate::memory::try_zeroed;

/// vLLM's range for dummy weights.
const SCALE: f32 = 1e-3;
/// Values generated per parallel task.
const CHUNK: usize = 1 << 16;

/// Every tensor a model asks for, made up on the spot (f32).
pub struct DummyWeights {
    pub seed: u64,
}

impl TensorSource for DummyWeights {
    /// The parameters a checkpoint of the config would hold, and nothing
    /// optional (no KV cache or FP8 scales: those keep their defaults).
    fn contains(&self, name: &str) -> bool {
        name.ends_with(".weight") || name.ends_with(".bias")
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let bytes_len = numel.and_then(|n| n.checked_mul(4)).unwrap_or(usize::MAX);
        let mut bytes = try_zeroed::<u8>(bytes_len, name)?;
        let key = self.seed ^ fnv1a(name.as_bytes());
        bytes
            .par_chunks_mut(4 * CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                for (i, value) in out.chunks_exact_mut(4).enumerate() {
                    let index = (chunk * CHUNK + i) as u64;
                    value.copy_from_slice(&uniform(key, index).to_le_bytes());
                }
            });
        Ok(HostTensor {
            name: name.to_string(),
            dtype: DType::F32,
            shape: shape.to_vec(),
            bytes: TensorBytes::Owned(bytes),
            quant: None,
            fp8_scales: None,
        })
    }
}

/// A value uniform in [-SCALE, SCALE) for (`key`, `index`).
fn uniform(key: u64, index: u64) -> f32 {
    let bits = splitmix64(key.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    // 24 random bits: every value exactly representable in f32.
    let unit = (bits >> 40) as f32 / (1u32 << 24) as f32;
    (2.0 * unit - 1.0) * SCALE
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &HostTensor) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(t.bytes.as_slice())
    }

    #[test]
    fn weights_are_small_varied_and_the_same_every_time() {
        let source = DummyWeights { seed: 0 };
        let a = source.get("model.norm.weight", &[3, 70_000]).unwrap();
        let v = values(&a);
        assert_eq!(v.len(), 210_000);
        assert!(v.iter().all(|x| x.abs() <= SCALE));
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 1e-5, "mean {mean}");
        let distinct: std::collections::HashSet<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert!(distinct.len() > 200_000, "{} distinct", distinct.len());
        assert_eq!(
            v,
            values(&source.get("model.norm.weight", &[3, 70_000]).unwrap())
        );
        // Another name or seed: other values.
        assert_ne!(
            v,
            values(&source.get("lm_head.weight", &[3, 70_000]).unwrap())
        );
        let other = DummyWeights { seed: 1 };
        assert_ne!(
            v,
            values(&other.get("model.norm.weight", &[3, 70_000]).unwrap())
        );
    }

    #[test]
    fn a_shape_beyond_memory_is_an_error() {
        let source = DummyWeights { seed: 0 };
        assert!(source.get("huge", &[usize::MAX / 2, 4]).is_err());
    }
}
