//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2), written once against
//! the [`Backend`] ops.

mod arena;
pub mod dummy;
mod group;
mod kv_pools;
mod kv_scales;
pub mod kv_sizing;
pub mod rope;
pub mod shard;
pub mod weights;

pub use arena::StepArena;
pub use group::ModelGroup;
pub use kv_pools::KvPools;

use std::ops::Range;
use std::path::Path;

use crate::backend::{
    AttnShape, Backend, DType, GraphLimits, HostTensor, KvDType, KvPoolShape, Shard,
};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

use shard::{ShardPlan, ShardedSource};
use weights::{Checkpoint, TensorSource};

/// A rank of a tensor-parallel group: its place, and its end of the group's
/// communicator.
pub struct TpRank<C> {
    pub shard: Shard,
    pub comm: C,
}

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
    pub kv_dtype: KvDType,
    /// Per layer, the `(k_scale, v_scale)` an FP8 KV cache is stored with.
    pub kv_scales: Vec<(f32, f32)>,
    /// Positions the rotary table covers: the longest sequence this model runs.
    pub max_positions: usize,
    backend: B,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    /// This rank's rows of the LM head (of the embedding when tied, whole
    /// when unsharded and tied: `None`).
    lm_head: Option<B::Weight>,
    cos_sin: B::Buffer,
    plan: ShardPlan,
    /// Present in a tensor-parallel group (even of one rank): the collectives run.
    comm: Option<B::Comm>,
}

/// Loads `{prefix}.{part}.{suffix}` for each `(part, rows, this rank's rows)`
/// and uploads this rank's rows stacked as one weight, so q/k/v (and gate/up)
/// run as one matmul ([`Backend::upload_stacked`]).
fn stacked<B: Backend>(
    backend: &B,
    dtype: DType,
    src: &ShardedSource,
    prefix: &str,
    parts: &[(&str, usize, Range<usize>)],
    suffix: &str,
    cols: Option<usize>,
) -> Result<B::Weight> {
    let tensors = parts
        .iter()
        .map(|(part, rows, keep)| {
            let shape: Vec<usize> = cols.map_or(vec![*rows], |cols| vec![*rows, cols]);
            src.rows(&format!("{prefix}.{part}.{suffix}"), &shape, keep, 1)
        })
        .collect::<Result<Vec<_>>>()?;
    backend.upload_stacked(&format!("{prefix}.{suffix}"), tensors, dtype)
}

fn load_layer<B: Backend>(
    src: &ShardedSource,
    c: &ModelConfig,
    plan: &ShardPlan,
    i: usize,
    (backend, dtype): (&B, DType),
) -> Result<Layer<B>> {
    let up = |t: HostTensor| backend.upload_weight(t, dtype);
    let p = format!("model.layers.{i}");
    let (hidden, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let q_rows = c.num_heads * hd;
    let heads = |r: &Range<usize>| r.start * hd..r.end * hd;
    let qkv = [
        ("self_attn.q_proj", q_rows, heads(&plan.q_heads)),
        (
            "self_attn.k_proj",
            c.num_kv_heads * hd,
            heads(&plan.kv_heads),
        ),
        (
            "self_attn.v_proj",
            c.num_kv_heads * hd,
            heads(&plan.kv_heads),
        ),
    ];
    let gate_up = [
        ("mlp.gate_proj", inter, plan.intermediate.clone()),
        ("mlp.up_proj", inter, plan.intermediate.clone()),
    ];
    let whole = |name: &str, shape: &[usize]| src.whole(&format!("{p}.{name}"), shape).and_then(up);
    let row_bias = |present: bool, name: &str| {
        (present && plan.adds_row_bias())
            .then(|| whole(name, &[hidden]))
            .transpose()
    };
    let stacked_if = |present: bool, parts: &[(&str, usize, Range<usize>)]| {
        present
            .then(|| stacked(backend, dtype, src, &p, parts, "bias", None))
            .transpose()
    };
    let cols = |name: &str, width: usize, keep: &Range<usize>| {
        src.cols(&format!("{p}.{name}"), &[hidden, width], keep, 1)
            .and_then(up)
    };
    Ok(Layer {
        input_norm: whole("input_layernorm.weight", &[hidden])?,
        qkv: stacked(backend, dtype, src, &p, &qkv, "weight", Some(hidden))?,
        qkv_bias: stacked_if(c.qkv_bias, &qkv)?,
        o_proj: cols("self_attn.o_proj.weight", q_rows, &heads(&plan.q_heads))?,
        o_bias: row_bias(c.o_bias, "self_attn.o_proj.bias")?,
        post_norm: whole("post_attention_layernorm.weight", &[hidden])?,
        gate_up: stacked(backend, dtype, src, &p, &gate_up, "weight", Some(hidden))?,
        gate_up_bias: stacked_if(c.mlp_bias, &gate_up)?,
        down: cols("mlp.down_proj.weight", inter, &plan.intermediate)?,
        down_bias: row_bias(c.mlp_bias, "mlp.down_proj.bias")?,
        attn: AttnShape {
            num_heads: plan.q_heads.len(),
            num_kv_heads: plan.kv_heads.len(),
            head_dim: hd,
            sliding_window: c.sliding_window[i],
            scale: 1.0 / (hd as f32).sqrt(),
        },
    })
}

/// The longest sequence: `max_model_len`, else the config's
/// `max_position_embeddings`. As vLLM, more than the config's is an error; so
/// is a length beyond int32 positions, or one whose rotary table and KV cache
/// for one sequence (at one byte a value, the smallest KV dtype) need more than
/// the machine's memory: checked before the table is built, since the KV cache
/// is sized only after the weights load.
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
    let rotary = c.head_dim.max(1).saturating_mul(std::mem::size_of::<f32>());
    let kv = [2, c.num_layers, c.num_kv_heads, c.head_dim]
        .into_iter()
        .fold(1usize, usize::saturating_mul);
    crate::memory::checked_host_bytes(
        n,
        rotary.saturating_add(kv),
        &format!("max_model_len {n}: the rotary embedding table and the KV cache of one sequence"),
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
        Model::from_source_rank(config, ckpt, dtype, max_positions, backend, None, progress)
    }

    /// [`Model::from_source`] for one rank of a tensor-parallel group: only
    /// this rank's part of the sharded weights is read and uploaded.
    pub fn from_source_rank(
        config: ModelConfig,
        ckpt: &dyn TensorSource,
        dtype: DType,
        max_positions: Option<usize>,
        mut backend: B,
        rank: Option<TpRank<B::Comm>>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Model<B>> {
        // Checked before the weights load: the sizes come from a user or a file.
        let max_positions = checked_max_positions(&config, max_positions)?;
        backend.set_activation_dtype(dtype);
        let shard = rank.as_ref().map_or(Shard::SINGLE, |r| r.shard);
        let plan = ShardPlan::new(&config, shard)?;
        let src = ShardedSource {
            source: ckpt,
            shard,
        };
        let c = &config;
        let hidden = c.hidden_size;
        let up = |t: HostTensor| backend.upload_weight(t, dtype);
        let total = c.num_layers + 2;
        progress(0, total);

        let embed_shape = [c.vocab_size, hidden];
        let embed = up(src.whole("model.embed_tokens.weight", &embed_shape)?)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        let kv_scales = (0..c.num_layers)
            .map(|i| kv_scales::layer_kv_scales(ckpt, i))
            .collect::<Result<Vec<_>>>()?;
        for i in 0..c.num_layers {
            layers.push(load_layer(&src, c, &plan, i, (&backend, dtype))?);
            progress(i + 1, total);
        }
        let norm = up(src.whole("model.norm.weight", &[hidden])?)?;
        let lm_head = match (c.tie_word_embeddings, shard.world) {
            (true, 1) => None,
            (true, _) => Some(up(src.rows(
                "model.embed_tokens.weight",
                &embed_shape,
                &plan.vocab,
                1,
            )?)?),
            (false, _) => Some(up(src.rows(
                "lm_head.weight",
                &embed_shape,
                &plan.vocab,
                1,
            )?)?),
        };
        progress(total, total);

        let cos_sin = backend.upload(&rope::cos_sin_table(c, max_positions)?)?;
        Ok(Model {
            config,
            dtype,
            kv_dtype: KvDType::F32,
            kv_scales,
            max_positions,
            backend,
            embed,
            layers,
            norm,
            lm_head,
            cos_sin,
            plan,
            comm: rank.map(|r| r.comm),
        })
    }

    /// This model's place in its tensor-parallel group.
    pub fn shard(&self) -> Shard {
        self.plan.shard
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Keeps the KV cache in `dtype`, where the backend can.
    pub fn set_kv_dtype(&mut self, dtype: KvDType) -> Result<()> {
        if !self.backend.kv_dtypes().contains(&dtype) {
            let served: Vec<&str> = self.backend.kv_dtypes().iter().map(|d| d.name()).collect();
            return Err(Error::invalid(format!(
                "kv_cache_dtype {} is not implemented on {}: its KV cache is kept in {}",
                dtype.name(),
                self.backend.describe(),
                served.join(" or "),
            )));
        }
        self.kv_dtype = dtype;
        Ok(())
    }

    /// Shape of one layer's KV pool holding `num_blocks` blocks of `block_size` tokens.
    pub fn kv_pool_shape(&self, num_blocks: usize, block_size: usize) -> KvPoolShape {
        KvPoolShape {
            num_blocks,
            num_kv_heads: self.plan.kv_heads.len(),
            block_size,
            head_dim: self.config.head_dim,
            dtype: self.kv_dtype,
        }
    }

    /// Bytes of KV cache one block takes across all layers (K and V), on this rank.
    pub fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        2 * self.config.num_layers
            * self.kv_pool_shape(1, block_size).len()
            * self.kv_dtype.size_in_bytes()
    }

    /// Runs one step: writes the step's K/V into `kv` and returns the logits of
    /// `meta.logits_rows` as [`Model::logits_to_host`] reads them. The step's
    /// activations live in `arena`, kept for the next step. Every rank of a
    /// group runs it on the same step at once (the collectives wait for all).
    pub fn forward(
        &self,
        meta: &B::Meta,
        kv: &mut KvPools<B>,
        arena: &mut StepArena<B>,
    ) -> Result<B::Buffer> {
        self.backend.run_step(|| {
            // A tensor-parallel rank's graphs hold its collectives too: every
            // rank takes the same bucket for the same step, so their replays
            // meet in each all-reduce as their eager steps do.
            let be = &self.backend;
            let graphed = be.graph_step(
                meta,
                &mut arena.spare_logits,
                &mut || StepArena::new(be),
                &mut |m, own: &mut StepArena<B>, logits| {
                    own.spare_logits = logits;
                    self.forward_ops(m, kv, own)
                },
            )?;
            if let Some(logits) = graphed {
                return Ok(logits);
            }
            self.forward_ops(meta, kv, arena)
        })
    }

    /// Decode steps through graphs where the backend has them (see
    /// [`Backend::graph_step`]).
    pub fn enable_graphs(&mut self, max_seqs: usize, block_size: usize) {
        let limits = GraphLimits {
            max_seqs,
            max_model_len: self.max_positions,
            block_size,
            logits_parts: self.plan.shard.world,
        };
        self.backend.enable_graphs(limits);
    }

    fn forward_ops(
        &self,
        meta: &B::Meta,
        kv: &mut KvPools<B>,
        arena: &mut StepArena<B>,
    ) -> Result<B::Buffer> {
        let be = &self.backend;
        let host = be.step_meta(meta);
        let t = host.num_tokens();
        let c = &self.config;
        let hidden = c.hidden_size;
        let heads = self.plan.q_heads.len();
        let inter = self.plan.intermediate.len();
        let qkv_width = self.layers.first().map_or(0, |l| l.attn.qkv_width());
        let StepArena {
            hidden: h,
            residual,
            qkv,
            attn_out,
            gate_up,
            act,
            selected,
            local_logits,
            spare_logits,
        } = arena;
        be.resize(h, t * hidden)?;
        be.resize(residual, t * hidden)?;
        be.resize(qkv, t * qkv_width)?;
        be.resize(attn_out, t * heads * c.head_dim)?;
        be.resize(gate_up, t * 2 * inter)?;
        be.resize(act, t * inter)?;
        let eps = c.rms_norm_eps as f32;

        // The embedding is the first residual; the first layer's norm reads it
        // (every later layer's adds its input to the residual first).
        be.embedding(&self.embed, meta, residual)?;
        for (i, (layer, (k_pool, v_pool))) in
            self.layers.iter().zip(kv.pools.iter_mut()).enumerate()
        {
            if i == 0 {
                be.rms_norm(residual, &layer.input_norm, eps, h)?;
            } else {
                be.fused_add_rms_norm(h, residual, &layer.input_norm, eps)?;
            }
            be.matmul(h, &layer.qkv, layer.qkv_bias.as_ref(), qkv)?;
            be.rotary(qkv, &self.cos_sin, meta, layer.attn)?;
            be.reshape_and_cache(qkv, k_pool, v_pool, meta, layer.attn)?;
            be.paged_attention(qkv, k_pool, v_pool, meta, layer.attn, attn_out)?;
            be.matmul(attn_out, &layer.o_proj, layer.o_bias.as_ref(), h)?;
            self.all_reduce(h)?;
            be.fused_add_rms_norm(h, residual, &layer.post_norm, eps)?;
            be.matmul(h, &layer.gate_up, layer.gate_up_bias.as_ref(), gate_up)?;
            be.silu_mul(gate_up, inter, act)?;
            be.matmul(act, &layer.down, layer.down_bias.as_ref(), h)?;
            self.all_reduce(h)?;
        }
        if self.layers.is_empty() {
            be.rms_norm(residual, &self.norm, eps, h)?;
        } else {
            be.fused_add_rms_norm(h, residual, &self.norm, eps)?;
        }
        self.lm_head(
            h,
            &host.logits_rows,
            selected,
            local_logits,
            spare_logits.take(),
        )
    }

    /// Releases the other ranks of the group from the collectives they wait
    /// in: this rank failed and will not reach them.
    pub fn abort_collectives(&self) {
        if let Some(comm) = &self.comm {
            self.backend.abort_collectives(comm);
        }
    }

    /// Sums a row-parallel matmul's partial results over the group.
    fn all_reduce(&self, x: &mut B::Buffer) -> Result<()> {
        match &self.comm {
            Some(comm) => self.backend.all_reduce_sum(comm, x),
            None => Ok(()),
        }
    }

    /// The logits of `rows` of the final hidden state: this rank's vocabulary
    /// slice, gathered from every rank in a group (`[world, rows, slice]`).
    /// `selected` is the step's buffer for those rows, `local` (in a group)
    /// for this rank's slice of their logits; the logits leave the step, in
    /// the `spare` an earlier step's caller handed back if there is one. No
    /// buffer is allocated once the step's are sized, as a graph capture needs.
    fn lm_head(
        &self,
        h: &B::Buffer,
        rows: &[usize],
        selected: &mut B::Buffer,
        local: &mut Option<B::Buffer>,
        spare: Option<B::Buffer>,
    ) -> Result<B::Buffer> {
        let be = &self.backend;
        let hidden = self.config.hidden_size;
        // Every row in order (a decode step): the LM head reads h itself.
        let every_row = rows.len() * hidden == be.buffer_len(h)
            && rows.iter().enumerate().all(|(i, &r)| i == r);
        let input = if every_row {
            h
        } else {
            be.resize(selected, rows.len() * hidden)?;
            be.gather_rows(h, rows, hidden, selected)?;
            selected
        };
        let len = rows.len() * self.plan.vocab.len();
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let Some(comm) = &self.comm else {
            let mut logits = logits_buffer(be, spare, len)?;
            be.matmul(input, head, None, &mut logits)?;
            return Ok(logits);
        };
        let slice = match local {
            Some(buf) => {
                be.resize(buf, len)?;
                buf
            }
            None => local.insert(be.alloc_logits(len)?),
        };
        be.matmul(input, head, None, slice)?;
        // World times the slice's own length: a step without logits rows
        // (a prompt chunk short of the end) has a one-value CUDA slice, and
        // NCCL's all_gather wants exactly world times it.
        let world = self.plan.shard.world;
        let mut gathered = logits_buffer(be, spare, world * be.buffer_len(slice))?;
        be.all_gather(comm, slice, &mut gathered)?;
        Ok(gathered)
    }

    /// What [`Model::forward`] returned, on the host as `[rows, vocab]`.
    pub fn logits_to_host(&self, logits: &B::Buffer) -> Result<Vec<f32>> {
        let values = self.backend.download(logits)?;
        if self.comm.is_none() {
            return Ok(values);
        }
        let (vocab, slice) = (self.config.vocab_size, self.plan.vocab.len());
        let rank_len = values.len() / self.plan.shard.world;
        let rows = rank_len / slice.max(1);
        let mut out = Vec::with_capacity(rows * vocab);
        for row in 0..rows {
            for part in values.chunks_exact(rank_len.max(1)) {
                out.extend_from_slice(&part[row * slice..(row + 1) * slice]);
            }
            // The last ranks' padding rows of the LM head.
            out.truncate((row + 1) * vocab);
        }
        Ok(out)
    }
}

/// `len` f32 logits: `spare` resized, or a new buffer.
fn logits_buffer<B: Backend>(be: &B, spare: Option<B::Buffer>, len: usize) -> Result<B::Buffer> {
    match spare {
        Some(mut buf) => {
            be.resize(&mut buf, len)?;
            Ok(buf)
        }
        None => be.alloc_logits(len),
    }
}
