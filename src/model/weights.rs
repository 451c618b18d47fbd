//! Safetensors checkpoints, memory-mapped: a single `model.safetensors`, or shards
//! listed by `model.safetensors.index.json`. Tensors are handed out by name with
//! their shape checked, and stay in their stored dtype.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::config::DType;
use crate::error::{read_json, Error, Result};
use crate::gguf::GgmlType;

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
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor with GGUF blocks dequantized to f32 (others as they are).
    pub fn dequantized(self) -> HostTensor {
        let Some(ty) = self.quant else { return self };
        let mut values = vec![0f32; self.numel()];
        crate::gguf::dequant::dequantize_parallel(ty, self.bytes.as_slice(), &mut values);
        HostTensor {
            name: self.name,
            dtype: DType::F32,
            shape: self.shape,
            bytes: TensorBytes::Owned(bytemuck::cast_slice(&values).to_vec()),
            quant: None,
        }
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
                || p.quant != first.quant
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
            quant: first.quant,
        })
    }
}

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// Where the model's tensors come from, by their Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`, ...): a safetensors checkpoint, or a
/// GGUF file whose names and layouts are mapped (see `crate::gguf::source`).
pub trait TensorSource {
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name`, which must have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor>;
}

impl TensorSource for Checkpoint {
    fn contains(&self, name: &str) -> bool {
        Checkpoint::contains(self, name)
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        Checkpoint::get(self, name, shape)
    }
}

/// All tensors of a checkpoint, by name.
pub struct Checkpoint {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    entries: HashMap<String, Entry>,
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(dir, &index)?
        } else {
            let hint = if dir.join("pytorch_model.bin").exists() {
                " (only safetensors checkpoints are supported, not pytorch_model.bin)"
            } else {
                ""
            };
            return Err(Error::Model(format!(
                "{}: no model.safetensors or model.safetensors.index.json{hint}",
                dir.display()
            )));
        };
        let mut ckpt = Checkpoint {
            files: Vec::new(),
            entries: HashMap::new(),
        };
        for path in files {
            ckpt.add_file(path)?;
        }
        Ok(ckpt)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; a checkpoint changed under a running engine
        // is outside what any inference engine can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let parsed = SafeTensors::deserialize(&map).map_err(|e| {
            Error::bad_file(
                &path,
                format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        let base = map.as_ptr() as usize;
        let file_index = self.files.len();
        for (name, view) in parsed.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                other => {
                    return Err(Error::bad_file(
                        &path,
                        format!("tensor `{name}` has dtype {other:?}; supported: F32, F16, BF16"),
                    ))
                }
            };
            let start = view.data().as_ptr() as usize - base;
            let range = start..start + view.data().len();
            let entry = Entry {
                file: file_index,
                dtype,
                shape: view.shape().to_vec(),
                range,
            };
            if self.entries.insert(name.clone(), entry).is_some() {
                return Err(Error::bad_file(
                    &path,
                    format!("tensor `{name}` appears in more than one shard"),
                ));
            }
        }
        drop(parsed);
        self.files.push((path, Arc::new(map)));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let entry = self.entries.get(name).ok_or_else(|| {
            let files: Vec<_> = self
                .files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            Error::Model(format!(
                "missing tensor `{name}` (looked in {})",
                files.join(", ")
            ))
        })?;
        let (path, map) = &self.files[entry.file];
        if entry.shape != shape {
            return Err(Error::bad_file(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {:?} from config.json",
                    entry.shape, shape
                ),
            ));
        }
        Ok(HostTensor {
            name: name.to_string(),
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            bytes: TensorBytes::Mapped {
                map: map.clone(),
                range: entry.range.clone(),
            },
            quant: None,
        })
    }
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let parsed: ShardIndex = read_json(index)?;
    let mut names: Vec<&String> = parsed.weight_map.values().collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(Error::bad_file(index, "weight_map is empty"));
    }
    names
        .into_iter()
        .map(|n| {
            if n.contains('/') || n.contains('\\') || n.contains("..") {
                return Err(Error::bad_file(
                    index,
                    format!("shard name {n:?} must be a file in the model directory"),
                ));
            }
            let p = dir.join(n);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::bad_file(
                    index,
                    format!(
                        "names shard {n:?}, which does not exist in {}",
                        dir.display()
                    ),
                ))
            }
        })
        .collect()
}
