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

use crate::backend::{DType, HostTensor, TensorBytes};
use crate::config::fp8::{Fp8Scheme, Fp8Strategy};
use crate::error::{read_json, Error, Result};

struct Entry {
    file: usize,
    /// For FP8 codes (`fp8`), F32: the type they dequantize to.
    dtype: DType,
    /// Safetensors `F8_E4M3`: one e4m3 code per element, scaled by `<name>_scale`.
    fp8: bool,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// Where the model's tensors come from, by their Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`, ...): a safetensors checkpoint, or a
/// GGUF file whose names and layouts are mapped (see the gguf module).
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
    /// The FP8 scheme config.json declares (`F8_E4M3` tensors need one).
    fp8: Option<Fp8Scheme>,
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
            fp8: None,
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
            let (dtype, fp8) = match view.dtype() {
                safetensors::Dtype::F32 => (DType::F32, false),
                safetensors::Dtype::F16 => (DType::F16, false),
                safetensors::Dtype::BF16 => (DType::BF16, false),
                safetensors::Dtype::F8_E4M3 => (DType::F32, true),
                other => {
                    return Err(Error::bad_file(
                        &path,
                        format!(
                            "tensor `{name}` has dtype {other:?}; supported: F32, F16, BF16, \
                             F8_E4M3 (FP8 checkpoints)"
                        ),
                    ))
                }
            };
            let start = view.data().as_ptr() as usize - base;
            let range = start..start + view.data().len();
            let entry = Entry {
                file: file_index,
                dtype,
                fp8,
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

    /// Declares the FP8 scheme of config.json's `quantization_config`.
    pub fn with_fp8(mut self, scheme: Option<Fp8Scheme>) -> Checkpoint {
        self.fp8 = scheme;
        self
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
        let fp8_scales = match entry.fp8 {
            true => Some(self.fp8_scales(name, entry)?),
            false => None,
        };
        Ok(HostTensor {
            name: name.to_string(),
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            bytes: TensorBytes::Mapped {
                map: map.clone(),
                range: entry.range.clone(),
            },
            quant: None,
            fp8_scales,
        })
    }

    /// The row scales of FP8 tensor `name` from its `weight_scale`, checked
    /// against the declared strategy; the codes checked free of NaN.
    fn fp8_scales(&self, name: &str, entry: &Entry) -> Result<Vec<f32>> {
        let path = &self.files[entry.file].0;
        let bad = |msg: String| Error::bad_file(path, format!("tensor `{name}`: {msg}"));
        let Some(scheme) = self.fp8 else {
            return Err(bad(
                "is F8_E4M3, but config.json has no FP8 quantization_config \
                 (compressed-tensors float-quantized)"
                    .into(),
            ));
        };
        let [rows, _] = entry.shape[..] else {
            return Err(bad(format!(
                "an FP8 tensor must be a matrix, it has shape {:?}",
                entry.shape
            )));
        };
        let map = &self.files[entry.file].1;
        if map[entry.range.clone()]
            .iter()
            .any(|&b| crate::backend::fp8::is_nan(b))
        {
            return Err(bad("holds FP8 NaN codes".into()));
        }
        let scale_name = format!("{name}_scale");
        let scale = self
            .entries
            .get(&scale_name)
            .ok_or_else(|| bad(format!("is F8_E4M3 and has no `{scale_name}`")))?;
        let values = scale_values(&self.files[scale.file].1[scale.range.clone()], scale)
            .ok_or_else(|| bad(format!("`{scale_name}` must be F32, F16 or BF16")))?;
        let per_row = match (scheme.strategy, &scale.shape[..]) {
            (Fp8Strategy::Tensor, [] | [1]) => vec![values[0]; rows],
            (Fp8Strategy::Channel, [n] | [n, 1]) if *n == rows => values,
            (strategy, shape) => {
                return Err(bad(format!(
                    "`{scale_name}` has shape {shape:?}; the {} strategy of config.json wants {}",
                    strategy.name(),
                    match strategy {
                        Fp8Strategy::Tensor => "[] or [1]".to_string(),
                        Fp8Strategy::Channel => format!("[{rows}, 1]"),
                    }
                )))
            }
        };
        if let Some(v) = per_row.iter().find(|v| !v.is_finite() || **v < 0.0) {
            return Err(bad(format!(
                "`{scale_name}` holds {v}; scales are finite and not negative"
            )));
        }
        Ok(per_row)
    }
}

/// A scale tensor's values as f32, if it has a float dtype.
fn scale_values(bytes: &[u8], entry: &Entry) -> Option<Vec<f32>> {
    if entry.fp8 {
        return None;
    }
    let values: Vec<f32> = match entry.dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    (!values.is_empty()).then_some(values)
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
