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
use crate::error::{read_json, Error, Result};

struct Entry {
    file: usize,
    dtype: DType,
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
