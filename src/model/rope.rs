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
pub fn cos_sin_table(config: &ModelConfig, positions: usize) -> crate::Result<Vec<f32>> {
    let freqs = inv_freq(config);
    let half = freqs.len();
    let len = positions.checked_mul(2 * half).ok_or_else(|| {
        crate::Error::invalid(format!("{positions} positions overflow the rotary table"))
    })?;
    let mut table = crate::memory::try_zeroed_f32(len, "the rotary embedding table")?;
    for (pos, row) in table.chunks_mut(2 * half).enumerate() {
        for (i, &f) in freqs.iter().enumerate() {
            let angle = (pos as f32 * f) as f64;
            row[i] = angle.cos() as f32;
            row[half + i] = angle.sin() as f32;
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scaling: RopeScaling) -> ModelConfig {
        let text = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":2048,"intermediate_size":64,
            "num_hidden_layers":1,"num_attention_heads":16,"vocab_size":10,"rope_theta":500000.0}"#;
        let mut c = ModelConfig::from_json_str(text).unwrap();
        c.rope_scaling = scaling;
        c
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let plain = inv_freq(&config(RopeScaling::None));
        let (factor, low, high, orig) = (8.0, 1.0, 4.0, 8192.0);
        let scaled = inv_freq(&config(RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: orig,
        }));
        let (mut kept, mut divided, mut smoothed) = (0, 0, 0);
        for (&p, &s) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f64::consts::PI / p as f64;
            if wavelen < orig / high {
                assert_eq!(s, p, "high frequencies are kept");
                kept += 1;
            } else if wavelen > orig / low {
                assert!(
                    (s - p / factor as f32).abs() <= 1e-6 * p,
                    "low frequencies are divided by the factor"
                );
                divided += 1;
            } else {
                assert!(
                    s < p && s > p / factor as f32,
                    "the band between is interpolated"
                );
                smoothed += 1;
            }
        }
        assert!(
            kept > 0 && divided > 0 && smoothed > 0,
            "{kept} {divided} {smoothed}"
        );
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let plain = inv_freq(&config(RopeScaling::None));
        let scaled = inv_freq(&config(RopeScaling::Linear { factor: 4.0 }));
        for (p, s) in plain.iter().zip(&scaled) {
            assert_eq!(*s, p / 4.0);
        }
    }

    #[test]
    fn table_rows_are_cos_then_sin_of_position_times_frequency() {
        let c = config(RopeScaling::None);
        let freqs = inv_freq(&c);
        let table = cos_sin_table(&c, 10).unwrap();
        let half = c.head_dim / 2;
        let row = &table[7 * c.head_dim..8 * c.head_dim];
        for i in [0, 1, half - 1] {
            assert!((row[i] - (7.0 * freqs[i]).cos()).abs() < 1e-6);
            assert!((row[half + i] - (7.0 * freqs[i]).sin()).abs() < 1e-6);
        }
    }
}
