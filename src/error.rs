//! One error type for the engine crate. Every message names the file or the
//! argument at fault so a user can fix it without reading the source.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are wrong (bad JSON, corrupt safetensors, ...).
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// The model directory is readable but describes something we cannot run
    /// (unsupported architecture, missing tensor, wrong shape, ...).
    #[error("{0}")]
    Model(String),
    /// Tokenizer failure (encode/decode) or a bad tokenizer file.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template missing, failing to compile, or raising while rendering.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A caller-supplied argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The KV cache cannot hold what was asked of it.
    #[error("out of KV cache blocks: {0}")]
    OutOfBlocks(String),
    /// The compute device failed or is missing (no CUDA driver, a failed launch, ...).
    #[error("{0}")]
    Device(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn bad_file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }
}

/// Reads a file to a string, naming the file on failure.
pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Reads and parses a JSON file, naming the file on failure.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))
}
