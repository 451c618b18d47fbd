//! What crosses from a checkpoint to a backend: the element types the backends
//! hold ([`DType`]) and a tensor still on the host ([`HostTensor`]). They live
//! with the backend so that the backend depends on nothing above it.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Element type of weights (and of what `--dtype` asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Parses a dtype name as vLLM's `--dtype` and HF's `torch_dtype` spell it.
    /// `auto` is not a dtype: see [`resolve_dtype`].
    pub fn parse(name: &str) -> Option<DType> {
        match name.trim().to_ascii_lowercase().as_str() {
            "float32" | "float" | "fp32" | "f32" => Some(DType::F32),
            "float16" | "half" | "fp16" | "f16" => Some(DType::F16),
            "bfloat16" | "bf16" => Some(DType::BF16),
            _ => None,
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
}

/// The bytes of a tensor: a window of a mapped file, or owned (after a copy
/// such as concatenation).
#[derive(Clone)]
pub enum TensorBytes {
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    Owned(Vec<u8>),
}

impl TensorBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            TensorBytes::Mapped { map, range } => &map[range.clone()],
            TensorBytes::Owned(v) => v,
        }
    }
}

/// A tensor on the host in its stored dtype, little-endian as safetensors stores it.
#[derive(Clone)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: TensorBytes,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Stacks 2-D tensors of one dtype along their first dimension (fusing q/k/v or gate/up).
    pub fn concat_rows(name: &str, parts: &[HostTensor]) -> Result<HostTensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Model(format!("{name}: nothing to concatenate")))?;
        let cols = first.shape.get(1).copied().unwrap_or(1);
        let mut rows = 0;
        let mut bytes = Vec::new();
        for p in parts {
            if p.dtype != first.dtype
                || p.shape.len() != first.shape.len()
                || p.shape.get(1).copied().unwrap_or(1) != cols
            {
                return Err(Error::Model(format!(
                    "{name}: cannot fuse `{}` ({:?} {:?}) with `{}` ({:?} {:?})",
                    first.name, first.dtype, first.shape, p.name, p.dtype, p.shape
                )));
            }
            rows += p.shape[0];
            bytes.extend_from_slice(p.bytes.as_slice());
        }
        let shape = if first.shape.len() == 1 {
            vec![rows]
        } else {
            vec![rows, cols]
        };
        Ok(HostTensor {
            name: name.to_string(),
            dtype: first.dtype,
            shape,
            bytes: TensorBytes::Owned(bytes),
        })
    }
}
