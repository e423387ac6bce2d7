//! Converting a Hugging Face checkpoint directory into a PocketVLM model directory.

use std::path::{Path, PathBuf};

use pocketvlm_format::architecture::{dense_tensors, expected_tensors};
use pocketvlm_format::dir::{DirSink, write_manifest};
use pocketvlm_format::manifest::{COMPRESSION_VERSION, FORMAT_TAG, QUANTIZATION_VERSION};
use pocketvlm_format::quant::Quantization;
use pocketvlm_format::{
    Compression, DEFAULT_SHARD_BYTES, Encoding, FormatError, GenerationConfig, Manifest, ModelConfig,
    ProcessorConfig, ShardPacker, SourceInfo, TokenizerInfo,
};
use serde_json::Value;

use crate::calib::CalibOptions;
use crate::checkpoint::Checkpoint;
use crate::error::{CompressError, Result};
use crate::hf_config::{generation_config, model_config, processor_config, read_json};
use crate::quant::{QuantOptions, quantize_tensors};
use crate::tokenizer;

/// How the weights are transformed on the way into the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Every tensor copied bit for bit in its source encoding (unless [`ConvertOptions::quant`]
    /// asks for a quantized model).
    Dense,
}

impl std::str::FromStr for Recipe {
    type Err = CompressError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dense" => Ok(Recipe::Dense),
            other => Err(CompressError::UnknownRecipe(other.to_string())),
        }
    }
}

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Dense => "dense",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub recipe: Recipe,
    pub max_shard_bytes: u64,
    /// Rotate and quantize the model (see [`crate::quant::model`]).
    pub quant: Option<QuantOptions>,
    /// Calibration samples for GPTQ ([`QuantOptions::gptq`]); only with `quant`.
    pub calib: Option<CalibOptions>,
    /// A file keeping prepared calibration samples between runs (see [`crate::calib::cache`]).
    pub calib_cache: Option<PathBuf>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            recipe: Recipe::Dense,
            max_shard_bytes: DEFAULT_SHARD_BYTES,
            quant: None,
            calib: None,
            calib_cache: None,
        }
    }
}

/// What a conversion produced.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub out_dir: PathBuf,
    pub manifest: Manifest,
}

fn optional_json(path: PathBuf) -> Result<Option<Value>> {
    if path.exists() { read_json(&path).map(Some) } else { Ok(None) }
}

/// Everything of a checkpoint directory except the weights, resolved into manifest sections.
pub struct SourceMeta {
    pub model: ModelConfig,
    pub processor: ProcessorConfig,
    pub generation: GenerationConfig,
    pub tokenizer_bytes: Vec<u8>,
    pub tokenizer: TokenizerInfo,
    pub defaulted: Vec<String>,
}

impl SourceMeta {
    /// Read `config.json`, the processor settings, the generation config and the tokenizer.
    pub fn read(hf_dir: &Path) -> Result<Self> {
        let config_path = hf_dir.join("config.json");
        if !config_path.exists() {
            return Err(CompressError::NotACheckpoint {
                path: hf_dir.display().to_string(),
                reason: "no config.json".into(),
            });
        }
        let config = read_json(&config_path)?;
        let mut defaulted = Vec::new();
        let model = model_config(&config, &mut defaulted)?;

        let processor = optional_json(hf_dir.join("processor_config.json"))?;
        let image_processor = match optional_json(hf_dir.join("preprocessor_config.json"))? {
            Some(v) => v,
            None => processor.as_ref().and_then(|p| p.get("image_processor")).cloned().ok_or_else(|| {
                CompressError::NotACheckpoint {
                    path: hf_dir.display().to_string(),
                    reason: "no image processor settings (preprocessor_config.json)".into(),
                }
            })?,
        };
        let processor_cfg = processor_config(&image_processor, processor.as_ref(), &model, &mut defaulted)?;
        let generation =
            generation_config(optional_json(hf_dir.join("generation_config.json"))?.as_ref(), &config)?;
        let (tokenizer_bytes, tokenizer) = tokenizer::read(hf_dir, processor.as_ref())?;
        Ok(Self { model, processor: processor_cfg, generation, tokenizer_bytes, tokenizer, defaulted })
    }
}

/// A tensor on its way into the shards.
pub struct OutTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub encoding: Encoding,
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// Write a model directory: the tensors (which must be exactly those the config and
/// `compression` imply, in any order), the tokenizer and the manifest.
pub fn write_model<'a>(
    meta: &SourceMeta,
    recipe: &str,
    compression: Option<Compression>,
    quantization: Option<Quantization>,
    tensors: impl IntoIterator<Item = OutTensor<'a>>,
    out_dir: &Path,
    max_shard_bytes: u64,
) -> Result<Manifest> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| FormatError::Io { path: out_dir.display().to_string(), source: e })?;
    let mut packer = ShardPacker::new(DirSink { dir: out_dir.to_path_buf() }, max_shard_bytes)?;
    for t in tensors {
        packer.add(&t.name, &t.shape, t.encoding, &t.bytes)?;
    }
    let (_, shards, tensor_table) = packer.finish()?;

    let tokenizer_path = out_dir.join(&meta.tokenizer.file);
    std::fs::write(&tokenizer_path, &meta.tokenizer_bytes)
        .map_err(|e| FormatError::Io { path: tokenizer_path.display().to_string(), source: e })?;

    let manifest = Manifest {
        format: FORMAT_TAG.to_string(),
        // float models stay readable by v2 readers; v3 is written once a model is quantized
        version: if quantization.is_some() { QUANTIZATION_VERSION } else { COMPRESSION_VERSION },
        model: meta.model.clone(),
        processor: meta.processor.clone(),
        tokenizer: meta.tokenizer.clone(),
        generation: meta.generation.clone(),
        source: SourceInfo { recipe: recipe.to_string(), defaulted_keys: meta.defaulted.clone() },
        compression,
        quantization,
        shards,
        tensors: tensor_table,
    };
    manifest.validate()?;
    write_manifest(out_dir, &manifest)?;
    Ok(manifest)
}

/// Check that a checkpoint holds exactly the tensors of its architecture (a stored `lm_head`
/// is tolerated, and skipped, when embeddings are tied).
pub fn check_checkpoint_tensors(
    model: &ModelConfig,
    tensors: &std::collections::BTreeMap<String, crate::checkpoint::RawTensor<'_>>,
) -> Result<()> {
    let expected = dense_tensors(model);
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let skipped = |n: &str| model.text.tie_word_embeddings && n == "lm_head.weight";
    if let Some(extra) = tensors.keys().find(|n| !known.contains(n.as_str()) && !skipped(n)) {
        return Err(FormatError::UnexpectedTensor { name: extra.clone() }.into());
    }
    for (name, shape) in &expected {
        let t = tensors.get(name).ok_or_else(|| FormatError::MissingTensor { name: name.clone() })?;
        if &t.shape != shape {
            return Err(FormatError::ShapeMismatch {
                name: name.clone(),
                expected: shape.clone(),
                found: t.shape.clone(),
            }
            .into());
        }
    }
    Ok(())
}

/// Convert the checkpoint in `hf_dir` into a model directory `out_dir` (created if needed).
pub fn convert(hf_dir: &Path, out_dir: &Path, options: &ConvertOptions) -> Result<ConvertSummary> {
    let mut meta = SourceMeta::read(hf_dir)?;
    let checkpoint = Checkpoint::open(hf_dir)?;
    let tensors = checkpoint.tensors()?;
    check_checkpoint_tensors(&meta.model, &tensors)?;
    let out = expected_tensors(&meta.model, None).into_iter().map(|(name, shape)| {
        let t = &tensors[&name];
        OutTensor { name, shape, encoding: t.encoding, bytes: std::borrow::Cow::Borrowed(t.bytes) }
    });
    // the samples serve GPTQ only: they are prepared (or read from the cache) when it runs
    let samples = match (&options.calib, &options.quant) {
        (None, _) => None,
        (Some(_), Some(q)) if q.gptq.is_none() => None,
        (Some(c), Some(_)) => Some(crate::calib::cache::for_checkpoint(
            hf_dir,
            c,
            options.calib_cache.as_deref(),
            &indicatif::ProgressBar::hidden(),
        )?),
        (Some(_), None) => {
            return Err(CompressError::BadOptions {
                recipe: options.recipe.name().into(),
                what: "a low-bit recipe (--bits) for calibration data: a float dense conversion uses none"
                    .into(),
            });
        }
    };
    let (out, quantization) = match &options.quant {
        Some(q) => {
            let samples = samples.as_ref().map(|s| s.samples.as_slice());
            let (out, quantized) = quantize_tensors(&mut meta.model, None, out.collect(), q, samples)?;
            (out, Some(quantized.section))
        }
        None => (out.collect(), None),
    };
    let recipe = options.recipe.name();
    let manifest = write_model(&meta, recipe, None, quantization, out, out_dir, options.max_shard_bytes)?;
    Ok(ConvertSummary { out_dir: out_dir.to_path_buf(), manifest })
}
