//! Errors of the converter.

use pocketvlm_format::FormatError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompressError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("quantization: {0}")]
    Quant(#[from] pocketvlm_format::quant::QuantError),
    #[error("{path}: not a Hugging Face checkpoint directory ({reason})")]
    NotACheckpoint { path: String, reason: String },
    #[error("{path}: invalid JSON: {reason}")]
    BadJson { path: String, reason: String },
    #[error("{file}: invalid safetensors: {reason}")]
    BadSafetensors { file: String, reason: String },
    #[error("tensor {name:?} has dtype {dtype}, only F32, F16 and BF16 are supported")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tensor {name:?} appears in more than one safetensors file")]
    DuplicateTensor { name: String },
    #[error("unknown recipe {0:?} (known: dense, svd, asvd, svd-llm, qsvd, laser)")]
    UnknownRecipe(String),
    #[error("CPU model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("calibration data {path}: {reason}")]
    MissingCalibration { path: String, reason: String },
    #[error("cannot read image {path}: {reason}")]
    UnreadableImage { path: String, reason: String },
    #[error("budget --{name} = {value} is out of range ({range})")]
    BudgetOutOfRange { name: &'static str, value: f64, range: &'static str },
    #[error("--model-bytes {budget} is below the smallest model the widths allow ({need} bytes)")]
    BudgetTooSmall { budget: u64, need: u64 },
    #[error("recipe {recipe} needs {what}")]
    BadOptions { recipe: String, what: String },
    #[error("linear algebra: {0}")]
    Linalg(String),
    #[error("no tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Processor(#[from] pocketvlm_processor::ProcessorError),
}

pub type Result<T, E = CompressError> = std::result::Result<T, E>;
