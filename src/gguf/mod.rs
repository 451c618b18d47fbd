//! GGUF files (llama.cpp's container): the header, the metadata key/values, the
//! tensor infos and the aligned data section, read from a memory map.
//!
//! Hand-written rather than taken from a crate: the format is small (a few hundred
//! lines), and the crates that read it either pull in a whole tensor framework
//! (candle) or do not bound sizes read from the file before allocating. Every count
//! and length here is checked against the bytes actually left in the file first, so a
//! truncated or corrupt file is an error naming the file and the problem, never a
//! panic or a huge allocation.

pub mod config;
/// The ggml block types and their dequantization (kept with the backend, which reads them).
pub use crate::backend::ggml as dequant;
pub mod source;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};

pub use dequant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// More dimensions than ggml has (GGML_MAX_DIMS is 4).
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset of the data in the file (absolute), and its size in bytes.
    pub offset: usize,
    pub size: usize,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch/safetensors) order: ggml's dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn numel(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// A parsed GGUF file, its bytes mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    pub map: Arc<Mmap>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map; a file changed under a running engine is outside
        // what any inference engine can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let parsed = parse(&map).map_err(|msg| Error::bad_file(path, msg))?;
        let (version, metadata, tensors) = parsed;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            by_name,
            map: Arc::new(map),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (checked to lie inside the file at open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset..t.offset + t.size]
    }

    /// A clear error about this file.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::bad_file(&self.path, message)
    }
}

type Parsed = (u32, HashMap<String, Value>, Vec<TensorInfo>);

/// A bounds-checked little-endian reader over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {left} left",
                self.pos
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item_bytes` long: more than the rest of
    /// the file could hold is corruption, caught before anything is allocated.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left / min_item_bytes.max(1) as u64 {
            return Err(format!(
                "corrupt: {what} is {n}, more than the {left} bytes left in the file can hold"
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.count(&format!("length of {what}"), 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("corrupt: {what} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("corrupt: {what} is a bool with byte {b}")),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(format!("corrupt: {what} is an array of arrays"));
                }
                let elem = self.u32(what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => 1,
                };
                let n = self.count(&format!("length of array {what}"), min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(format!("corrupt: {what} has unknown value type {other}")),
        })
    }
}

fn parse(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let mut r = Reader { bytes, pos: 0 };
    let version = read_header(&mut r)?;
    // A tensor info is at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes.
    let tensor_count = r.count("the tensor count", 24)?;
    // A key/value is at least 8 (key length) + 4 (type) + 1 bytes.
    let kv_count = r.count("the metadata count", 13)?;
    let mut metadata = HashMap::with_capacity(kv_count);
    for i in 0..kv_count {
        let key = r.string(&format!("metadata key #{i}"))?;
        let ty = r.u32(&format!("the type of `{key}`"))?;
        let value = r.value(ty, &format!("`{key}`"), 0)?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(format!("general.alignment {v:?} is not a power of two")),
        },
    };
    let mut infos = Vec::with_capacity(tensor_count);
    for i in 0..tensor_count {
        infos.push(read_tensor_info(&mut r, i, alignment)?);
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    let mut tensors = Vec::with_capacity(infos.len());
    let mut seen = std::collections::HashSet::new();
    for (name, dims, ty, offset) in infos {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        tensors.push(place_tensor(name, dims, ty, data_start + offset, file_len)?);
    }
    check_overlaps(&tensors)?;
    Ok((version, metadata, tensors))
}

/// The magic number and the version.
fn read_header(r: &mut Reader) -> std::result::Result<u32, String> {
    let magic = r
        .take(4, "the magic number")
        .map_err(|_| "not a GGUF file: shorter than its 4-byte magic number".to_string())?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file: starts with {magic:02x?}, not \"GGUF\""
        ));
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (supported: 2 and 3)"
        ));
    }
    Ok(version)
}

/// Tensor info #`i`: (name, dims, type, offset in the data section).
fn read_tensor_info(
    r: &mut Reader,
    i: usize,
    alignment: u64,
) -> std::result::Result<(String, Vec<u64>, u32, u64), String> {
    let name = r.string(&format!("the name of tensor #{i}"))?;
    let n_dims = r.u32(&format!("the dimension count of `{name}`"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(format!(
            "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(r.u64(&format!("the dimensions of `{name}`"))?);
    }
    let ty = r.u32(&format!("the type of `{name}`"))?;
    let offset = r.u64(&format!("the offset of `{name}`"))?;
    if offset % alignment != 0 {
        return Err(format!(
            "tensor `{name}` starts at offset {offset}, not a multiple of the alignment {alignment}"
        ));
    }
    Ok((name, dims, ty, offset))
}

/// A tensor at file offset `start`, its size from its type and shape, checked
/// to lie within the file.
fn place_tensor(
    name: String,
    dims: Vec<u64>,
    ty: u32,
    start: u64,
    file_len: u64,
) -> std::result::Result<TensorInfo, String> {
    let numel = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= file_len.saturating_mul(8))
        .ok_or_else(|| format!("tensor `{name}` has absurd dimensions {dims:?}"))?;
    // Size is checked here only for types we know; unknown types are reported
    // when the tensor is used (naming it and the type).
    let size = match GgmlType::from_u32(ty) {
        Some(t) => {
            if !dims[0].is_multiple_of(t.block_elems() as u64) {
                return Err(format!(
                    "tensor `{name}` of type {} has a row of {} elements, not a multiple of its block size {}",
                    t.name(),
                    dims[0],
                    t.block_elems()
                ));
            }
            numel / t.block_elems() as u64 * t.block_bytes() as u64
        }
        None => 0,
    };
    let end = start
        .checked_add(size)
        .filter(|&e| e <= file_len)
        .ok_or_else(|| {
            format!(
            "truncated: tensor `{name}` needs bytes {start}..{} but the file is {file_len} bytes",
            start.saturating_add(size)
        )
        })?;
    Ok(TensorInfo {
        name,
        dims,
        ggml_type: ty,
        offset: start as usize,
        size: (end - start) as usize,
    })
}

/// A size that disagrees with the type and shape shows as tensors that overlap.
fn check_overlaps(tensors: &[TensorInfo]) -> std::result::Result<(), String> {
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if pair[0].offset + pair[0].size > pair[1].offset {
            return Err(format!(
                "tensor `{}` ({} bytes for its type and shape) overlaps tensor `{}`: its data is smaller than its type and shape say",
                pair[0].name, pair[0].size, pair[1].name
            ));
        }
    }
    Ok(())
}
