//! What crosses from a checkpoint to a backend: the element types the backends
//! hold ([`DType`]) and a tensor still on the host ([`HostTensor`]). They live
//! with the backend so that the backend depends on nothing above it.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

use super::ggml::GgmlType;
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
    /// The element type; for GGUF blocks (`quant`), the type they dequantize to (f32).
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: TensorBytes,
    /// `Some`: `bytes` are GGUF blocks of this type, row after row (a backend
    /// multiplies them as they are or calls [`HostTensor::dequantized`]).
    pub quant: Option<GgmlType>,
    /// `Some`: `bytes` are FP8 e4m3 codes of a matrix, one per element, and
    /// row `r`'s values are multiplied by `fp8_scales[r]` (see [`super::fp8`]).
    pub fp8_scales: Option<Vec<f32>>,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor with GGUF blocks or FP8 codes dequantized to f32 (others as they are).
    pub fn dequantized(self) -> HostTensor {
        let mut values = vec![0f32; self.numel()];
        if let Some(scales) = &self.fp8_scales {
            super::fp8::dequantize(self.bytes.as_slice(), scales, &mut values);
        } else if let Some(ty) = self.quant {
            super::ggml::dequantize_parallel(ty, self.bytes.as_slice(), &mut values);
        } else {
            return self;
        }
        HostTensor {
            name: self.name,
            dtype: DType::F32,
            shape: self.shape,
            bytes: TensorBytes::Owned(bytemuck::cast_slice(&values).to_vec()),
            quant: None,
            fp8_scales: None,
        }
    }

    /// Every element as f32 (GGUF blocks dequantized); not for FP8 codes.
    fn f32_values(&self) -> Vec<f32> {
        let bytes = self.bytes.as_slice();
        if let Some(ty) = self.quant {
            let mut values = vec![0f32; self.numel()];
            super::ggml::dequantize_parallel(ty, bytes, &mut values);
            return values;
        }
        match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(bytes),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// The same values stored as Q8_0 blocks (`Some(Q8_0)`) or as f32 (`None`).
    fn with_values(&self, quant: Option<GgmlType>) -> HostTensor {
        let values = self.f32_values();
        let bytes = match quant {
            Some(_) => super::ggml::quantize_q8_0(&values),
            None => bytemuck::cast_slice(&values).to_vec(),
        };
        HostTensor {
            name: self.name.clone(),
            dtype: DType::F32,
            shape: self.shape.clone(),
            bytes: TensorBytes::Owned(bytes),
            quant,
            fp8_scales: None,
        }
    }

    /// Stacks 2-D tensors along their first dimension (fusing q/k/v or
    /// gate/up). Parts stored in different GGUF types (a Q4_K_M file keeps some
    /// layers' v in Q6_K, q and k in Q4_K) are requantized to Q8_0 first, from
    /// their dequantized values: 8 bits per weight, so the error it adds is far
    /// below the 4–6-bit quantization they already carry; a quantized part
    /// next to a 16/32-bit one makes them all f32. (The CPU backend keeps
    /// quantized parts of different types apart instead: `CpuWeight::stacked`.)
    pub fn concat_rows(name: &str, parts: &[HostTensor]) -> Result<HostTensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Model(format!("{name}: nothing to concatenate")))?;
        let gguf = |p: &HostTensor| p.fp8_scales.is_none() && p.shape.len() == 2;
        let mixed = parts
            .iter()
            .any(|p| (p.quant, p.dtype) != (first.quant, first.dtype));
        if mixed && parts.iter().all(gguf) && parts.iter().any(|p| p.quant.is_some()) {
            let unified: Vec<HostTensor> = if parts.iter().all(|p| p.quant.is_some()) {
                parts
                    .iter()
                    .map(|p| p.with_values(Some(GgmlType::Q8_0)))
                    .collect()
            } else {
                parts.iter().map(|p| p.with_values(None)).collect()
            };
            return HostTensor::concat_rows(name, &unified);
        }
        let cols = first.shape.get(1).copied().unwrap_or(1);
        let mut rows = 0;
        let mut bytes = Vec::new();
        for p in parts {
            if p.dtype != first.dtype
                || p.quant != first.quant
                || p.fp8_scales.is_some() != first.fp8_scales.is_some()
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
        let fp8_scales = first.fp8_scales.as_ref().map(|_| {
            let scales = parts.iter().flat_map(|p| p.fp8_scales.iter().flatten());
            scales.copied().collect()
        });
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
            quant: first.quant,
            fp8_scales,
        })
    }

    /// Elements per row (1 for a vector) and bytes per row in the stored layout.
    fn row_layout(&self) -> (usize, usize) {
        let cols = self.shape.get(1).copied().unwrap_or(1);
        let bytes = match self.quant {
            Some(ty) => cols / ty.block_elems() * ty.block_bytes(),
            None if self.fp8_scales.is_some() => cols,
            None => cols * self.dtype.size_in_bytes(),
        };
        (cols, bytes)
    }

    /// Rows `rows` of the tensor (elements of a vector); rows past the end are
    /// zeros (a padded shard). Whole rows of GGUF blocks are sliced as they are.
    pub fn slice_rows(&self, rows: Range<usize>) -> Result<HostTensor> {
        let (_, row_bytes) = self.row_layout();
        let have = self.shape.first().copied().unwrap_or(0);
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        let kept = rows.start.min(have)..rows.end.min(have);
        let range = kept.start * row_bytes..kept.end * row_bytes;
        let bytes = match &self.bytes {
            TensorBytes::Mapped { map, range: whole } if kept == rows => TensorBytes::Mapped {
                map: map.clone(),
                range: whole.start + range.start..whole.start + range.end,
            },
            other => {
                let mut bytes = other.as_slice()[range].to_vec();
                bytes.resize(rows.len() * row_bytes, 0);
                TensorBytes::Owned(bytes)
            }
        };
        // Padding rows are zeros whatever their scale.
        let fp8_scales = self.fp8_scales.as_ref().map(|s| {
            let mut kept = s[kept.clone()].to_vec();
            kept.resize(rows.len(), 1.0);
            kept
        });
        Ok(HostTensor {
            name: self.name.clone(),
            shape,
            bytes,
            fp8_scales,
            ..*self
        })
    }

    /// Columns `cols` of a matrix. GGUF blocks run along a row, so a block
    /// type's columns can be split only at block boundaries.
    pub fn slice_cols(&self, cols: Range<usize>) -> Result<HostTensor> {
        let (width, row_bytes) = self.row_layout();
        if self.shape.len() != 2 || cols.end > width {
            return Err(Error::Model(format!(
                "{}: cannot take columns {cols:?} of shape {:?}",
                self.name, self.shape
            )));
        }
        let (elems, bytes_per) = match self.quant {
            Some(ty) => (ty.block_elems(), ty.block_bytes()),
            None => (1, row_bytes / width.max(1)),
        };
        if !cols.start.is_multiple_of(elems) || !cols.end.is_multiple_of(elems) {
            let ty = self.quant.map_or("?", |t| t.name());
            return Err(Error::invalid(format!(
                "tensor parallel: `{}` is {ty} in blocks of {elems} columns, and its shard \
                 takes columns {cols:?}, which splits a block; use a tensor parallel size \
                 that divides it at block boundaries, or --quantization none",
                self.name
            )));
        }
        let start = cols.start / elems * bytes_per;
        let end = cols.end / elems * bytes_per;
        let bytes: Vec<u8> = self
            .bytes
            .as_slice()
            .chunks_exact(row_bytes.max(1))
            .flat_map(|row| &row[start..end])
            .copied()
            .collect();
        Ok(HostTensor {
            name: self.name.clone(),
            shape: vec![self.shape[0], cols.len()],
            bytes: TensorBytes::Owned(bytes),
            fp8_scales: self.fp8_scales.clone(),
            ..*self
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, rows: usize, quant: Option<GgmlType>, values: &[f32]) -> HostTensor {
        let bytes = match quant {
            Some(GgmlType::Q8_0) => crate::backend::ggml::quantize_q8_0(values),
            _ => bytemuck::cast_slice(values).to_vec(),
        };
        HostTensor {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![rows, 32],
            bytes: TensorBytes::Owned(bytes),
            quant,
            fp8_scales: None,
        }
    }

    /// A Q4_0 block of 32 values: scale 0.25, quants 0..16 twice (values −2..1.75).
    fn q4_0_part(name: &str) -> HostTensor {
        let mut bytes = half::f16::from_f32(0.25).to_le_bytes().to_vec();
        bytes.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        HostTensor {
            bytes: TensorBytes::Owned(bytes),
            quant: Some(GgmlType::Q4_0),
            ..part(name, 1, None, &[0.0; 32])
        }
    }

    /// q in Q4_0 and v in Q8_0 (as a Q4_K_M file mixes Q4_K and Q6_K) fuse as
    /// Q8_0 holding both parts' values; a float part next to them makes f32.
    #[test]
    fn parts_of_different_types_fuse() {
        let v_values: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.01).collect();
        let (q, v) = (
            q4_0_part("q"),
            part("v", 2, Some(GgmlType::Q8_0), &v_values),
        );
        let want: Vec<f32> = [q.f32_values(), v.f32_values()].concat();
        let fused = HostTensor::concat_rows("qv", &[q.clone(), v.clone()]).unwrap();
        assert_eq!(
            (fused.quant, fused.shape.clone()),
            (Some(GgmlType::Q8_0), vec![3, 32])
        );
        for (row, (got, want)) in fused
            .f32_values()
            .chunks(32)
            .zip(want.chunks(32))
            .enumerate()
        {
            // Half a step, plus the f16 rounding of the scale times the largest quant.
            let step = want.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= step * 0.57, "row {row}: {g} vs {w}");
            }
        }
        let float = part("k", 1, None, &[0.5; 32]);
        let fused = HostTensor::concat_rows("qkv", &[q.clone(), float, v.clone()]).unwrap();
        assert_eq!((fused.quant, fused.dtype), (None, DType::F32));
        let want = [q.f32_values(), vec![0.5; 32], v.f32_values()].concat();
        assert_eq!(fused.f32_values(), want);
    }
}
