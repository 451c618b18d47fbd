//! Rotary embedding tables, computed as transformers computes them in float32
//! (inverse frequencies, then `position * inv_freq`, then cos/sin) so positions
//! far into a long prompt still agree with the reference.

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies `1 / theta^(2i/d)`, with the config's scaling applied.
pub fn inv_freq(config: &ModelConfig) -> Vec<f32> {
    let d = config.head_dim;
    let base: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (config.rope_theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    match config.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let f = f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        f
                    };
                    let medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                    if medium {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    }
                })
                .collect()
        }
    }
}

/// `[positions, head_dim]`: for each position `head_dim / 2` cosines, then as many sines.
pub fn cos_sin_table(config: &ModelConfig, positions: usize) -> Vec<f32> {
    let freqs = inv_freq(config);
    let half = freqs.len();
    let mut table = vec![0f32; positions * 2 * half];
    for (pos, row) in table.chunks_mut(2 * half).enumerate() {
        for (i, &f) in freqs.iter().enumerate() {
            let angle = (pos as f32 * f) as f64;
            row[i] = angle.cos() as f32;
            row[half + i] = angle.sin() as f32;
        }
    }
    table
}
