//! Typed runtime errors. Each maps to one of the error kinds the web API exposes.

use pocketvlm_format::FormatError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("WebGPU is not available: {0}")]
    NoWebGpu(String),
    #[error("no suitable GPU adapter: {0}")]
    NoAdapter(String),
    #[error("the GPU device could not be created: {0}")]
    RequestDevice(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
    #[error("GPU validation error: {0}")]
    Validation(String),
    #[error("reading a GPU buffer back failed: {0}")]
    Readback(String),
    #[error("shader {shader:?}: {message}")]
    Shader { shader: String, message: String },
    #[error("{what} needs a {bytes}-byte binding; this device allows {limit} bytes per storage binding")]
    BindingTooLarge { what: String, bytes: u64, limit: u64 },
    /// The prompt and the tokens asked for do not fit in the model's context (`limit`
    /// positions): `tokens + max_new_tokens ≤ limit` is needed, and at least one new token.
    #[error(
        "the prompt has {tokens} tokens and asks for up to {max_new_tokens} new ones; this model's context holds {limit}"
    )]
    PromptTooLong { tokens: usize, max_new_tokens: usize, limit: usize },
    #[error(transparent)]
    Processor(#[from] pocketvlm_processor::ProcessorError),
    /// A model file could not be fetched: `status` is the HTTP status when a response arrived
    /// (`None` for network, CORS or scope failures).
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, status: Option<u16>, message: String },
    /// A model file's bytes differ from what the manifest records (size or sha256).
    #[error("{file} failed its integrity check: expected {expected}, found {found}")]
    Integrity { file: String, expected: String, found: String },
    #[error(transparent)]
    Format(pocketvlm_format::FormatError),
    #[error("shape error: {0}")]
    Shape(String),
    /// A valid model this runtime cannot run (yet): low-rank factors, or a quantized layer whose
    /// arithmetic the kernels lack (the message names the tensor and the reason).
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// The caller aborted the operation (an `AbortSignal` in the browser).
    #[error("aborted: {0}")]
    Aborted(String),
}

/// Checksum and size mismatches become [`RuntimeError::Integrity`]; everything else that is wrong
/// with a model stays a [`RuntimeError::Format`].
impl From<FormatError> for RuntimeError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::ChecksumMismatch { shard, expected, found } => RuntimeError::Integrity {
                file: shard,
                expected: format!("sha256 {expected}"),
                found: format!("sha256 {found}"),
            },
            FormatError::ShardSizeMismatch { shard, expected, found } => RuntimeError::Integrity {
                file: shard,
                expected: format!("{expected} bytes"),
                found: format!("{found} bytes"),
            },
            other => RuntimeError::Format(other),
        }
    }
}

impl RuntimeError {
    /// [`RuntimeError::UnsupportedModel`] for the quantized layer `name`: why the kernels cannot
    /// run it.
    pub(crate) fn quantized_layer(name: &str, why: impl std::fmt::Display) -> Self {
        RuntimeError::UnsupportedModel(format!("quantized layer {name:?}: {why}"))
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
