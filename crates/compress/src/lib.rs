//! The PocketVLM compressor: reads Hugging Face SmolVLM checkpoints (safetensors, single file or
//! sharded; f32, f16 or bf16) and writes PocketVLM model directories.

pub mod checkpoint;
pub mod convert;
pub mod error;
pub mod hf_config;
pub mod tokenizer;

pub use convert::{ConvertOptions, ConvertSummary, Recipe, convert};
pub use error::{CompressError, Result};
