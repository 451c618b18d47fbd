//! The memory roofline of decode, shared by the end-to-end benches: every
//! decode step reads every weight once, so its best time is the weight bytes
//! per token over the read bandwidth measured in the same process.

use std::time::Instant;

use engine::backend::Backend;
use engine::model::Model;
use rayon::prelude::*;

/// Bytes of weights one decode step reads: every matrix once (the LM head
/// included), one embedding row, the norm weights. `fp8`: the projections
/// are FP8 (`--quantization fp8`: a byte a weight and an f32 scale a row).
pub fn weight_bytes_per_token<B: Backend>(model: &Model<B>, fp8: bool) -> f64 {
    let c = &model.config;
    let elem = match model.dtype {
        engine::backend::DType::F32 => 4.0,
        _ => 2.0,
    };
    let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let q = c.num_heads * hd;
    let kv = c.num_kv_heads * hd;
    let per_layer = h * (q + 2 * kv) + q * h + 2 * inter * h + inter * h;
    let projections = (c.num_layers * per_layer) as f64;
    let projection_bytes = if fp8 {
        let rows_per_layer = q + 2 * kv + h + 2 * inter + h;
        projections + 4.0 * (c.num_layers * rows_per_layer) as f64
    } else {
        projections * elem
    };
    // The LM head and one embedding row; norm weights are held in f32.
    let norms = (2 * c.num_layers + 1) * h * 4;
    projection_bytes + ((c.vocab_size + 1) * h) as f64 * elem + norms as f64
}

const BANDWIDTH_BYTES: usize = 1 << 30;

/// Buffers for measuring memory bandwidth with every thread, kept for the
/// whole run so each measurement touches memory that is already mapped.
pub struct Roofline {
    src: Vec<u64>,
    dst: Vec<u64>,
}

impl Roofline {
    pub fn new() -> Roofline {
        let src: Vec<u64> = (0..BANDWIDTH_BYTES as u64 / 8).collect();
        let dst = vec![1u64; src.len()];
        Roofline { src, dst }
    }

    /// The better of two passes, in GB/s, over 1 GiB: copying (bytes copied,
    /// not bytes moved) and reading (a wrapping sum the compiler vectorizes).
    pub fn measure(&mut self) -> (f64, f64) {
        let chunk = self.src.len() / (4 * rayon::current_num_threads());
        let gbps = |t: Instant| BANDWIDTH_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9;
        let (mut copy, mut read) = (0f64, 0f64);
        for _ in 0..2 {
            let t = Instant::now();
            self.dst
                .par_chunks_mut(chunk)
                .zip(self.src.par_chunks(chunk))
                .for_each(|(d, s)| d.copy_from_slice(s));
            copy = copy.max(gbps(t));
            std::hint::black_box(&self.dst);
            let t = Instant::now();
            let sum = self
                .src
                .par_chunks(chunk)
                .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                .reduce(|| 0, u64::wrapping_add);
            read = read.max(gbps(t));
            std::hint::black_box(sum);
        }
        (copy, read)
    }
}
