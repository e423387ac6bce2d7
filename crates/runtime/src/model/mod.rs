//! The SmolVLM model on the GPU (f32 activations; float or quantized layers chosen from the
//! manifest in [`linear`]) and token-by-token generation ([`Generator`]).
//!
//! The caller owns the loop: [`Generator::start`] runs the prefill, each
//! [`Generator::next_token`] returns one token (or `None` once finished), so streaming and abort
//! are the caller's choice between two calls; the vision tower and the prefill, which take minutes
//! on a software adapter, run in parts that a [`Stop`] ends ([`Interrupt`]).

mod generator;
pub mod interrupt;
pub mod kv_cache;
pub mod linear;
mod prefix;
pub mod prepare;
pub mod qkv;
pub mod sampling;
pub mod scratch;
pub mod text;
pub mod vision;
pub mod weights;

use pocketvlm_format::{ModelConfig, ModelData};

use crate::device::Gpu;
use crate::encoder::RecordProfile;
use crate::error::{Result, RuntimeError};
use crate::memory::DeviceBuffer;
pub use generator::{DecodeProfiling, DecodeRecording, Generator};
pub use interrupt::{Interrupt, Stop};
pub use kv_cache::{CacheKind, KvCache};
pub use prefix::reusable_prefix;
pub use prepare::Prepared;
use text::TextModel;
use vision::VisionModel;
use weights::WeightLoader;

/// A loaded model: config, weights and fixed tables on the GPU.
pub struct Model {
    pub config: ModelConfig,
    pub eos_token_ids: Vec<u32>,
    vision: VisionModel,
    text: TextModel,
    weight_bytes: u64,
    step_weight_bytes: u64,
    table_bytes: u64,
    /// The cache new generations use (the latent where the format allows it, by default).
    pub cache_kind: CacheKind,
    /// Time every dispatch of the vision tower and of the prefill on the GPU (one compute pass
    /// each, which slows them; [`ImageEmbedding::gpu_time`], [`Generator::prefill_gpu_time`]):
    /// for the bench, off by default.
    pub time_passes: bool,
}

/// Image features computed by the vision tower and connector.
pub struct ImageEmbedding {
    /// f32 `[rows, text hidden]`.
    pub features: DeviceBuffer,
    pub rows: usize,
    /// The most bytes the vision pass held at once beyond what was held before it: pixel values,
    /// activations, kernel scratch it grew, and these features.
    pub pass_bytes: u64,
    /// GPU time of the pass by kind of work, when [`Model::time_passes`] (else empty).
    pub gpu_time: RecordProfile,
}

/// GPU memory held for a generation, in bytes, by what holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// The model's weights (held while the model is loaded).
    pub weights: u64,
    /// Fixed tables besides the weights (the RoPE table).
    pub tables: u64,
    /// This generation's KV cache.
    pub kv_cache: u64,
    /// Activations and scratch: the most any single pass allocated (the vision tower, the prefill
    /// or one decode step) plus the generation's logits.
    pub activations: u64,
}

impl MemoryUsage {
    pub fn total(&self) -> u64 {
        self.weights + self.tables + self.kv_cache + self.activations
    }
}

impl Model {
    /// Upload a model's weights and tables: float models (any of f32, f16, bf16) and quantized
    /// ones (format v3, every scheme the compressor writes). A factored model, or a layer whose
    /// arithmetic the kernels cannot perform, is a typed [`RuntimeError::UnsupportedModel`].
    pub async fn load(gpu: &Gpu, data: &ModelData) -> Result<Self> {
        check_supported(&data.manifest)?;
        let config = data.manifest.model.clone();
        let before = gpu.held_bytes();
        let loader = WeightLoader::new(gpu, data);
        let vision = VisionModel::load(&loader, &config).await?;
        let before_text = loader.bytes();
        let text = TextModel::load(&loader, &config).await?;
        let weight_bytes = loader.bytes();
        let step_weight_bytes = weight_bytes - before_text - text.embedding_only_bytes();
        Ok(Self {
            eos_token_ids: data.manifest.generation.eos_token_ids.clone(),
            config,
            vision,
            text,
            weight_bytes,
            step_weight_bytes,
            table_bytes: gpu.held_bytes() - before - weight_bytes,
            cache_kind: CacheKind::default(),
            time_passes: false,
        })
    }

    /// Bytes of weights held on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Bytes of weights one decode step reads: every weight of the text decoder (its layers, the
    /// final norm, the LM head) but the embedding table, of which a step reads one row — unless
    /// the head reads the table itself (a float tied head). The numerator of the bench's memory
    /// roofline: a step can take no less than these bytes ÷ the memory's bandwidth.
    pub fn step_weight_bytes(&self) -> u64 {
        self.step_weight_bytes
    }

    /// Bytes of the fixed tables (RoPE, the online rotations' signs and cores) held on the GPU.
    pub fn table_bytes(&self) -> u64 {
        self.table_bytes
    }

    /// Bytes one token of context takes in the KV cache of new generations.
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.kv_bytes_per_token_of(self.cache_kind)
    }

    /// Bytes one token of context would take in a cache of `kind`.
    pub fn kv_bytes_per_token_of(&self, kind: CacheKind) -> u64 {
        self.text.cache_layout(&self.config, kind).bytes_per_token()
    }

    /// Longest sequence (prompt + generated) the model accepts.
    pub fn max_positions(&self) -> usize {
        self.text.max_positions
    }

    /// A prompt of `tokens` tokens leaves room for `max_new_tokens` generated ones within
    /// [`Model::max_positions`], or the typed error saying it does not.
    pub fn check_room(&self, tokens: usize, max_new_tokens: usize) -> Result<()> {
        let limit = self.max_positions();
        if tokens >= limit || max_new_tokens > limit - tokens {
            return Err(RuntimeError::PromptTooLong { tokens, max_new_tokens, limit });
        }
        Ok(())
    }

    /// f32 pixel values of `tiles` image tiles (`[tiles, channels, S, S]`).
    pub fn pixel_values_len(&self, tiles: usize) -> usize {
        let v = &self.config.vision;
        tiles * v.num_channels * v.image_size * v.image_size
    }

    /// Run the vision tower and connector on `tiles` tiles of pixel values (f32
    /// `[tiles, 3, S, S]`), in parts that `stop` can end ([`Interrupt`]).
    pub async fn encode_image(
        &self,
        gpu: &Gpu,
        pixels: &[f32],
        tiles: usize,
        stop: &Stop,
    ) -> Result<ImageEmbedding> {
        let v = &self.config.vision;
        if tiles == 0 || pixels.len() != self.pixel_values_len(tiles) {
            return Err(RuntimeError::Shape(format!(
                "{} pixel values for {tiles} tiles of {}×{}×{}",
                pixels.len(),
                v.num_channels,
                v.image_size,
                v.image_size
            )));
        }
        let start = gpu.start_pass();
        let buffer = gpu.storage_buffer("pixel values", bytemuck::cast_slice(pixels)).await?;
        let mut encoder = gpu.encoder();
        if self.time_passes {
            encoder.time_dispatches(gpu);
        }
        let mut interrupt = Interrupt::new(stop, "the vision tower");
        let (cfg, vision) = (&self.config, &self.vision);
        let features =
            vision::encode_image(gpu, &mut encoder, &mut interrupt, cfg, vision, &buffer, tiles).await?;
        let pass_bytes = gpu.pass_bytes(start);
        Ok(ImageEmbedding {
            features,
            rows: tiles * self.config.image_seq_len(),
            pass_bytes,
            gpu_time: interrupt.finish(gpu, encoder).await?,
        })
    }
}

/// Whether this runtime runs the model: every format kind (dense or factored, float or
/// quantized) has kernels; what a layer can't do is refused with a typed error while loading.
pub fn check_supported(manifest: &pocketvlm_format::Manifest) -> Result<()> {
    if let Some(c) = &manifest.compression {
        c.validate(&manifest.model).map_err(|e| RuntimeError::UnsupportedModel(e.to_string()))?;
    }
    Ok(())
}
