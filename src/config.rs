//! Hugging Face `config.json` for the Llama family (Llama 2/3, Mistral, Qwen2),
//! in both the classic hub layout (`rope_theta`, `rope_scaling`, `torch_dtype`)
//! and the transformers-5 layout (`rope_parameters`, `dtype`).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::backend::{DType, KvDType};
use crate::error::{read_json, Error, Result};

pub mod fp8;

/// Resolves vLLM's `--dtype` (`auto` or a dtype name) against the config's dtype.
/// `auto` keeps the config's dtype (float32 when the config names none).
pub fn resolve_dtype(requested: &str, config: &ModelConfig) -> Result<DType> {
    if requested.trim().eq_ignore_ascii_case("auto") {
        return Ok(config.dtype.unwrap_or(DType::F32));
    }
    DType::parse(requested).ok_or_else(|| {
        Error::invalid(format!(
            "unknown dtype {requested:?}: expected auto, float32 (float), float16 (half) or bfloat16"
        ))
    })
}

/// vLLM's `--kv-cache-dtype`: `auto` keeps the KV cache in the model's dtype
/// where the backend can (`supported`), else in float32; a named dtype (a
/// weight dtype, `fp8` = `fp8_e4m3`, `fp8_e5m2`) is checked against the
/// backend when the model takes it.
pub fn resolve_kv_dtype(requested: &str, model: DType, supported: &[KvDType]) -> Result<KvDType> {
    if requested.trim().eq_ignore_ascii_case("auto") {
        let model = KvDType::from(model);
        return Ok(if supported.contains(&model) {
            model
        } else {
            KvDType::F32
        });
    }
    KvDType::parse(requested).ok_or_else(|| {
        Error::invalid(format!(
            "unknown kv_cache_dtype {requested:?}: expected {}",
            KvDType::ACCEPTED
        ))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    fn from_hf_name(name: &str) -> Option<Arch> {
        [Arch::Llama, Arch::Mistral, Arch::Qwen2]
            .into_iter()
            .find(|a| a.hf_name() == name)
    }
}

/// Rotary embedding frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama 3.1: smooth interpolation between low and high frequency bands.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Position interpolation: positions divided by `factor`.
    Linear {
        factor: f64,
    },
}

/// What the engine needs from `config.json`, validated.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer: attend only to the last `w` positions (self included).
    pub sliding_window: Vec<Option<usize>>,
    /// Stored dtype named by the config (`torch_dtype` or `dtype`), if any.
    pub dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The raw JSON, with every field the families use; unknown fields are ignored
/// as transformers ignores them.
#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    /// The classic layout's scaling; anything but an object counts as none.
    #[serde(default, deserialize_with = "object_or_none")]
    rope_scaling: Option<RawRope>,
    /// transformers 5: `rope_theta` and the scaling in one object.
    #[serde(default, deserialize_with = "object_or_none")]
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
    quantization_config: Option<Value>,
}

/// `rope_scaling` (classic layout) or `rope_parameters` (transformers 5). A key
/// of the wrong type counts as absent, as transformers reads them with `.get`:
/// the checks in [`parse_rope_scaling`] name what is missing.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRope {
    /// `Some(None)`: present but not a string (which means "default", whatever `type` says).
    #[serde(deserialize_with = "loose")]
    rope_type: Option<Option<String>>,
    /// The older name of `rope_type`.
    #[serde(rename = "type", deserialize_with = "loose")]
    legacy_type: Option<Option<String>>,
    #[serde(deserialize_with = "lenient")]
    rope_theta: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    factor: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    low_freq_factor: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    high_freq_factor: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    original_max_position_embeddings: Option<f64>,
}

/// A value of type `T`, or none when it has another type.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// A present key: `Some(value)` when it has type `T`, `Some(None)` otherwise.
fn loose<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    lenient(d).map(Some)
}

/// A JSON object read as `T`; any other value as none.
fn object_or_none<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(if v.is_object() {
        serde_json::from_value(v).ok()
    } else {
        None
    })
}

impl ModelConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let raw: RawConfig = read_json(&path)?;
        ModelConfig::from_raw(raw).map_err(|msg| Error::bad_file(&path, msg))
    }

    /// The FP8 scheme of the `quantization_config` in `dir/config.json` (none
    /// for an unquantized checkpoint; others are refused by [`ModelConfig::from_model_dir`]).
    pub fn fp8_scheme_of_model_dir(dir: &Path) -> Result<Option<fp8::Fp8Scheme>> {
        let path = dir.join("config.json");
        let raw: RawConfig = read_json(&path)?;
        raw.fp8_scheme().map_err(|msg| Error::bad_file(&path, msg))
    }

    /// Parses the text of a `config.json`.
    pub fn from_json_str(text: &str) -> std::result::Result<ModelConfig, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        ModelConfig::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> std::result::Result<ModelConfig, String> {
        let arch = raw.arch()?;
        let dims = raw.dims()?;
        raw.check_activation()?;
        raw.check_quantization()?;
        let max_position_embeddings = raw.max_position_embeddings.unwrap_or(2048);
        let (rope_theta, rope_scaling) = raw.rope(max_position_embeddings)?;
        let sliding_window = raw.sliding_window(arch, dims.num_layers)?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        Ok(ModelConfig {
            arch,
            hidden_size: dims.hidden_size,
            intermediate_size: dims.intermediate_size,
            num_layers: dims.num_layers,
            num_heads: dims.num_heads,
            num_kv_heads: dims.num_kv_heads,
            head_dim: dims.head_dim,
            vocab_size: dims.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch != Arch::Qwen2 && attention_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            sliding_window,
            dtype: raw.dtype()?,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_ids()?,
        })
    }

    /// Heads of queries that share one KV head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// The most layers a config may declare: far above any published model (the
/// deepest have a few hundred), and small enough that the tables kept per layer
/// are allocated before the checkpoint is read.
pub const MAX_LAYERS: usize = 4096;

/// A clear error for a layer count above [`MAX_LAYERS`] (`key` names the field).
pub fn check_num_layers(num_layers: usize, key: &str) -> std::result::Result<(), String> {
    if num_layers > MAX_LAYERS {
        return Err(format!(
            "{key} is {num_layers}, more than the {MAX_LAYERS} layers this engine serves"
        ));
    }
    Ok(())
}

/// The model's shape, checked for consistency.
struct Dims {
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
}

impl RawConfig {
    fn arch(&self) -> std::result::Result<Arch, String> {
        let arch_names = self.architectures.clone().unwrap_or_default();
        arch_names
            .iter()
            .find_map(|n| Arch::from_hf_name(n))
            .ok_or_else(|| {
                format!(
                    "unsupported architecture {:?} (model_type {:?}); supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM",
                    arch_names,
                    self.model_type.as_deref().unwrap_or("?")
                )
            })
    }

    fn dims(&self) -> std::result::Result<Dims, String> {
        let need =
            |v: Option<usize>, name: &str| v.ok_or_else(|| format!("missing field `{name}`"));
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let intermediate_size = need(self.intermediate_size, "intermediate_size")?;
        let num_layers = need(self.num_hidden_layers, "num_hidden_layers")?;
        let num_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let vocab_size = need(self.vocab_size, "vocab_size")?;
        let num_kv_heads = self.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => return Err(format!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads} and no head_dim is given")),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(format!(
                "head_dim must be even and positive, got {head_dim}"
            ));
        }
        if hidden_size == 0 || intermediate_size == 0 || num_layers == 0 || vocab_size == 0 {
            return Err(
                "hidden_size, intermediate_size, num_hidden_layers and vocab_size must be positive"
                    .into(),
            );
        }
        check_num_layers(num_layers, "num_hidden_layers")?;
        Ok(Dims {
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
        })
    }

    /// A checkpoint quantized by a method with no kernels here (its
    /// `quantization_config`) is refused by name, before its tensors (packed
    /// int weights, FP8 with scales) are misread as plain ones.
    fn check_quantization(&self) -> std::result::Result<(), String> {
        self.fp8_scheme().map(|_| ())
    }

    /// The FP8 scheme (compressed-tensors, see [`fp8`]) of `quantization_config`,
    /// none without one, or why the method is not served.
    fn fp8_scheme(&self) -> std::result::Result<Option<fp8::Fp8Scheme>, String> {
        let Some(q) = &self.quantization_config else {
            return Ok(None);
        };
        let method = q["quant_method"].as_str().unwrap_or("(no quant_method)");
        if method == "compressed-tensors" {
            return fp8::compressed_tensors_scheme(q)
                .map(Some)
                .map_err(|e| format!("quantization_config: {e}"));
        }
        let format = match q["format"].as_str() {
            Some(f) => format!(" (format {f:?})"),
            None => String::new(),
        };
        Err(format!(
            "quantization_config: quant_method {method:?}{format} is not served: this engine \
             loads unquantized checkpoints, FP8 compressed-tensors checkpoints and GGUF files \
             (serve a GGUF quantization or the unquantized model)"
        ))
    }

    fn check_activation(&self) -> std::result::Result<(), String> {
        match &self.hidden_act {
            Some(act) if act != "silu" && act != "swish" => Err(format!(
                "unsupported hidden_act {act:?}: only silu is supported"
            )),
            _ => Ok(()),
        }
    }

    /// `rope_theta` and the frequency scaling, from either layout.
    fn rope(
        &self,
        max_position_embeddings: usize,
    ) -> std::result::Result<(f64, RopeScaling), String> {
        // transformers 5 moved rope_theta and the scaling into `rope_parameters`.
        let rope_params = self.rope_parameters.as_ref();
        let rope_theta = self
            .rope_theta
            .or_else(|| rope_params.and_then(|p| p.rope_theta))
            .unwrap_or(10000.0);
        let scaling = self.rope_scaling.as_ref().or(rope_params);
        let rope_scaling = parse_rope_scaling(scaling, max_position_embeddings)?;
        Ok((rope_theta, rope_scaling))
    }

    /// Per layer, the attention window if the layer slides.
    fn sliding_window(
        &self,
        arch: Arch,
        num_layers: usize,
    ) -> std::result::Result<Vec<Option<usize>>, String> {
        let sliding_window = match arch {
            Arch::Mistral => vec![self.sliding_window; num_layers],
            Arch::Llama | Arch::Qwen2 => {
                let window = self
                    .sliding_window
                    .filter(|_| self.use_sliding_window.unwrap_or(false));
                match (&self.layer_types, window) {
                    (Some(types), _) if types.len() == num_layers => types
                        .iter()
                        .map(|t| {
                            if t == "sliding_attention" {
                                self.sliding_window
                            } else {
                                None
                            }
                        })
                        .collect(),
                    (_, Some(w)) => {
                        let first = self.max_window_layers.unwrap_or(num_layers);
                        (0..num_layers).map(|i| (i >= first).then_some(w)).collect()
                    }
                    _ => vec![None; num_layers],
                }
            }
        };
        if sliding_window.contains(&Some(0)) {
            return Err("sliding_window must be positive".into());
        }
        Ok(sliding_window)
    }

    fn dtype(&self) -> std::result::Result<Option<DType>, String> {
        let dtype_name = self.torch_dtype.as_deref().or(self.dtype.as_deref());
        match dtype_name {
            None => Ok(None),
            Some(n) => Ok(Some(
                DType::parse(n).ok_or_else(|| format!("unsupported dtype {n:?}"))?,
            )),
        }
    }

    fn eos_token_ids(&self) -> std::result::Result<Vec<u32>, String> {
        match &self.eos_token_id {
            Some(v) => {
                Ok(token_id_list(v)
                    .ok_or("eos_token_id must be an integer or a list of integers")?)
            }
            None => Ok(vec![]),
        }
    }
}

/// `eos_token_id` may be one integer or a list.
pub fn token_id_list(v: &Value) -> Option<Vec<u32>> {
    match v {
        Value::Null => Some(vec![]),
        Value::Number(n) => Some(vec![u32::try_from(n.as_u64()?).ok()?]),
        Value::Array(items) => items
            .iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
        _ => None,
    }
}

fn parse_rope_scaling(
    v: Option<&RawRope>,
    max_pos: usize,
) -> std::result::Result<RopeScaling, String> {
    let Some(v) = v else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .rope_type
        .as_ref()
        .or(v.legacy_type.as_ref())
        .and_then(|t| t.as_deref())
        .unwrap_or("default");
    let need = |key: &str, value: Option<f64>| {
        value.ok_or_else(|| format!("rope scaling {kind:?} needs `{key}`"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: need("factor", v.factor)?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: need("factor", v.factor)?,
            low_freq_factor: need("low_freq_factor", v.low_freq_factor)?,
            high_freq_factor: need("high_freq_factor", v.high_freq_factor)?,
            original_max_position_embeddings: v
                .original_max_position_embeddings
                .unwrap_or(max_pos as f64),
        }),
        other => Err(format!(
            "unsupported rope scaling type {other:?}: supported are default, linear, llama3"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA3: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":1,"vocab_size":100,
        "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192},"rope_theta":500000.0,"torch_dtype":"bfloat16",
        "eos_token_id":[128001,128009]}"#;

    #[test]
    fn kv_cache_dtype_follows_vllm() {
        use crate::backend::fp8::Fp8Format;
        let all = [KvDType::F32, KvDType::BF16, KvDType::F16];
        let r = |name, model, supported: &[KvDType]| resolve_kv_dtype(name, model, supported);
        assert_eq!(r("auto", DType::BF16, &all).unwrap(), KvDType::BF16);
        assert_eq!(r("auto", DType::F32, &all).unwrap(), KvDType::F32);
        // A backend without 16-bit pools keeps the reference f32 cache.
        assert_eq!(
            r("auto", DType::BF16, &[KvDType::F32]).unwrap(),
            KvDType::F32
        );
        assert_eq!(r("float16", DType::BF16, &all).unwrap(), KvDType::F16);
        assert_eq!(r("BFloat16", DType::F32, &all).unwrap(), KvDType::BF16);
        let e4m3 = KvDType::Fp8(Fp8Format::E4M3);
        assert_eq!(r("fp8", DType::BF16, &all).unwrap(), e4m3);
        assert_eq!(r("fp8_e4m3", DType::BF16, &all).unwrap(), e4m3);
        assert_eq!(
            r("fp8_e5m2", DType::F32, &all).unwrap(),
            KvDType::Fp8(Fp8Format::E5M2)
        );
        let unknown = r("int4", DType::BF16, &all).unwrap_err().to_string();
        assert!(unknown.contains(KvDType::ACCEPTED), "{unknown}");
    }

    #[test]
    fn classic_layout() {
        let c = ModelConfig::from_json_str(LLAMA3).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.group_size(), 4);
        assert_eq!(c.dtype, Some(DType::BF16));
        assert_eq!(c.eos_token_ids, vec![128001, 128009]);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(c.rope_theta, 500000.0);
    }

    #[test]
    fn transformers5_layout() {
        let text = r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"dtype":"float16",
            "rope_parameters":{"rope_type":"default","rope_theta":1000000.0},"head_dim":32}"#;
        let c = ModelConfig::from_json_str(text).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.dtype, Some(DType::F16));
        assert_eq!(c.head_dim, 32);
        assert!(c.qkv_bias && !c.o_bias);
    }

    #[test]
    fn rope_keys_read_as_transformers_does() {
        // A scaling that is not an object is no scaling; a wrongly typed key is absent.
        let text = LLAMA3.replace("\"rope_scaling\":{", "\"rope_scaling\":\"llama3\",\"x\":{");
        let c = ModelConfig::from_json_str(&text).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::None);
        let e = ModelConfig::from_json_str(&LLAMA3.replace("\"factor\":8.0", "\"factor\":\"8\""))
            .unwrap_err();
        assert_eq!(e, "rope scaling \"llama3\" needs `factor`");
        // `rope_type` wins over the older `type`, even when it is not a string.
        let text = LLAMA3.replace(
            "\"rope_type\":\"llama3\"",
            "\"rope_type\":null,\"type\":\"linear\"",
        );
        let c = ModelConfig::from_json_str(&text).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::None);
        let text = LLAMA3.replace("\"rope_type\":\"llama3\"", "\"type\":\"linear\"");
        let c = ModelConfig::from_json_str(&text).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
    }

    #[test]
    fn rejects_unsupported() {
        let bad = LLAMA3.replace("LlamaForCausalLM", "GPT2LMHeadModel");
        assert!(ModelConfig::from_json_str(&bad)
            .unwrap_err()
            .contains("unsupported architecture"));
        let bad = LLAMA3.replace("\"llama3\"", "\"yarn\"");
        assert!(ModelConfig::from_json_str(&bad)
            .unwrap_err()
            .contains("yarn"));
    }

    #[test]
    fn rejects_quantized_checkpoints_by_method() {
        let fp8 = LLAMA3.replacen(
            '{',
            r#"{"quantization_config":{"quant_method":"compressed-tensors","format":"float-quantized","config_groups":{}},"#,
            1,
        );
        let e = ModelConfig::from_json_str(&fp8).unwrap_err();
        assert!(e.contains("config_groups is missing or empty"), "{e}");
        let gptq = LLAMA3.replacen(
            '{',
            r#"{"quantization_config":{"quant_method":"gptq","bits":4},"#,
            1,
        );
        let e = ModelConfig::from_json_str(&gptq).unwrap_err();
        assert!(e.contains("quant_method \"gptq\" is not served"), "{e}");
    }

    #[test]
    fn dtype_aliases() {
        assert_eq!(DType::parse("half"), Some(DType::F16));
        assert_eq!(DType::parse("float"), Some(DType::F32));
        assert_eq!(DType::parse("bfloat16"), Some(DType::BF16));
        let c = ModelConfig::from_json_str(LLAMA3).unwrap();
        assert_eq!(resolve_dtype("auto", &c).unwrap(), DType::BF16);
        assert!(resolve_dtype("int8", &c).is_err());
    }
}
