//! A GGUF file as a [`TensorSource`]: Hugging Face tensor names mapped to llama.cpp's
//! (`model.layers.N.self_attn.q_proj.weight` -> `blk.N.attn_q.weight`, ...), and
//! the Q/K rows of llama-architecture files put back in Hugging Face order.
//!
//! Matrices of a type the CPU multiplies quantized (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
//! Q6_K) are handed out as their blocks when `keep_quantized` is set (mapped, or
//! copied only to un-permute Q/K rows); every other tensor is dequantized to f32,
//! which the backend converts to the model dtype.

use crate::backend::{DType, HostTensor, TensorBytes};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::weights::TensorSource;

use super::dequant::{dequantize_parallel, GgmlType};
use super::GgufFile;
use crate::backend::cpu::matmul::quant::has_kernels;

pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
    pub config: &'a ModelConfig,
    /// llama.cpp's converter interleaved the rotary halves of Q and K.
    pub permuted_qk: bool,
    /// Hand out matrices of quantized types with kernels as their blocks.
    pub keep_quantized: bool,
}

const LAYER_NAMES: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The GGUF name of a Hugging Face tensor name, if it has one.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (_, name) = LAYER_NAMES.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{name}.{suffix}"))
}

impl GgufSource<'_> {
    /// Heads whose rows a Q or K tensor holds, when it must be un-permuted.
    fn permuted_heads(&self, hf: &str) -> Option<usize> {
        if !self.permuted_qk {
            return None;
        }
        if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
            Some(self.config.num_heads)
        } else if hf.ends_with("self_attn.k_proj.weight") || hf.ends_with("self_attn.k_proj.bias") {
            Some(self.config.num_kv_heads)
        } else {
            None
        }
    }
}

impl TensorSource for GgufSource<'_> {
    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensor(&g).is_some())
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let gname = gguf_name(name).ok_or_else(|| {
            self.file
                .error(format!("no GGUF tensor stands for `{name}`"))
        })?;
        let info = self
            .file
            .tensor(&gname)
            .ok_or_else(|| self.file.error(format!("missing tensor `{gname}`")))?;
        let ty = GgmlType::from_u32(info.ggml_type).ok_or_else(|| {
            self.file.error(format!(
                "tensor `{gname}` has type {}, which this engine does not read (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
                GgmlType::name_of(info.ggml_type)
            ))
        })?;
        if info.shape() != shape {
            return Err(self.file.error(format!(
                "tensor `{gname}` has shape {:?}, expected {shape:?} from the metadata",
                info.shape()
            )));
        }
        let bytes = self.file.tensor_bytes(info);
        let unpermute = |bytes: &[u8], row_bytes: usize| match self.permuted_heads(name) {
            None => Ok(None),
            Some(heads) => unpermute_rows(bytes, heads, shape[0], row_bytes)
                .map(Some)
                .map_err(|m| self.file.error(format!("tensor `{gname}`: {m}"))),
        };
        if self.keep_quantized && has_kernels(ty) && shape.len() == 2 {
            let row_bytes = bytes.len() / shape[0].max(1);
            let bytes = match unpermute(bytes, row_bytes)? {
                Some(owned) => TensorBytes::Owned(owned),
                None => TensorBytes::Mapped {
                    map: self.file.map.clone(),
                    range: info.offset..info.offset + info.size,
                },
            };
            return Ok(HostTensor {
                name: name.to_string(),
                dtype: DType::F32,
                shape: shape.to_vec(),
                bytes,
                quant: Some(ty),
                fp8_scales: None,
            });
        }
        let mut values = vec![0f32; info.numel()];
        dequantize_parallel(ty, bytes, &mut values);
        let mut bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        let row_bytes = shape.get(1).copied().unwrap_or(1) * 4;
        if let Some(owned) = unpermute(&bytes, row_bytes)? {
            bytes = owned;
        }
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

/// Undoes llama.cpp's Q/K permutation on `rows` rows of `row_bytes` each (f32
/// values or quantized blocks: whole rows move). Within each head of `head_dim`
/// rows, the converter stored Hugging Face row `j * head_dim/2 + i` (j in 0..2,
/// the rotary half) at row `2 * i + j`; this puts every row back.
pub fn unpermute_rows(
    bytes: &[u8],
    heads: usize,
    rows: usize,
    row_bytes: usize,
) -> std::result::Result<Vec<u8>, String> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) || bytes.len() != rows * row_bytes {
        return Err(format!("{rows} rows do not split into {heads} heads"));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}
