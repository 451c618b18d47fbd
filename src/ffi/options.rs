//! `engine_options_t`: how to load and size an engine, set key by key so that
//! new settings never change a struct a compiled caller knows.

use std::ffi::{c_char, c_void};

use super::{call, cstr_arg, engine_status, write_out, FfiError, FfiResult};
use crate::backend::{DType, KvDType};
use crate::loader::LoadOptions;

/// Called while `engine_new` loads the weights: `done` of `total` steps (tensor
/// groups) are loaded; the first call has `done` 0, the last `done == total`.
/// Runs on the thread that called `engine_new`, before `engine_new` returns.
pub type engine_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, done: u64, total: u64)>;

/// Engine settings (an opaque handle). Create with `engine_options_new`, fill with
/// `engine_options_set`, pass to `engine_new`, release with `engine_options_free`.
pub struct engine_options_t {
    pub(crate) model: Option<String>,
    pub(crate) served_model_name: Option<String>,
    pub(crate) load: LoadOptions,
    /// Seed of the generator that seeds requests without a seed of their own.
    pub(crate) seed: u64,
    pub(crate) progress: engine_progress_fn,
    pub(crate) progress_user_data: *mut c_void,
    /// Where the model runs ("device").
    pub(crate) device: Device,
    /// Threads of the engine's compute pool ("threads"); None: rayon's default.
    pub(crate) threads: Option<usize>,
}

/// The "device" option: the CPU, (built with the `cuda` feature) GPU 0, or
/// "auto": GPU 0 where this build has CUDA and the machine a GPU, else the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Device {
    #[default]
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
    Auto,
}

impl Device {
    /// The "device" option's value.
    fn parse(value: &str) -> FfiResult<Device> {
        Ok(match value.trim().to_ascii_lowercase().as_str() {
            "cpu" => Device::Cpu,
            #[cfg(feature = "cuda")]
            "cuda" => Device::Cuda,
            "auto" => Device::Auto,
            _ => {
                return Err(FfiError::new(
                    engine_status::ENGINE_ERR_UNSUPPORTED,
                    format!(
                    "option \"device\": \"{value}\" is not supported in this build (only {} {})",
                    if cfg!(feature = "cuda") {
                        "\"auto\", \"cpu\" and \"cuda\""
                    } else {
                        "\"auto\" and \"cpu\""
                    },
                    if cfg!(feature = "cuda") { "are" } else { "is" },
                ),
                ))
            }
        })
    }

    /// What "auto" picks, with why (for the log); other choices stand.
    pub(crate) fn resolve(self) -> (Device, Option<String>) {
        if self != Device::Auto {
            return (self, None);
        }
        #[cfg(feature = "cuda")]
        {
            match crate::backend::cuda::gpu_count() {
                Ok(n) if n > 0 => (Device::Cuda, Some(format!("auto: {n} CUDA GPU(s) found"))),
                Ok(_) => (
                    Device::Cpu,
                    Some("auto: the CUDA driver sees no GPU".into()),
                ),
                Err(e) => (Device::Cpu, Some(format!("auto: no usable GPU ({e})"))),
            }
        }
        #[cfg(not(feature = "cuda"))]
        (
            Device::Cpu,
            Some("auto: this build has no CUDA backend".into()),
        )
    }
}

/// The keys `engine_options_set` takes, for the "unknown option" message.
const KEYS: &[&str] = &[
    "model",
    "served_model_name",
    "device",
    "dtype",
    "max_model_len",
    "block_size",
    "num_kv_blocks",
    "kv_cache_bytes",
    "kv_cache_dtype",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_logprobs",
    "max_num_batched_tokens",
    "enable_prefix_caching",
    "seed",
    "chat_template",
    "tokenizer",
    "skip_tokenizer_init",
    "enforce_eager",
    "quantization",
    "threads",
    "tensor_parallel_size",
    "load_format",
];

/// The most "threads" an engine takes: far beyond any machine, small enough
/// that a typo cannot ask for millions of threads.
const MAX_THREADS: usize = 4096;

impl Default for engine_options_t {
    fn default() -> Self {
        engine_options_t {
            model: None,
            served_model_name: None,
            load: LoadOptions::default(),
            seed: 0,
            progress: None,
            progress_user_data: std::ptr::null_mut(),
            device: Device::Cpu,
            threads: None,
        }
    }
}

fn positive(key: &str, value: &str) -> FfiResult<usize> {
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(FfiError::invalid(format!(
            "option \"{key}\": expected a positive integer, got \"{value}\""
        ))),
    }
}

fn non_negative(key: &str, value: &str) -> FfiResult<usize> {
    value.trim().parse::<usize>().map_err(|_| {
        FfiError::invalid(format!(
            "option \"{key}\": expected a non-negative integer, got \"{value}\""
        ))
    })
}

fn fraction(key: &str, value: &str) -> FfiResult<f64> {
    match value.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(FfiError::invalid(format!(
            "option \"{key}\": expected a fraction in (0, 1], got \"{value}\""
        ))),
    }
}

fn threads(key: &str, value: &str) -> FfiResult<usize> {
    match positive(key, value)? {
        n if n > MAX_THREADS => Err(FfiError::invalid(format!(
            "option \"threads\": at most {MAX_THREADS}, got {n}"
        ))),
        n => Ok(n),
    }
}

fn boolean(key: &str, value: &str) -> FfiResult<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(FfiError::invalid(format!(
            "option \"{key}\": expected true or false, got \"{value}\""
        ))),
    }
}

impl engine_options_t {
    /// Applies one setting. Keys may use '-' for '_' (vLLM's flag spelling).
    pub(crate) fn set(&mut self, key: &str, value: &str) -> FfiResult<()> {
        let normalized = key.trim().replace('-', "_");
        let load = &mut self.load;
        match normalized.as_str() {
            "model" => self.model = Some(value.to_string()),
            "served_model_name" => self.served_model_name = Some(value.to_string()),
            "device" => self.device = Device::parse(value)?,
            "dtype" => {
                if !value.trim().eq_ignore_ascii_case("auto") && DType::parse(value).is_none() {
                    return Err(FfiError::invalid(format!(
                        "option \"dtype\": unknown dtype \"{value}\": expected auto, float32 (float), float16 (half) or bfloat16"
                    )));
                }
                load.dtype = value.trim().to_string();
            }
            "max_model_len" => load.max_model_len = Some(positive(key, value)?),
            "block_size" => {
                let n = positive(key, value)?;
                if ![8, 16, 32].contains(&n) {
                    return Err(FfiError::invalid(format!(
                        "option \"block_size\": must be 8, 16 or 32, got {n}"
                    )));
                }
                load.block_size = n;
            }
            "num_kv_blocks" => {
                load.num_kv_blocks = Some(positive(key, value)?);
                load.kv_cache_memory = None;
            }
            "kv_cache_bytes" => {
                load.kv_cache_memory = Some(positive(key, value)?);
                load.num_kv_blocks = None;
            }
            "kv_cache_dtype" => load.kv_cache_dtype = kv_cache_dtype(value)?,
            "gpu_memory_utilization" => {
                load.gpu_memory_utilization = Some(fraction(key, value)?)
            }
            "max_num_seqs" => load.max_num_seqs = positive(key, value)?,
            "max_logprobs" => load.max_logprobs = non_negative(key, value)?,
            "max_num_batched_tokens" => load.max_num_batched_tokens = positive(key, value)?,
            "enable_prefix_caching" => load.enable_prefix_caching = boolean(key, value)?,
            "seed" => {
                self.seed = value.trim().parse().map_err(|_| {
                    FfiError::invalid(format!(
                        "option \"seed\": expected an integer from 0 to 18446744073709551615, got \"{value}\""
                    ))
                })?
            }
            "chat_template" => load.chat_template = Some(value.to_string()),
            "tokenizer" => load.tokenizer = Some(value.to_string()),
            "skip_tokenizer_init" => load.skip_tokenizer_init = boolean(key, value)?,
            "enforce_eager" => {
                load.cuda_graphs = !boolean(key, value)? && crate::loader::cuda_graphs_from_env()
            }
            "quantization" => {
                let served = ["auto", "gguf", "fp8", "compressed-tensors", "none"];
                let expected = "auto, gguf, fp8, compressed-tensors or none";
                load.quantization = one_of(key, value, &served, expected)?
            }
            "threads" => self.threads = Some(threads(key, value)?),
            "tensor_parallel_size" => load.tensor_parallel_size = Some(positive(key, value)?),
            "load_format" => {
                let served = "auto (the weights from the model's files) or dummy (random weights)";
                load.load_format = one_of(key, value, &["auto", "dummy"], served)?
            }
            _ => {
                return Err(FfiError::invalid(format!(
                    "unknown option \"{key}\" (known options: {})",
                    KEYS.join(", ")
                )))
            }
        }
        Ok(())
    }
}

/// A `kv_cache_dtype` value, lowercased: `auto` or a [`KvDType`] name.
fn kv_cache_dtype(value: &str) -> FfiResult<String> {
    let name = value.trim().to_ascii_lowercase();
    if name != "auto" && KvDType::parse(&name).is_none() {
        return Err(FfiError::invalid(format!(
            "option \"kv_cache_dtype\": unknown dtype \"{value}\": expected {}",
            KvDType::ACCEPTED
        )));
    }
    Ok(name)
}

/// `value`, trimmed and lowercased, if it is one of `allowed`; else an error
/// saying what `key` serves.
fn one_of(key: &str, value: &str, allowed: &[&str], served: &str) -> FfiResult<String> {
    let name = value.trim().to_ascii_lowercase();
    if !allowed.contains(&name.as_str()) {
        return Err(FfiError::invalid(format!(
            "option \"{key}\": \"{value}\" is not served: expected {served}"
        )));
    }
    Ok(name)
}

/// Creates an options object holding the defaults, and stores it in `*out`.
///
/// Ownership: the caller owns `*out` and releases it with `engine_options_free`
/// (after `engine_new`, which copies what it needs, or at any time).
/// Thread safety: any thread.
/// Errors: ENGINE_ERR_NULL (`out` is NULL).
///
/// # Safety
/// `out` must be NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn engine_options_new(out: *mut *mut engine_options_t) -> engine_status {
    call("engine_options_new", || {
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        let options = Box::into_raw(Box::<engine_options_t>::default());
        // SAFETY: `out` is non-NULL and writable (the caller's guarantee).
        unsafe { write_out(out, options, "out") }
    })
}

/// Sets one option from its text form. `key` and `value` are NUL-terminated
/// UTF-8; keys may also be spelled with '-' for '_' (as vLLM's flags). Setting a
/// key again replaces its value. The keys (defaults in brackets):
///
/// - "model": what to load (required): a Hugging Face model directory
///   (config.json, safetensors), a GGUF file, or a directory holding exactly one
///   .gguf file and no config.json.
/// - "served_model_name": the name `engine_model_info_get` reports [the "model" value].
/// - "device": where to run: "cpu", "cuda" (GPU 0; only in a build with the `cuda`
///   feature) or "auto" (GPU 0 where the build has CUDA and the machine a GPU, else
///   the CPU; `engine_model_info_get`'s `device` says which and why); anything else
///   fails with ENGINE_ERR_UNSUPPORTED ["cpu"].
/// - "dtype": "auto" (the config's), "float32"/"float", "float16"/"half", "bfloat16" ["auto"].
///   On a GGUF model it is the dtype of the tensors that are not kept quantized.
/// - "quantization": as vLLM's --quantization: "auto" or "gguf" serve a GGUF file's
///   Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K matrices quantized on the CPU, as
///   llama.cpp does (the activations quantized to 8 bits per block), and "auto" an
///   FP8 checkpoint's (compressed-tensors) e4m3 weights with their scales; "fp8"
///   quantizes a 16/32-bit checkpoint's projections to FP8 e4m3 at load (one dynamic
///   scale per matrix, as vLLM); "none" dequantizes every tensor to "dtype" at load
///   (the exact-reference path). Other GGUF types are dequantized either way; a CUDA
///   device dequantizes all ["auto"].
/// - "max_model_len": longest sequence, prompt plus output [the config's
///   max_position_embeddings].
/// - "block_size": tokens per KV cache block: 8, 16 or 32 [16].
/// - "num_kv_blocks": KV cache size in blocks [on the CPU, VLLM_CPU_KVCACHE_SPACE
///   GiB (the environment variable vLLM's CPU backend reads), else 4 GiB (at most
///   half the machine's memory), and never fewer than four sequences of
///   max_model_len; on a GPU, see "gpu_memory_utilization"].
/// - "kv_cache_bytes": KV cache size in bytes, instead of "num_kv_blocks" (the last one
///   set wins).
/// - "kv_cache_dtype": the KV cache's dtype, as vLLM's --kv-cache-dtype: "auto" (the
///   weights' dtype where the device keeps such a cache, else float32), "float32",
///   "bfloat16", "float16", "fp8" (= "fp8_e4m3") or "fp8_e5m2"; a 16-bit cache halves
///   the bytes attention reads, an FP8 one quarters them (stored divided by the
///   checkpoint's per-layer k_scale / v_scale where it has them, else 1.0, as vLLM).
///   The CPU keeps all five; CUDA keeps the cache in the model's dtype (its
///   activations' too), so "auto" is that dtype there and any other name fails
///   `engine_new` with "not implemented" naming the dtype and the device ["auto"].
/// - "gpu_memory_utilization": on a GPU, when neither size above is set, the share of
///   the GPU's memory (0 to 1) for the weights, the largest step (measured by running
///   one at load) and the KV cache, which takes the rest; a model that leaves no room
///   for one block fails to load with the numbers [0.9]. No effect on the CPU.
/// - "max_num_seqs": sequences in one batch at most, up to 65536 (more fails
///   `engine_new`) [256].
/// - "max_logprobs": most "logprobs" or "prompt_logprobs" a request may ask for,
///   up to 1024 (more fails `engine_new`); more is refused with vLLM's message
///   (vLLM's --max-logprobs) [20].
/// - "max_num_batched_tokens": tokens in one step at most; longer prompts are prefilled
///   in chunks [2048].
/// - "enable_prefix_caching": "true"/"false" (or 1/0, yes/no, on/off) ["false"].
/// - "seed": seed of the generator that gives every request without a "seed" of its
///   own one, in submission order (vLLM's --seed) [0].
/// - "chat_template": a chat template replacing the model's: a file path, or the
///   template itself (as vLLM's --chat-template) [the model's].
/// - "tokenizer": a Hugging Face tokenizer directory (tokenizer.json, ...) used
///   instead of the model's own tokenizer (as vLLM's --tokenizer) [the model's].
/// - "skip_tokenizer_init": "true"/"false": load no tokenizer (vLLM's
///   --skip-tokenizer-init): prompts must be token ids (text and chat prompts fail
///   with ENGINE_ERR_TOKENIZER) and outputs have no text. Without it, a model
///   directory with no tokenizer.json fails to load (ENGINE_ERR_MODEL) ["false"].
/// - "enforce_eager": "true"/"false": no CUDA graphs (vLLM's --enforce-eager). Until
///   they have run on a GPU, graphs are off unless the environment sets
///   ENGINE_CUDA_GRAPHS=1 ["false"].
/// - "threads": threads of the engine's own compute pool (the CPU backend's matmuls,
///   attention, weight conversion at load and guided-decoding masks run on it), 1 to
///   4096 [RAYON_NUM_THREADS when set, else the CPUs this process may run on (its
///   scheduler affinity)].
/// - "tensor_parallel_size": as vLLM's --tensor-parallel-size: the model sharded
///   Megatron-style over N ranks (1 to 64): GPUs 0..N joined by NCCL on "cuda",
///   worker threads sharing "threads" on the CPU. N must divide the attention heads
///   and the MLP width, and the KV heads (or be a multiple of them: they are then
///   replicated); on "cuda", N more than the GPUs present fails. Set to 1, the one
///   rank still runs its collectives (NCCL with one GPU) [unset: one unsharded
///   model, no collectives].
/// - "load_format": as vLLM's --load-format: "auto" reads the weights from the
///   model's files; "dummy" makes them up (uniform in [-1e-3, 1e-3], the same
///   every run) for a Hugging Face directory that may hold only config.json
///   (benchmarks of a model's shape without its weights) ["auto"].
///
/// Sizes are checked when `engine_new` loads the model: a KV cache or a
/// max_model_len larger than the memory (the device's, or the machine's on the
/// CPU) or than ids can address fails with ENGINE_ERR_INVALID_ARGUMENT naming the
/// size and what fits, as does a max_model_len above the config's
/// max_position_embeddings (vLLM's rule).
///
/// Values are checked here where they can be (numbers, "device", "dtype",
/// "block_size"); the rest when `engine_new` loads the model.
///
/// Thread safety: not on the same options object from two threads at once.
/// Errors: ENGINE_ERR_NULL, ENGINE_ERR_UTF8, ENGINE_ERR_INVALID_ARGUMENT (unknown key
/// (the message names it) or a bad value), ENGINE_ERR_UNSUPPORTED ("device").
///
/// # Safety
/// `options` must be NULL or a live options object; `key` and `value` NULL or
/// NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn engine_options_set(
    options: *mut engine_options_t,
    key: *const c_char,
    value: *const c_char,
) -> engine_status {
    call("engine_options_set", || {
        // SAFETY: NULL or a live options object not used by another thread now
        // (the caller's guarantee); `as_mut` checks NULL.
        let options = unsafe { options.as_mut() }.ok_or_else(|| FfiError::null("options"))?;
        // SAFETY: NULL or NUL-terminated (the caller's guarantee).
        let key = unsafe { cstr_arg(key, "key") }?;
        // SAFETY: as for `key`.
        let value = unsafe { cstr_arg(value, "the value") }?;
        options.set(key, value)
    })
}

/// Sets (or, with a NULL `progress`, clears) the function `engine_new` calls as it
/// loads the weights; `user_data` is passed to it unchanged.
///
/// Thread safety: not on the same options object from two threads at once.
/// Errors: ENGINE_ERR_NULL (`options` is NULL).
///
/// # Safety
/// `options` must be NULL or a live options object.
#[no_mangle]
pub unsafe extern "C" fn engine_options_set_progress(
    options: *mut engine_options_t,
    progress: engine_progress_fn,
    user_data: *mut c_void,
) -> engine_status {
    call("engine_options_set_progress", || {
        // SAFETY: NULL or a live options object not used by another thread now.
        let options = unsafe { options.as_mut() }.ok_or_else(|| FfiError::null("options"))?;
        options.progress = progress;
        options.progress_user_data = user_data;
        Ok(())
    })
}

/// Releases an options object. NULL is a no-op.
///
/// Thread safety: not while another thread uses the same object.
///
/// # Safety
/// `options` must be NULL or a live options object, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn engine_options_free(options: *mut engine_options_t) {
    let _ = call("engine_options_free", || {
        if !options.is_null() {
            // SAFETY: a live object from `engine_options_new` (Box::into_raw), freed once.
            drop(unsafe { Box::from_raw(options) });
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_check_their_values() {
        let mut o = engine_options_t::default();
        o.set("max-num-seqs", "8").unwrap();
        assert_eq!(o.load.max_num_seqs, 8);
        assert_eq!(o.load.max_logprobs, 20, "vLLM's default");
        o.set("max-logprobs", "0").unwrap();
        assert_eq!(o.load.max_logprobs, 0);
        let e = o.set("max_logprobs", "-1").unwrap_err();
        assert!(
            e.message.contains("expected a non-negative integer"),
            "{e:?}"
        );
        o.set("enable_prefix_caching", "on").unwrap();
        assert!(o.load.enable_prefix_caching);
        let e = o.set("block_size", "12").unwrap_err();
        assert!(e.message.contains("must be 8, 16 or 32, got 12"), "{e:?}");
        let e = o.set("colour", "blue").unwrap_err();
        assert!(e.message.contains("unknown option \"colour\""), "{e:?}");
        let e = o.set("device", "tpu").unwrap_err();
        assert_eq!(e.status, engine_status::ENGINE_ERR_UNSUPPORTED);
        assert!(e.message.contains("not supported in this build"), "{e:?}");
        // "cuda" is taken exactly when the backend is built in; "auto" always.
        assert_eq!(o.set("device", "cuda").is_ok(), cfg!(feature = "cuda"));
        o.set("device", "auto").unwrap();
        assert_eq!(o.device, Device::Auto);
        o.set("gpu-memory-utilization", "0.5").unwrap();
        assert_eq!(o.load.gpu_memory_utilization, Some(0.5));
        for bad in ["0", "1.5", "-1", "nan", "x"] {
            let e = o.set("gpu_memory_utilization", bad).unwrap_err();
            assert!(e.message.contains("a fraction in (0, 1]"), "{e:?}");
        }
        o.set("threads", "3").unwrap();
        assert_eq!(o.threads, Some(3));
        for bad in ["0", "4097", "x"] {
            assert!(o.set("threads", bad).is_err(), "{bad}");
        }
        let e = o.set("max_model_len", "0").unwrap_err();
        assert!(e.message.contains("positive integer"), "{e:?}");
        o.set("enforce_eager", "true").unwrap();
        assert!(!o.load.cuda_graphs);
        o.set("enforce_eager", "false").unwrap();
        let from_env = crate::loader::cuda_graphs_from_env();
        assert_eq!(
            o.load.cuda_graphs, from_env,
            "false: as the environment says"
        );
    }
}
