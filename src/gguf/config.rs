//! The model configuration from a GGUF file's metadata (`general.architecture` and
//! the `{arch}.*` keys llama.cpp writes), as the engine's [`ModelConfig`].

use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::error::Result;

use super::{GgufFile, Value};

/// The GGUF architectures the engine runs, and whether llama.cpp's converter
/// permuted their Q/K weights for its interleaved rope (llama and mistral: yes;
/// qwen2 runs NeoX-style rope in llama.cpp and is stored as in Hugging Face).
pub fn arch_of(file: &GgufFile) -> Result<(Arch, bool)> {
    let name = file
        .get("general.architecture")
        .ok_or_else(|| file.error("no `general.architecture` in the metadata"))?
        .as_str()
        .ok_or_else(|| file.error("`general.architecture` is not a string"))?;
    match name {
        "llama" => Ok((Arch::Llama, true)),
        "mistral" => Ok((Arch::Mistral, true)),
        "qwen2" => Ok((Arch::Qwen2, false)),
        other => Err(file.error(format!(
            "unsupported architecture {other:?} (supported: llama, mistral, qwen2)"
        ))),
    }
}

pub fn model_config(file: &GgufFile) -> Result<ModelConfig> {
    let (arch, _) = arch_of(file)?;
    let prefix = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let keys = ArchKeys { file, prefix };
    let hidden_size = keys.uint("embedding_length")?;
    let num_layers = keys.uint("block_count")?;
    let intermediate_size = keys.uint("feed_forward_length")?;
    let num_heads = keys.uint("attention.head_count")?;
    let num_kv_heads = keys
        .opt_uint("attention.head_count_kv")?
        .unwrap_or(num_heads);
    if hidden_size == 0 || num_layers == 0 || intermediate_size == 0 || num_heads == 0 {
        return Err(file.error(
            "embedding_length, block_count, feed_forward_length and attention.head_count must be positive",
        ));
    }
    crate::config::check_num_layers(num_layers, "block_count").map_err(|e| file.error(e))?;
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(file.error(format!(
            "attention.head_count ({num_heads}) must be a positive multiple of attention.head_count_kv ({num_kv_heads})"
        )));
    }
    let head_dim = keys.head_dim(hidden_size, num_heads)?;
    let vocab_size = vocab_size(file, hidden_size)?;
    let rope_scaling = keys.rope_scaling()?;
    let token_id = |k: &str| {
        file.get(k)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    Ok(ModelConfig {
        arch,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        rms_norm_eps: keys
            .float("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5),
        rope_theta: keys.float("rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: keys.opt_uint("context_length")?.unwrap_or(2048),
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        o_bias: file.tensor("blk.0.attn_output.bias").is_some(),
        mlp_bias: file.tensor("blk.0.ffn_down.bias").is_some(),
        sliding_window: vec![
            keys.opt_uint("attention.sliding_window")?
                .filter(|&w| w > 0);
            num_layers
        ],
        dtype: None,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: token_id("tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect(),
    })
}

/// The vocabulary size, from the embedding's shape.
fn vocab_size(file: &GgufFile, hidden_size: usize) -> Result<usize> {
    let embd = file
        .tensor("token_embd.weight")
        .ok_or_else(|| file.error("missing tensor `token_embd.weight`"))?;
    match embd.dims.as_slice() {
        [h, v] if *h as usize == hidden_size => Ok(*v as usize),
        dims => Err(file.error(format!(
            "tensor `token_embd.weight` has dimensions {dims:?}, expected [{hidden_size}, vocab]"
        ))),
    }
}

/// The `{arch}.*` metadata keys, typed.
struct ArchKeys<'a> {
    file: &'a GgufFile,
    prefix: String,
}

impl ArchKeys<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.prefix)
    }

    fn opt_uint(&self, k: &str) -> Result<Option<usize>> {
        match self.file.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.file
                        .error(format!("`{}` is not an unsigned integer", self.key(k)))
                }),
        }
    }

    fn uint(&self, k: &str) -> Result<usize> {
        self.opt_uint(k)?.ok_or_else(|| {
            self.file
                .error(format!("missing metadata `{}`", self.key(k)))
        })
    }

    fn float(&self, k: &str) -> Result<Option<f64>> {
        match self.file.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.file
                    .error(format!("`{}` is not a number", self.key(k)))
            }),
        }
    }

    /// The head dimension: given, or the hidden size over the heads; even, and
    /// all of it rotated.
    fn head_dim(&self, hidden_size: usize, num_heads: usize) -> Result<usize> {
        let file = self.file;
        let head_dim = match self.opt_uint("attention.key_length")? {
            Some(d) => d,
            None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
            None => {
                return Err(file.error(format!(
                "embedding_length {hidden_size} is not divisible by attention.head_count {num_heads}"
            )))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(file.error(format!("head dimension must be even, got {head_dim}")));
        }
        if let Some(rope_dims) = self.opt_uint("rope.dimension_count")? {
            if rope_dims != head_dim {
                return Err(file.error(format!(
                    "partial rotary embedding (rope.dimension_count {rope_dims} of head dimension {head_dim}) is not supported"
                )));
            }
        }
        Ok(head_dim)
    }

    fn rope_scaling(&self) -> Result<RopeScaling> {
        match self
            .file
            .get(&self.key("rope.scaling.type"))
            .and_then(Value::as_str)
        {
            None | Some("none") => Ok(RopeScaling::None),
            Some("linear") => Ok(RopeScaling::Linear {
                factor: self.float("rope.scaling.factor")?.unwrap_or(1.0),
            }),
            Some(other) => Err(self.file.error(format!(
                "unsupported rope scaling {other:?} (supported: none, linear)"
            ))),
        }
    }
}
