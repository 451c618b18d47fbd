//! vLLM's per-tensor KV cache scales: an FP8 KV pool stores `k / k_scale` and
//! `v / v_scale`. A checkpoint may carry them under the names vLLM reads
//! (`self_attn.k_scale`, ModelOpt's `self_attn.k_proj.k_scale`,
//! compressed-tensors' `self_attn.k_proj.output_scale`, the deprecated shared
//! `self_attn.kv_scale`); where it does not, a scale is 1.0, as in vLLM.

use half::{bf16, f16};

use super::weights::TensorSource;
use crate::backend::{DType, HostTensor};
use crate::error::{Error, Result};

/// Layer `layer`'s `(k_scale, v_scale)`.
pub fn layer_kv_scales(source: &dyn TensorSource, layer: usize) -> Result<(f32, f32)> {
    let p = format!("model.layers.{layer}.self_attn");
    let names = |x: &str| {
        [
            format!("{p}.{x}_scale"),
            format!("{p}.{x}_proj.{x}_scale"),
            format!("{p}.{x}_proj.output_scale"),
            format!("{p}.kv_scale"),
        ]
    };
    Ok((
        first_scale(source, &names("k"))?,
        first_scale(source, &names("v"))?,
    ))
}

/// The first of `names` the source holds, as a positive finite scale; 1.0 if none.
fn first_scale(source: &dyn TensorSource, names: &[String]) -> Result<f32> {
    let Some(name) = names.iter().find(|n| source.contains(n)) else {
        return Ok(1.0);
    };
    // A scalar, stored with shape [] or [1].
    let tensor = source.get(name, &[]).or_else(|_| source.get(name, &[1]))?;
    let scale = scalar_value(&tensor)?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::Model(format!(
            "`{name}` is {scale}: a KV cache scale must be a positive finite number"
        )));
    }
    Ok(scale)
}

fn scalar_value(t: &HostTensor) -> Result<f32> {
    let bytes = t.bytes.as_slice();
    let width = t.dtype.size_in_bytes();
    if t.quant.is_some() || bytes.len() != width {
        return Err(Error::Model(format!(
            "`{}` is not one float32, float16 or bfloat16 value",
            t.name
        )));
    }
    Ok(match t.dtype {
        DType::F32 => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        DType::F16 => f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
        DType::BF16 => bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
    })
}
