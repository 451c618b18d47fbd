//! Weights on the CPU: typed slices in their dtype, borrowed straight from the
//! memory-mapped checkpoint when the dtype matches and the bytes are aligned.
//!
//! Two exceptions, both exact (no value changes):
//! - vectors (norm weights, biases) are rounded to the dtype and kept widened to
//!   f32, because every op reads them as f32 and widening once beats widening per call;
//! - on x86-64 CPUs with the AVX-512 kernels, bf16 and f16 matrices are repacked
//!   into the column panels those kernels stream (see `matmul::packed`).
//!
//! GGUF matrices of a type with quantized kernels (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
//! Q6_K) stay in their blocks, mapped from the file where nothing had to be
//! rearranged (see `matmul::quant`); other quantized tensors are dequantized.
//! Matrices fused for one matmul (q/k/v, gate/up) whose parts a GGUF file
//! stores in different block types (a Q4_K_M file's Q6_K v beside Q4_K q and k)
//! stay apart, each in its own blocks: [`CpuWeight::stacked`].

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use bytemuck::Pod;
use half::{bf16, f16};
use memmap2::Mmap;

use crate::backend::DType;
use crate::backend::{HostTensor, TensorBytes};
use crate::error::Result;

#[cfg(target_arch = "x86_64")]
use super::matmul::packed::PackedMatrix;
use super::matmul::quant::fp8::Fp8Matrix;
use super::matmul::quant::{self, QuantMatrix};

/// A read-only typed slice, mapped or owned.
pub enum Slab<T> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<Mmap>,
        range: Range<usize>,
        elem: PhantomData<T>,
    },
}

impl<T: Pod> Slab<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            Slab::Owned(v) => v,
            // Alignment and length were checked when the slab was made.
            Slab::Mapped { map, range, .. } => bytemuck::cast_slice(&map[range.clone()]),
        }
    }
}

pub enum WeightData {
    F32(Slab<f32>),
    F16(Slab<f16>),
    BF16(Slab<bf16>),
    /// A bf16 or f16 matrix in the AVX-512 kernels' panel layout.
    #[cfg(target_arch = "x86_64")]
    Packed(PackedMatrix),
    /// GGUF blocks, multiplied by the quantized kernels.
    Quant(QuantMatrix),
    /// FP8 e4m3 codes with row scales, multiplied by the FP8 kernels.
    Fp8(Fp8Matrix),
    /// Matrices stacked along their rows, each in its own layout: one matmul
    /// multiplies each part and writes its columns of the output.
    Stacked(Vec<CpuWeight>),
}

/// A weight tensor with its shape (`[out_features, in_features]` for matrices).
pub struct CpuWeight {
    pub shape: Vec<usize>,
    /// The dtype it was loaded in (vectors are held widened to f32 but hold values of this dtype).
    pub dtype: DType,
    pub data: WeightData,
}

impl CpuWeight {
    /// Takes `t` in `dtype`, in the layout the matmul kernels of this CPU want.
    pub fn from_host(t: HostTensor, dtype: DType) -> CpuWeight {
        let t = match quantized(t, dtype).or_else(|t| fp8(t, dtype)) {
            Ok(w) => return w,
            Err(t) => t,
        };
        #[cfg(target_arch = "x86_64")]
        if t.shape.len() == 2 {
            let (n, k) = (t.shape[0], t.shape[1]);
            let packed = match dtype {
                DType::BF16 if PackedMatrix::bf16_supported() => {
                    PackedMatrix::pack_bf16(to_slab(&t, bf16::from_f32).as_slice(), n, k)
                }
                DType::F16 if PackedMatrix::f16_supported() => {
                    PackedMatrix::pack_f16(to_slab(&t, f16::from_f32).as_slice(), n, k)
                }
                _ => None,
            };
            if let Some(p) = packed {
                return CpuWeight {
                    shape: t.shape,
                    dtype,
                    data: WeightData::Packed(p),
                };
            }
        }
        CpuWeight::natural(t, dtype)
    }

    /// `parts` (matrices of equal width) stacked along their rows. GGUF parts
    /// in different block types, each with quantized kernels, stay in their
    /// blocks as separate matrices; anything else is fused into one matrix
    /// ([`HostTensor::concat_rows`]).
    pub fn stacked(name: &str, parts: Vec<HostTensor>, dtype: DType) -> Result<CpuWeight> {
        let fused = |parts: &[HostTensor]| {
            HostTensor::concat_rows(name, parts).map(|t| CpuWeight::from_host(t, dtype))
        };
        let Some(first) = parts.first() else {
            return fused(&parts);
        };
        let cols = first.shape.get(1).copied();
        let kept = |p: &HostTensor| {
            p.shape.len() == 2
                && p.shape.get(1).copied() == cols
                && p.quant.is_some_and(quant::has_kernels)
        };
        let mixed = parts.iter().any(|p| p.quant != first.quant);
        if !mixed || !parts.iter().all(kept) {
            return fused(&parts);
        }
        let shape = vec![parts.iter().map(|p| p.shape[0]).sum(), first.shape[1]];
        let parts = parts
            .into_iter()
            .map(|p| CpuWeight::from_host(p, dtype))
            .collect();
        Ok(CpuWeight {
            shape,
            dtype,
            data: WeightData::Stacked(parts),
        })
    }

    /// Takes `t` in `dtype` in its stored row-major layout, as the portable
    /// kernels read it (matrices from [`CpuWeight::from_host`] may be repacked).
    pub fn natural(t: HostTensor, dtype: DType) -> CpuWeight {
        let t = t.dequantized();
        let data = match dtype {
            DType::F32 => WeightData::F32(to_slab(&t, |x| x)),
            _ if t.shape.len() < 2 => {
                // Rounded to the dtype, then widened back: exactly the values the
                // dtype holds, in the type the ops read.
                let round: fn(f32) -> f32 = match dtype {
                    DType::F16 => |x| f16::from_f32(x).to_f32(),
                    _ => |x| bf16::from_f32(x).to_f32(),
                };
                let values = if t.dtype == dtype {
                    decode_f32(t.dtype, t.bytes.as_slice()).collect()
                } else {
                    decode_f32(t.dtype, t.bytes.as_slice()).map(round).collect()
                };
                WeightData::F32(Slab::Owned(values))
            }
            DType::F16 => WeightData::F16(to_slab(&t, f16::from_f32)),
            DType::BF16 => WeightData::BF16(to_slab(&t, bf16::from_f32)),
        };
        CpuWeight {
            shape: t.shape,
            dtype,
            data,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Columns of a matrix (its `in_features`); the length of a vector.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Rows of a matrix (its `out_features`); 1 for a vector.
    pub fn rows(&self) -> usize {
        if self.shape.len() >= 2 {
            self.shape[0]
        } else {
            1
        }
    }

    /// Elements `range` of the row-major tensor converted to f32 into `out`
    /// (natural layouts only: packed matrices are read by row, [`CpuWeight::row_f32`]).
    pub fn read_f32(&self, range: Range<usize>, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        match &self.data {
            WeightData::F32(s) => out.copy_from_slice(&s.as_slice()[range]),
            WeightData::F16(s) => s.as_slice()[range].convert_to_f32_slice(out),
            WeightData::BF16(s) => s.as_slice()[range].convert_to_f32_slice(out),
            #[cfg(target_arch = "x86_64")]
            WeightData::Packed(p) => {
                let k = self.cols();
                for (i, o) in range.zip(out) {
                    *o = p.get(i / k, i % k);
                }
            }
            WeightData::Fp8(q) => {
                let (k, start) = (self.cols(), range.start);
                let mut row = vec![0f32; k];
                for (i, o) in range.zip(out) {
                    if i % k == 0 || i == start {
                        q.dequantize_row(i / k, &mut row);
                    }
                    *o = row[i % k];
                }
            }
            WeightData::Quant(_) | WeightData::Stacked(_) => {
                // Whole rows dequantized, the wanted part copied out.
                let k = self.cols();
                let mut row = vec![0f32; k];
                let mut at = range.start;
                let mut o = 0;
                while at < range.end {
                    let (r, c) = (at / k, at % k);
                    let len = (k - c).min(range.end - at);
                    self.row_f32(r, &mut row);
                    out[o..o + len].copy_from_slice(&row[c..c + len]);
                    at += len;
                    o += len;
                }
            }
        }
    }

    /// Row `row` (of width [`CpuWeight::cols`]) as f32 into `out`.
    pub fn row_f32(&self, row: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let WeightData::Packed(p) = &self.data {
            return p.read_row_f32(row, out);
        }
        if let WeightData::Quant(q) = &self.data {
            return q.dequantize_row(row, out);
        }
        if let WeightData::Fp8(q) = &self.data {
            return q.dequantize_row(row, out);
        }
        if let WeightData::Stacked(parts) = &self.data {
            let mut first = 0;
            for part in parts {
                if row < first + part.rows() {
                    return part.row_f32(row - first, out);
                }
                first += part.rows();
            }
        }
        let k = self.cols();
        self.read_f32(row * k..(row + 1) * k, out);
    }

    /// The whole tensor as f32: borrowed for vectors (held in f32), converted otherwise.
    pub fn f32_values(&self) -> Cow<'_, [f32]> {
        if let WeightData::F32(s) = &self.data {
            return Cow::Borrowed(s.as_slice());
        }
        let mut v = vec![0.0; self.numel()];
        self.read_f32(0..self.numel(), &mut v);
        Cow::Owned(v)
    }
}

/// A matrix in GGUF blocks with kernels kept as a [`QuantMatrix`] (its bytes
/// borrowed from the map when they are mapped); anything else handed back.
fn quantized(t: HostTensor, dtype: DType) -> Result<CpuWeight, HostTensor> {
    let Some(ty) = t.quant.filter(|&ty| quant::has_kernels(ty)) else {
        return Err(t);
    };
    if t.shape.len() != 2 {
        return Err(t);
    }
    let (n, k) = (t.shape[0], t.shape[1]);
    if !QuantMatrix::fits(ty, n, k, t.bytes.as_slice().len()) {
        return Err(t);
    }
    let slab = match t.bytes {
        // Blocks are read with unaligned loads: any offset will do.
        TensorBytes::Mapped { map, range } => Slab::Mapped {
            map,
            range,
            elem: PhantomData,
        },
        TensorBytes::Owned(v) => Slab::Owned(v),
    };
    Ok(CpuWeight {
        shape: t.shape,
        dtype,
        data: WeightData::Quant(QuantMatrix::from_parts(ty, n, k, slab)),
    })
}

/// A matrix of FP8 codes kept as an [`Fp8Matrix`] (borrowed from the map when
/// mapped); anything else handed back.
fn fp8(t: HostTensor, dtype: DType) -> Result<CpuWeight, HostTensor> {
    let (&[n, k], Some(scales)) = (&t.shape[..], &t.fp8_scales) else {
        return Err(t);
    };
    if n.checked_mul(k) != Some(t.bytes.as_slice().len()) || scales.len() != n {
        return Err(t);
    }
    let codes = match t.bytes {
        TensorBytes::Mapped { map, range } => Slab::Mapped {
            map,
            range,
            elem: PhantomData,
        },
        TensorBytes::Owned(v) => Slab::Owned(v),
    };
    let scales = t.fp8_scales.unwrap_or_default();
    let matrix = Fp8Matrix::new(n, k, codes, scales).expect("sizes checked above");
    Ok(CpuWeight {
        shape: t.shape,
        dtype,
        data: WeightData::Fp8(matrix),
    })
}

/// Makes a slab of `T` from a host tensor: zero-copy when the stored dtype is
/// `T` and the mapped bytes are aligned; otherwise a (converting) copy.
fn to_slab<T: Pod>(t: &HostTensor, from_f32: impl Fn(f32) -> T) -> Slab<T> {
    if stored_type_is::<T>(t.dtype) {
        if let TensorBytes::Mapped { map, range } = &t.bytes {
            if (map.as_ptr() as usize + range.start).is_multiple_of(std::mem::align_of::<T>()) {
                return Slab::Mapped {
                    map: map.clone(),
                    range: range.clone(),
                    elem: PhantomData,
                };
            }
        }
        return Slab::Owned(bytemuck::pod_collect_to_vec(t.bytes.as_slice()));
    }
    Slab::Owned(
        decode_f32(t.dtype, t.bytes.as_slice())
            .map(from_f32)
            .collect(),
    )
}

fn stored_type_is<T: 'static>(dtype: DType) -> bool {
    use std::any::TypeId;
    let id = TypeId::of::<T>();
    match dtype {
        DType::F32 => id == TypeId::of::<f32>(),
        DType::F16 => id == TypeId::of::<f16>(),
        DType::BF16 => id == TypeId::of::<bf16>(),
    }
}

/// Decodes little-endian stored values to f32.
fn decode_f32(dtype: DType, bytes: &[u8]) -> Box<dyn Iterator<Item = f32> + '_> {
    match dtype {
        DType::F32 => Box::new(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        DType::F16 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::BF16 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
    }
}
