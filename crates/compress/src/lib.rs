//! The PocketVLM compressor: reads Hugging Face SmolVLM checkpoints (safetensors, single file or
//! sharded; f32, f16 or bf16) and writes PocketVLM model directories.

pub mod allocate;
pub mod budget;
pub mod calib;
pub mod checkpoint;
pub mod error;
pub mod eval;
pub mod hf_config;
pub mod lowrank;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod quant;
pub mod report;
pub mod rotate;
pub mod tokenizer;
pub mod writer;

pub use budget::Budgets;
pub use error::{CompressError, Result};
pub use lowrank::Method;
pub use pipeline::{DenseOptions, LowRankOptions, Plan, Searched, Summary, compress, latent_named};
pub use report::ReportFiles;
