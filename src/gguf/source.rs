//! A GGUF file as a [`TensorSource`]: Hugging Face tensor names mapped to llama.cpp's
//! (`model.layers.N.self_attn.q_proj.weight` -> `blk.N.attn_q.weight`, ...), each
//! tensor dequantized to f32 (the backend then converts it to the model dtype), and
//! the Q/K rows of llama-architecture files put back in Hugging Face order.

use rayon::prelude::*;

use crate::backend::{DType, HostTensor, TensorBytes};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::weights::TensorSource;

use super::dequant::{dequantize, GgmlType};
use super::GgufFile;

pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
    pub config: &'a ModelConfig,
    /// llama.cpp's converter interleaved the rotary halves of Q and K.
    pub permuted_qk: bool,
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
        let mut values = vec![0f32; info.numel()];
        let bytes = self.file.tensor_bytes(info);
        // Dequantize in parallel, in pieces of whole blocks.
        let per_piece = ty.block_elems() * 4096;
        let piece_bytes = per_piece / ty.block_elems() * ty.block_bytes();
        values
            .par_chunks_mut(per_piece)
            .zip(bytes.par_chunks(piece_bytes))
            .for_each(|(out, b)| dequantize(ty, b, out));
        if let Some(heads) = self.permuted_heads(name) {
            values = unpermute_rows(&values, heads, shape)
                .map_err(|m| self.file.error(format!("tensor `{gname}`: {m}")))?;
        }
        Ok(HostTensor {
            name: name.to_string(),
            dtype: DType::F32,
            shape: shape.to_vec(),
            bytes: TensorBytes::Owned(bytemuck::cast_slice(&values).to_vec()),
        })
    }
}

/// Undoes llama.cpp's Q/K permutation. Within each head of `head_dim` rows, the
/// converter stored Hugging Face row `j * head_dim/2 + i` (j in 0..2, the rotary
/// half) at row `2 * i + j`; this puts every row back.
pub fn unpermute_rows(
    values: &[f32],
    heads: usize,
    shape: &[usize],
) -> std::result::Result<Vec<f32>, String> {
    let rows = shape[0];
    let cols = shape.get(1).copied().unwrap_or(1);
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(format!("{rows} rows do not split into {heads} heads"));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}
