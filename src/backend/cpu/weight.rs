//! Weights on the CPU: typed slices in their dtype, borrowed straight from the
//! memory-mapped checkpoint when the dtype matches and the bytes are aligned.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use bytemuck::Pod;
use half::{bf16, f16};
use memmap2::Mmap;

use crate::config::DType;
use crate::model::weights::{HostTensor, TensorBytes};

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
}

/// A weight tensor with its shape (`[out_features, in_features]` for matrices).
pub struct CpuWeight {
    pub shape: Vec<usize>,
    pub data: WeightData,
}

impl CpuWeight {
    pub fn from_host(t: HostTensor, dtype: DType) -> CpuWeight {
        let data = match dtype {
            DType::F32 => WeightData::F32(to_slab(&t, |x| x)),
            DType::F16 => WeightData::F16(to_slab(&t, f16::from_f32)),
            DType::BF16 => WeightData::BF16(to_slab(&t, bf16::from_f32)),
        };
        CpuWeight {
            shape: t.shape,
            data,
        }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            WeightData::F32(_) => DType::F32,
            WeightData::F16(_) => DType::F16,
            WeightData::BF16(_) => DType::BF16,
        }
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

    /// Elements `range` converted to f32 into `out`.
    pub fn read_f32(&self, range: Range<usize>, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        match &self.data {
            WeightData::F32(s) => out.copy_from_slice(&s.as_slice()[range]),
            WeightData::F16(s) => s.as_slice()[range].convert_to_f32_slice(out),
            WeightData::BF16(s) => s.as_slice()[range].convert_to_f32_slice(out),
        }
    }

    /// The whole tensor as f32 (for small tensors: norms, biases).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.numel()];
        self.read_f32(0..self.numel(), &mut v);
        v
    }
}

/// Makes a slab of `T` from a host tensor: zero-copy when the stored dtype is
/// `T` and the mapped bytes are aligned; otherwise a (converting) copy.
fn to_slab<T: Pod>(t: &HostTensor, from_f32: impl Fn(f32) -> T) -> Slab<T> {
    if stored_type_is::<T>(t.dtype) {
        if let TensorBytes::Mapped { map, range } = &t.bytes {
            if (map.as_ptr() as usize + range.start) % std::mem::align_of::<T>() == 0 {
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
