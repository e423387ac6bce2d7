//! Typed runtime errors. Each maps to one of the error kinds the web API exposes.

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
    #[error("the prompt has {tokens} tokens; this model accepts fewer than {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error(transparent)]
    Processor(#[from] pocketvlm_processor::ProcessorError),
    #[error(transparent)]
    Format(#[from] pocketvlm_format::FormatError),
    #[error("shape error: {0}")]
    Shape(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
