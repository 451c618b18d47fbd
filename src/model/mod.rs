//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2), written once against
//! the [`Backend`] ops.

mod kv_pools;
pub mod kv_sizing;
pub mod rope;
pub mod weights;

pub use kv_pools::KvPools;

use std::path::Path;

use crate::backend::{AttnShape, Backend, DType, HostTensor, KvPoolShape};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

use weights::{Checkpoint, TensorSource};

struct Layer<B: Backend> {
    input_norm: B::Weight,
    qkv: B::Weight,
    qkv_bias: Option<B::Weight>,
    o_proj: B::Weight,
    o_bias: Option<B::Weight>,
    post_norm: B::Weight,
    gate_up: B::Weight,
    gate_up_bias: Option<B::Weight>,
    down: B::Weight,
    down_bias: Option<B::Weight>,
    attn: AttnShape,
}

/// Weights on a backend plus what the forward pass needs to run them.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub dtype: DType,
    /// The KV cache's dtype (f32 until [`Model::set_kv_dtype`] says otherwise).
    pub kv_dtype: DType,
    /// Positions the rotary table covers: the longest sequence this model runs.
    pub max_positions: usize,
    backend: B,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    /// `None` when the LM head is tied to the embedding.
    lm_head: Option<B::Weight>,
    cos_sin: B::Buffer,
}

/// Loads `{prefix}.{part}.{suffix}` for each `(part, rows)` and stacks them, so
/// q/k/v (and gate/up) run as one matmul.
fn stacked(
    ckpt: &dyn TensorSource,
    prefix: &str,
    parts: &[(&str, usize)],
    suffix: &str,
    cols: Option<usize>,
) -> Result<HostTensor> {
    let tensors = parts
        .iter()
        .map(|&(part, rows)| {
            let shape: Vec<usize> = cols.map_or(vec![rows], |cols| vec![rows, cols]);
            ckpt.get(&format!("{prefix}.{part}.{suffix}"), &shape)
        })
        .collect::<Result<Vec<_>>>()?;
    HostTensor::concat_rows(&format!("{prefix}.{suffix}"), &tensors)
}

fn load_layer<B: Backend>(
    ckpt: &dyn TensorSource,
    c: &ModelConfig,
    i: usize,
    up: &dyn Fn(HostTensor) -> Result<B::Weight>,
) -> Result<Layer<B>> {
    let p = format!("model.layers.{i}");
    let (hidden, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let q_rows = c.num_heads * hd;
    let qkv = [
        ("self_attn.q_proj", q_rows),
        ("self_attn.k_proj", c.num_kv_heads * hd),
        ("self_attn.v_proj", c.num_kv_heads * hd),
    ];
    let gate_up = [("mlp.gate_proj", inter), ("mlp.up_proj", inter)];
    let get = |name: &str, shape: &[usize]| ckpt.get(&format!("{p}.{name}"), shape).and_then(up);
    let get_if =
        |present: bool, name: &str, shape: &[usize]| present.then(|| get(name, shape)).transpose();
    let stacked_if = |present: bool, parts: &[(&str, usize)]| {
        present
            .then(|| stacked(ckpt, &p, parts, "bias", None).and_then(up))
            .transpose()
    };
    Ok(Layer {
        input_norm: get("input_layernorm.weight", &[hidden])?,
        qkv: up(stacked(ckpt, &p, &qkv, "weight", Some(hidden))?)?,
        qkv_bias: stacked_if(c.qkv_bias, &qkv)?,
        o_proj: get("self_attn.o_proj.weight", &[hidden, q_rows])?,
        o_bias: get_if(c.o_bias, "self_attn.o_proj.bias", &[hidden])?,
        post_norm: get("post_attention_layernorm.weight", &[hidden])?,
        gate_up: up(stacked(ckpt, &p, &gate_up, "weight", Some(hidden))?)?,
        gate_up_bias: stacked_if(c.mlp_bias, &gate_up)?,
        down: get("mlp.down_proj.weight", &[hidden, inter])?,
        down_bias: get_if(c.mlp_bias, "mlp.down_proj.bias", &[hidden])?,
        attn: AttnShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: hd,
            sliding_window: c.sliding_window[i],
            scale: 1.0 / (hd as f32).sqrt(),
        },
    })
}

/// The longest sequence: `max_model_len`, else the config's
/// `max_position_embeddings`. As vLLM, more than the config's is an error; a
/// rotary table larger than the machine's memory (or than int32 positions) is
/// one too.
fn checked_max_positions(c: &ModelConfig, max_model_len: Option<usize>) -> Result<usize> {
    let n = match max_model_len {
        Some(n) if n > c.max_position_embeddings => {
            return Err(Error::invalid(format!(
                "User-specified max_model_len ({n}) is greater than the derived max_model_len \
                 (max_position_embeddings={} in the model's config); set --max-model-len \
                 to at most {}",
                c.max_position_embeddings, c.max_position_embeddings
            )))
        }
        Some(n) => n,
        None => c.max_position_embeddings,
    };
    if n == 0 {
        return Err(Error::invalid("max_model_len must be positive"));
    }
    let limit = i32::MAX as usize;
    if n > limit {
        return Err(Error::invalid(format!(
            "max_model_len {n} (the config's max_position_embeddings unless --max-model-len \
             is given) is more than positions can address ({limit}); set --max-model-len lower"
        )));
    }
    let row = c.head_dim.max(1).saturating_mul(std::mem::size_of::<f32>());
    crate::memory::checked_host_bytes(
        n,
        row,
        &format!("max_model_len {n}: the rotary embedding table"),
        "positions",
        "set --max-model-len lower",
    )?;
    Ok(n)
}

impl<B: Backend> Model<B> {
    /// Loads `config.json` and the safetensors weights of `dir`, converting them to
    /// `dtype`. `max_positions` (default: the config's `max_position_embeddings`)
    /// bounds the sequence length. `progress(done, total)` is called per tensor group.
    pub fn load(
        dir: &Path,
        dtype: DType,
        max_positions: Option<usize>,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Model<B>> {
        let config = ModelConfig::from_model_dir(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        Model::from_source(config, &ckpt, dtype, max_positions, backend, progress)
    }

    /// Builds the model from `config` and tensors named as in Hugging Face
    /// checkpoints, whatever file they come from (safetensors or GGUF).
    pub fn from_source(
        config: ModelConfig,
        ckpt: &dyn TensorSource,
        dtype: DType,
        max_positions: Option<usize>,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Model<B>> {
        // Checked before the weights load: the sizes come from a user or a file.
        let max_positions = checked_max_positions(&config, max_positions)?;
        let c = &config;
        let hidden = c.hidden_size;
        let up = |t: HostTensor| backend.upload_weight(t, dtype);
        let total = c.num_layers + 2;
        progress(0, total);

        let embed = up(ckpt.get("model.embed_tokens.weight", &[c.vocab_size, hidden])?)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            layers.push(load_layer(ckpt, c, i, &|t| {
                backend.upload_weight(t, dtype)
            })?);
            progress(i + 1, total);
        }
        let norm = up(ckpt.get("model.norm.weight", &[hidden])?)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(up(ckpt.get("lm_head.weight", &[c.vocab_size, hidden])?)?)
        };
        progress(total, total);

        let cos_sin = backend.upload(&rope::cos_sin_table(c, max_positions)?)?;
        Ok(Model {
            config,
            dtype,
            kv_dtype: DType::F32,
            max_positions,
            backend,
            embed,
            layers,
            norm,
            lm_head,
            cos_sin,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Keeps the KV cache in `dtype`, where the backend can.
    pub fn set_kv_dtype(&mut self, dtype: DType) -> Result<()> {
        if !self.backend.kv_dtypes().contains(&dtype) {
            let served: Vec<&str> = self.backend.kv_dtypes().iter().map(|d| d.name()).collect();
            return Err(Error::invalid(format!(
                "the {} backend keeps its KV cache in {}, not {}",
                self.backend.name(),
                served.join(" or "),
                dtype.name()
            )));
        }
        self.kv_dtype = dtype;
        Ok(())
    }

    /// Shape of one layer's KV pool holding `num_blocks` blocks of `block_size` tokens.
    pub fn kv_pool_shape(&self, num_blocks: usize, block_size: usize) -> KvPoolShape {
        KvPoolShape {
            num_blocks,
            num_kv_heads: self.config.num_kv_heads,
            block_size,
            head_dim: self.config.head_dim,
            dtype: self.kv_dtype,
        }
    }

    /// Bytes of KV cache one block takes across all layers (K and V).
    pub fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        2 * self.config.num_layers
            * self.kv_pool_shape(1, block_size).len()
            * self.kv_dtype.size_in_bytes()
    }

    /// Runs one step: writes the step's K/V into `kv` and returns the logits of
    /// `meta.logits_rows`, `[rows, vocab]`.
    pub fn forward(&self, meta: &B::Meta, kv: &mut KvPools<B>) -> Result<B::Buffer> {
        self.backend.run_step(|| self.forward_ops(meta, kv))
    }

    fn forward_ops(&self, meta: &B::Meta, kv: &mut KvPools<B>) -> Result<B::Buffer> {
        let be = &self.backend;
        let host = be.step_meta(meta);
        let t = host.num_tokens();
        let c = &self.config;
        let hidden = c.hidden_size;
        let mut h = be.alloc(t * hidden)?;
        let mut residual = be.alloc(t * hidden)?;
        let mut qkv = be.alloc(t * self.layers.first().map_or(0, |l| l.attn.qkv_width()))?;
        let mut attn_out = be.alloc(t * c.num_heads * c.head_dim)?;
        let mut gate_up = be.alloc(t * 2 * c.intermediate_size)?;
        let mut act = be.alloc(t * c.intermediate_size)?;
        let eps = c.rms_norm_eps as f32;

        be.embedding(&self.embed, meta, &mut h)?;
        for (layer, (k_pool, v_pool)) in self.layers.iter().zip(kv.pools.iter_mut()) {
            // The residual starts at zero, so the first add leaves the embedding as is.
            be.fused_add_rms_norm(&mut h, &mut residual, &layer.input_norm, eps)?;
            be.matmul(&h, &layer.qkv, layer.qkv_bias.as_ref(), &mut qkv)?;
            be.rotary(&mut qkv, &self.cos_sin, meta, layer.attn)?;
            be.reshape_and_cache(&qkv, k_pool, v_pool, meta, layer.attn)?;
            be.paged_attention(&qkv, k_pool, v_pool, meta, layer.attn, &mut attn_out)?;
            be.matmul(&attn_out, &layer.o_proj, layer.o_bias.as_ref(), &mut h)?;
            be.fused_add_rms_norm(&mut h, &mut residual, &layer.post_norm, eps)?;
            be.matmul(
                &h,
                &layer.gate_up,
                layer.gate_up_bias.as_ref(),
                &mut gate_up,
            )?;
            be.silu_mul(&gate_up, c.intermediate_size, &mut act)?;
            be.matmul(&act, &layer.down, layer.down_bias.as_ref(), &mut h)?;
        }
        be.fused_add_rms_norm(&mut h, &mut residual, &self.norm, eps)?;

        let rows = &host.logits_rows;
        let mut selected = be.alloc(rows.len() * hidden)?;
        be.gather_rows(&h, rows, hidden, &mut selected)?;
        let mut logits = be.alloc(rows.len() * c.vocab_size)?;
        be.matmul(
            &selected,
            self.lm_head.as_ref().unwrap_or(&self.embed),
            None,
            &mut logits,
        )?;
        Ok(logits)
    }
}
