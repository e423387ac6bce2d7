//! The PocketVLM model format, shared by the compressor (which writes it) and the runtime
//! (which reads it, natively and in the browser).
//!
//! A model is a directory holding `manifest.json` (see [`manifest`]), the Hugging Face
//! `tokenizer.json`, and binary shards. This crate has no GPU and no I/O framework; [`dir`]
//! offers plain `std::fs` helpers for native callers, while the browser feeds fetched shard bytes
//! to [`ModelData::new`].

pub mod architecture;
pub mod components;
pub mod compression;
pub mod config;
pub mod dir;
pub mod encoding;
pub mod error;
pub mod manifest;
pub mod quant;
pub mod shards;

pub use compression::{CalibrationInfo, ComponentBytes, Compression, KvCacheInfo, LayerRanks, Ratios};
pub use config::{
    ConnectorConfig, GenerationConfig, ModelConfig, ProcessorConfig, TextConfig, TokenizerInfo, VisionConfig,
};
pub use encoding::Encoding;
pub use error::{FormatError, Result};
pub use manifest::{
    ALIGNMENT, DEFAULT_SHARD_BYTES, MANIFEST_FILE, Manifest, ShardEntry, SourceInfo, TensorEntry, TensorPart,
    VERSION,
};
pub use shards::{
    MemorySink, ModelData, ShardPacker, ShardSet, ShardSink, sha256_hex, verify_shard, verify_tokenizer,
};
