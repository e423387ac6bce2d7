//! Typed errors for everything that can be wrong with a model directory.

use thiserror::Error;

/// Every way reading or writing a PocketVLM model can fail. Each malformed case has its own
/// variant so callers (and tests) can tell them apart without parsing messages.
#[derive(Debug, Error)]
pub enum FormatError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest is not valid JSON for this format: {0}")]
    InvalidManifest(String),
    #[error("not a PocketVLM manifest (format tag {found:?}, expected {expected:?})")]
    NotAPocketVlmManifest { found: String, expected: &'static str },
    #[error("unsupported format version {found} (this reader understands versions {min}..={max})")]
    UnsupportedVersion { found: u32, min: u32, max: u32 },
    #[error("tensor {tensor:?} uses encoding {encoding:?}, which this reader does not know")]
    UnknownEncoding { tensor: String, encoding: String },
    #[error("tensor {name:?} is required by the model config but missing from the tensor table")]
    MissingTensor { name: String },
    #[error("tensor {name:?} is not part of this model's architecture")]
    UnexpectedTensor { name: String },
    #[error("tensor {name:?} is listed more than once")]
    DuplicateTensor { name: String },
    #[error("tensor {name:?} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name:?}: {reason}")]
    BadTensorEntry { name: String, reason: String },
    #[error("shard {shard:?} failed its checksum: expected sha256 {expected}, found {found}")]
    ChecksumMismatch { shard: String, expected: String, found: String },
    #[error("shard {shard:?} is truncated or padded: expected {expected} bytes, found {found}")]
    ShardSizeMismatch { shard: String, expected: u64, found: u64 },
    #[error("shard {shard:?} was never added")]
    MissingShard { shard: String },
    #[error("shard index {index} is out of range ({count} shards)")]
    NoSuchShard { index: usize, count: usize },
    #[error("config key {key:?} is missing")]
    MissingConfigKey { key: String },
    #[error("config key {key:?} is invalid: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("no tensor named {name:?}")]
    NoSuchTensor { name: String },
    #[error("quantization: {0}")]
    Quant(#[from] crate::quant::QuantError),
}

impl FormatError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.as_ref().display().to_string(), source }
    }

    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        FormatError::InvalidConfig { key: key.into(), reason: reason.into() }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
