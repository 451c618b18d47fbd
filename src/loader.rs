//! Loading an engine: resolve what `--model` names (a Hugging Face directory or
//! a GGUF file), read its config, weights and tokenizer onto a backend, and size
//! the KV cache (vLLM's engine arguments in [`LoadOptions`]).

mod fp8;
mod host_kv;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::{resolve_dtype, resolve_kv_dtype, ModelConfig};
use crate::engine::{EngineConfig, EngineCore};
use crate::error::{Error, Result};
use crate::gguf::source::GgufSource;
use crate::gguf::GgufFile;
use crate::model::dummy::DummyWeights;
use crate::model::kv_sizing::{kv_blocks_for_device, DEFAULT_GPU_MEMORY_UTILIZATION};
use crate::model::shard::check_tensor_parallel;
use crate::model::weights::{Checkpoint, TensorSource};
use crate::model::{Model, ModelGroup, TpRank};
use crate::tokenizer::Tokenizer;
use fp8::TensorMode;
use host_kv::{host_kv_blocks, CPU_KV_SPACE_VAR};

/// How to load and size an engine (vLLM's engine arguments).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `auto` (the config's dtype), `float32`/`float`, `float16`/`half` or `bfloat16`.
    pub dtype: String,
    /// Longest sequence (prompt + output); default: the config's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Tokens per KV block: 8, 16 or 32.
    pub block_size: usize,
    /// KV cache size in blocks; default: what a GPU's memory leaves, or on the CPU
    /// `VLLM_CPU_KVCACHE_SPACE` GiB, else 4 GiB (at most half the machine's memory),
    /// and never fewer than four sequences of `max_model_len`.
    pub num_kv_blocks: Option<usize>,
    /// KV cache size in bytes (an alternative to `num_kv_blocks`).
    pub kv_cache_memory: Option<usize>,
    /// vLLM's `--kv-cache-dtype`: `auto` (the weights' dtype where the backend
    /// keeps such a cache, else float32), `float32`, `bfloat16` or `float16`.
    pub kv_cache_dtype: String,
    /// On a GPU, when neither size above is given: the share of the device's
    /// memory the engine may use, the KV cache taking what the weights and the
    /// largest step leave (default 0.9, as vLLM). Unused on the CPU.
    pub gpu_memory_utilization: Option<f64>,
    pub max_num_seqs: usize,
    /// Most top logprobs a request may ask for, per token (vLLM's `--max-logprobs`).
    pub max_logprobs: usize,
    /// Tokens one step may run (prompts longer than this are prefilled in chunks).
    pub max_num_batched_tokens: usize,
    pub enable_prefix_caching: bool,
    /// A chat template (file path or inline, as vLLM's `--chat-template`) replacing the model's.
    pub chat_template: Option<String>,
    /// A Hugging Face tokenizer directory replacing the model's tokenizer (vLLM's `--tokenizer`).
    pub tokenizer: Option<String>,
    /// Load no tokenizer (vLLM's `--skip-tokenizer-init`): prompts are token
    /// ids and outputs have no text. Without it, a model directory without
    /// tokenizer.json is an error.
    pub skip_tokenizer_init: bool,
    /// vLLM's `--quantization`: `auto` or `gguf` keep a GGUF file's Q8_0, Q4_0,
    /// Q4_1, Q4_K, Q5_K and Q6_K matrices quantized on the CPU (as llama.cpp and
    /// vLLM serve them), and `auto` an FP8 checkpoint's e4m3 weights; `fp8`
    /// quantizes a 16/32-bit checkpoint's projections to FP8 at load (one
    /// dynamic scale per matrix, as vLLM); `none` dequantizes every tensor to
    /// `dtype` at load.
    pub quantization: String,
    /// vLLM's `--tensor-parallel-size`: the model sharded over this many ranks
    /// (GPUs; worker threads on the CPU) joined by collectives. `None` runs one
    /// unsharded model without collectives; `Some(1)` runs one rank through
    /// the collective path (NCCL with one GPU).
    pub tensor_parallel_size: Option<usize>,
    /// vLLM's `--load-format`: `auto` reads the weights from the files;
    /// `dummy` makes them up (see [`DummyWeights`]) for a directory that may
    /// hold only config.json, to benchmark a model's shape without its file.
    pub load_format: String,
    /// Decode steps through CUDA graphs (one per batch-size bucket), where the
    /// backend has them. Off by default until the graphs have run on a GPU:
    /// `ENGINE_CUDA_GRAPHS=1` in the environment turns them on.
    pub cuda_graphs: bool,
}

/// Whether the environment turns CUDA graphs on (`ENGINE_CUDA_GRAPHS=1`).
pub fn cuda_graphs_from_env() -> bool {
    std::env::var("ENGINE_CUDA_GRAPHS").is_ok_and(|v| v == "1")
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: "auto".into(),
            max_model_len: None,
            block_size: 16,
            num_kv_blocks: None,
            kv_cache_memory: None,
            kv_cache_dtype: "auto".into(),
            gpu_memory_utilization: None,
            max_num_seqs: 256,
            max_logprobs: 20,
            max_num_batched_tokens: 2048,
            enable_prefix_caching: false,
            chat_template: None,
            tokenizer: None,
            skip_tokenizer_init: false,
            quantization: "auto".into(),
            tensor_parallel_size: None,
            load_format: "auto".into(),
            cuda_graphs: cuda_graphs_from_env(),
        }
    }
}

/// What `--model` names: a Hugging Face directory (config.json + safetensors), or a
/// GGUF file (given directly, or as a directory holding exactly one `.gguf` and no
/// config.json).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPath {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

impl ModelPath {
    pub fn resolve(path: &Path) -> Result<ModelPath> {
        let is_gguf = |p: &Path| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        };
        if path.is_file() {
            return if is_gguf(path) {
                Ok(ModelPath::Gguf(path.to_path_buf()))
            } else {
                Err(Error::bad_file(
                    path,
                    "is a file but not a .gguf; give a GGUF file or a Hugging Face model directory",
                ))
            };
        }
        if !path.join("config.json").exists() && path.is_dir() {
            let mut ggufs: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_gguf(p))
                .collect();
            ggufs.sort();
            match ggufs.len() {
                0 => {}
                1 => return Ok(ModelPath::Gguf(ggufs.remove(0))),
                n => {
                    return Err(Error::bad_file(
                        path,
                        format!("holds {n} .gguf files and no config.json: name the one to load"),
                    ))
                }
            }
        }
        Ok(ModelPath::HfDir(path.to_path_buf()))
    }
}

/// Resolves `--quantization` for the model: whether GGUF blocks stay quantized.
fn keep_quantized(requested: &str, model: &ModelPath) -> Result<bool> {
    match (requested.trim().to_ascii_lowercase().as_str(), model) {
        ("auto" | "none" | "fp8" | "compressed-tensors", ModelPath::HfDir(_)) => Ok(false),
        ("auto" | "gguf", ModelPath::Gguf(_)) => Ok(true),
        ("none", ModelPath::Gguf(_)) => Ok(false),
        ("gguf", ModelPath::HfDir(dir)) => Err(Error::invalid(format!(
            "quantization \"gguf\" needs a GGUF model, and {} is a Hugging Face directory",
            dir.display()
        ))),
        // GGUF tensors dequantized, then the projections quantized to FP8.
        ("fp8", ModelPath::Gguf(_)) => Ok(false),
        (other, _) => Err(Error::invalid(format!(
            "quantization {other:?} is not served: expected auto, gguf (a GGUF file's blocks \
             kept quantized), fp8 (FP8 weights) or none (dequantized to --dtype)"
        ))),
    }
}

fn tokenizer_from_dir(dir: &Path) -> Result<Option<Tokenizer>> {
    if dir.join("tokenizer.json").exists() {
        Tokenizer::from_model_dir(dir).map(Some)
    } else {
        Ok(None)
    }
}

/// Loads a model (a Hugging Face directory or a GGUF file, see [`ModelPath`]) into an
/// engine core on `backend`.
pub fn load_engine_core<B: Backend>(
    dir: &Path,
    options: &LoadOptions,
    backend: B,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EngineCore<B>> {
    let override_tokenizer = override_tokenizer(options)?;
    let model_path = ModelPath::resolve(dir)?;
    let keep_quantized = keep_quantized(&options.quantization, &model_path)?;
    let (ranks, tokenizer) = match model_path {
        ModelPath::HfDir(dir) => load_hf_dir(&dir, options, override_tokenizer, backend, progress)?,
        ModelPath::Gguf(path) => load_gguf(
            &path,
            options,
            override_tokenizer,
            keep_quantized,
            backend,
            progress,
        )?,
    };
    let tokenizer = match (tokenizer, &options.chat_template) {
        (Some(t), Some(arg)) => {
            Some(t.with_chat_template(crate::tokenizer::load_chat_template_arg(arg)?)?)
        }
        (t, _) => t,
    }
    .map(Arc::new);
    let mut group = ModelGroup::new(ranks)?;
    let num_blocks = size_kv_cache(&mut group, options)?;
    if options.cuda_graphs {
        for model in group.models_mut() {
            model.enable_graphs(options.max_num_seqs, options.block_size);
        }
    }
    let engine_config = EngineConfig {
        max_num_seqs: options.max_num_seqs,
        max_logprobs: options.max_logprobs,
        max_num_batched_tokens: options.max_num_batched_tokens,
        block_size: options.block_size,
        num_blocks,
        enable_prefix_caching: options.enable_prefix_caching,
    };
    EngineCore::new_parallel(group, tokenizer, engine_config)
}

/// The model's ranks from `source`: one unsharded model, or each rank's shard
/// of a tensor-parallel group (checked to divide before anything loads).
fn load_ranks<B: Backend>(
    config: &ModelConfig,
    source: &dyn TensorSource,
    dtype: crate::backend::DType,
    options: &LoadOptions,
    backend: B,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Model<B>>> {
    let max_len = options.max_model_len;
    let Some(world) = options.tensor_parallel_size else {
        let model = Model::from_source(config.clone(), source, dtype, max_len, backend, progress)?;
        return Ok(vec![model]);
    };
    check_tensor_parallel(config, world)?;
    let group = backend.tensor_parallel_group(world)?;
    let mut ranks = Vec::with_capacity(world);
    for (rank, (backend, comm)) in group.into_iter().enumerate() {
        // A rank's weights go to its own device.
        backend.bind_thread()?;
        let shard = crate::backend::Shard { rank, world };
        let mut rank_progress = |done: usize, total: usize| {
            progress(rank * total + done, world * total);
        };
        ranks.push(Model::from_source_rank(
            config.clone(),
            source,
            dtype,
            max_len,
            backend,
            Some(TpRank { shard, comm }),
            &mut rank_progress,
        )?);
    }
    Ok(ranks)
}

/// The tokenizer `--tokenizer` names, unless `--skip-tokenizer-init`.
fn override_tokenizer(options: &LoadOptions) -> Result<Option<Tokenizer>> {
    match &options.tokenizer {
        _ if options.skip_tokenizer_init => Ok(None),
        Some(t) => {
            let t = Path::new(t);
            if !t.join("tokenizer.json").is_file() {
                return Err(Error::bad_file(
                    t,
                    "--tokenizer: no tokenizer.json in this directory",
                ));
            }
            tokenizer_from_dir(t)
        }
        None => Ok(None),
    }
}

/// A Hugging Face directory's model ranks and tokenizer (the override's if given).
fn load_hf_dir<B: Backend>(
    dir: &Path,
    options: &LoadOptions,
    override_tokenizer: Option<Tokenizer>,
    backend: B,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Model<B>>, Option<Tokenizer>)> {
    let config = ModelConfig::from_model_dir(dir)?;
    let dtype = resolve_dtype(&options.dtype, &config)?;
    let tokenizer = match override_tokenizer {
        _ if options.skip_tokenizer_init => None,
        Some(t) => Some(t),
        None => Some(tokenizer_from_dir(dir)?.ok_or_else(|| {
            Error::Tokenizer(format!(
                "{} has no tokenizer.json: add one, give one with --tokenizer, or load \
                 the model without a tokenizer (--skip-tokenizer-init, option \
                 \"skip_tokenizer_init\") to serve token-id prompts only",
                dir.display()
            ))
        })?),
    };
    let fp8_scheme = ModelConfig::fp8_scheme_of_model_dir(dir)?;
    let quantization = fp8::hf_quantization(&options.quantization, fp8_scheme.is_some())?;
    let ranks = if options.load_format == "dummy" {
        // Random weights for an FP8 checkpoint's shape are quantized as
        // its own would be served: FP8, one scale per matrix.
        let quantization = match quantization {
            TensorMode::AsStored if fp8_scheme.is_some() => TensorMode::DynamicFp8,
            q => q,
        };
        let inner = &DummyWeights { seed: 0 };
        let source = fp8::Mapped {
            inner,
            quantization,
        };
        load_ranks(&config, &source, dtype, options, backend, progress)?
    } else {
        let ckpt = Checkpoint::open(dir)?.with_fp8(fp8_scheme);
        let inner = &ckpt;
        let source = fp8::Mapped {
            inner,
            quantization,
        };
        load_ranks(&config, &source, dtype, options, backend, progress)?
    };
    Ok((ranks, tokenizer))
}

/// A GGUF file's model and tokenizer (the override's if given).
fn load_gguf<B: Backend>(
    path: &Path,
    options: &LoadOptions,
    override_tokenizer: Option<Tokenizer>,
    keep_quantized: bool,
    backend: B,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Model<B>>, Option<Tokenizer>)> {
    let file = GgufFile::open(path)?;
    let config = crate::gguf::config::model_config(&file)?;
    let (_, permuted_qk) = crate::gguf::config::arch_of(&file)?;
    let dtype = resolve_dtype(&options.dtype, &config)?;
    let tokenizer = match override_tokenizer {
        _ if options.skip_tokenizer_init => None,
        Some(t) => Some(t),
        None => Some(Tokenizer::from_gguf(&file)?),
    };
    let source = GgufSource {
        file: &file,
        config: &config,
        permuted_qk,
        keep_quantized,
    };
    let source = fp8::Mapped {
        inner: &source,
        quantization: fp8::gguf_quantization(&options.quantization),
    };
    let ranks = load_ranks(&config, &source, dtype, options, backend, progress)?;
    Ok((ranks, tokenizer))
}

/// Sets the KV cache's dtype on every rank and returns its size in blocks
/// (every rank's pools have as many): as asked, or what the device leaves, or
/// the CPU's default (`host_kv.rs`); checked to fit.
fn size_kv_cache<B: Backend>(group: &mut ModelGroup<B>, options: &LoadOptions) -> Result<usize> {
    let world = group.world();
    let model = group.lead();
    let kv_dtype = resolve_kv_dtype(
        &options.kv_cache_dtype,
        model.dtype,
        model.backend().kv_dtypes(),
    )?;
    for rank in group.models_mut() {
        rank.set_kv_dtype(kv_dtype)?;
    }
    let (num_blocks, asked) = match (options.num_kv_blocks, options.kv_cache_memory) {
        (Some(n), _) => (n, format!("--num-kv-blocks {n}")),
        (None, Some(bytes)) => (
            bytes / group.lead().kv_bytes_per_block(options.block_size),
            format!("--kv-cache-memory {}", crate::memory::human_bytes(bytes)),
        ),
        (None, None) => default_kv_blocks(group, options)?,
    };
    let model = group.lead();
    let bytes_per_block = model.kv_bytes_per_block(options.block_size);
    check_kv_size(
        model,
        num_blocks,
        (bytes_per_block, world),
        options.block_size,
        &asked,
    )?;
    if num_blocks == 0 {
        return Err(Error::invalid(format!(
            "the KV cache holds no block: one block of {} tokens takes {bytes_per_block} bytes",
            options.block_size
        )));
    }
    Ok(num_blocks)
}

/// Without a size asked for: what the device's memory leaves (a GPU), else
/// [`host_kv_blocks`]; with how the size was chosen, for errors.
fn default_kv_blocks<B: Backend>(
    group: &mut ModelGroup<B>,
    options: &LoadOptions,
) -> Result<(usize, String)> {
    let utilization = options
        .gpu_memory_utilization
        .unwrap_or(DEFAULT_GPU_MEMORY_UTILIZATION);
    match kv_blocks_for_device(
        group,
        options.block_size,
        options.max_num_batched_tokens,
        utilization,
    )? {
        Some(blocks) => Ok((blocks, "--gpu-memory-utilization".to_string())),
        None => {
            let bytes_per_block = group.lead().kv_bytes_per_block(options.block_size);
            let space = std::env::var(CPU_KV_SPACE_VAR).ok();
            host_kv_blocks(
                space.as_deref(),
                bytes_per_block.saturating_mul(group.world()),
                group.lead().max_positions.div_ceil(options.block_size),
                crate::memory::host_memory_bytes(),
            )
        }
    }
}

/// A KV cache of `num_blocks` must be addressable (int32 block ids on the
/// device) and fit: in each rank's device's memory, or the machine's on the
/// CPU (where the `ranks` share it).
fn check_kv_size<B: Backend>(
    model: &Model<B>,
    num_blocks: usize,
    (bytes_per_block, ranks): (usize, usize),
    block_size: usize,
    asked: &str,
) -> Result<()> {
    let hint = "lower --num-kv-blocks, --kv-cache-memory or --max-model-len";
    let what = format!("the KV cache ({asked})");
    let limit = i32::MAX as usize;
    if num_blocks > limit {
        return Err(Error::invalid(format!(
            "{what}: {num_blocks} blocks are more than block ids can address ({limit}); {hint}"
        )));
    }
    match model.backend().memory_info()? {
        None => {
            let host_bytes = bytes_per_block.saturating_mul(ranks);
            crate::memory::checked_host_bytes(num_blocks, host_bytes, &what, "blocks", hint)?;
        }
        Some(memory) => {
            let fits = memory.free / bytes_per_block.max(1);
            if num_blocks > fits {
                return Err(Error::invalid(format!(
                    "{what}: {num_blocks} blocks of {block_size} tokens ({} each) need {}, more \
                     than the {} free on the device (at most {fits} blocks fit); {hint}",
                    crate::memory::human_bytes(bytes_per_block),
                    num_blocks
                        .checked_mul(bytes_per_block)
                        .map_or_else(|| "more than 16 EiB".into(), crate::memory::human_bytes),
                    crate::memory::human_bytes(memory.free),
                )));
            }
        }
    }
    Ok(())
}
