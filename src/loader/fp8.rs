//! `--quantization` on a Hugging Face checkpoint: an FP8 checkpoint served as
//! stored (`auto`) or dequantized to `--dtype` (`none`), and a 16/32-bit one
//! quantized to FP8 at load (`fp8`, as vLLM: one dynamic e4m3 scale per weight
//! matrix, `amax / 448`).

use crate::backend::{fp8, HostTensor};
use crate::error::{Error, Result};
use crate::model::weights::TensorSource;

/// What the loader does to a Hugging Face checkpoint's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorMode {
    /// As stored (FP8 checkpoints stay FP8).
    AsStored,
    /// FP8 tensors dequantized to f32 (then `--dtype`).
    Dequantize,
    /// Every projection matrix quantized to FP8 with a per-tensor scale.
    DynamicFp8,
}

/// Resolves `--quantization` for a Hugging Face directory (`fp8_checkpoint`:
/// whether its config.json declares FP8 weights). GGUF names are handled by the
/// GGUF path; this sees only what reaches a directory.
pub fn hf_quantization(requested: &str, fp8_checkpoint: bool) -> Result<TensorMode> {
    match (
        requested.trim().to_ascii_lowercase().as_str(),
        fp8_checkpoint,
    ) {
        ("auto", _) | ("fp8" | "compressed-tensors", true) => Ok(TensorMode::AsStored),
        ("none", true) => Ok(TensorMode::Dequantize),
        ("none", false) => Ok(TensorMode::AsStored),
        ("fp8", false) => Ok(TensorMode::DynamicFp8),
        ("compressed-tensors", false) => Err(Error::invalid(
            "quantization \"compressed-tensors\" needs a checkpoint whose config.json has a \
             compressed-tensors quantization_config; use fp8 to quantize this one at load",
        )),
        (other, _) => Err(Error::invalid(format!(
            "quantization {other:?} is not served: expected auto, gguf (a GGUF file's blocks \
             kept quantized), fp8 (FP8 weights) or none (dequantized to --dtype)"
        ))),
    }
}

/// `--quantization` on a GGUF file (checked by the loader): `fp8` quantizes its
/// tensors, dequantized first, to FP8 (for comparisons on a real model's shapes;
/// the GGUF blocks themselves are the file's quantization).
pub fn gguf_quantization(requested: &str) -> TensorMode {
    if requested.trim().eq_ignore_ascii_case("fp8") {
        TensorMode::DynamicFp8
    } else {
        TensorMode::AsStored
    }
}

/// A source whose tensors are served as `quantization` says.
pub struct Mapped<'a> {
    pub inner: &'a dyn TensorSource,
    pub quantization: TensorMode,
}

impl TensorSource for Mapped<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.inner.get(name, shape)?;
        Ok(match self.quantization {
            TensorMode::AsStored => t,
            TensorMode::Dequantize => t.dequantized(),
            // The linear layers only, as vLLM: embeddings, norms and lm_head stay.
            TensorMode::DynamicFp8 if is_projection(name) => fp8::quantize_matrix(t.dequantized()),
            TensorMode::DynamicFp8 => t,
        })
    }
}

/// A decoder layer's attention or MLP projection weight.
fn is_projection(name: &str) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight")
}
