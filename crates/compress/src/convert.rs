//! Converting a Hugging Face checkpoint directory into a PocketVLM model directory.

use std::path::{Path, PathBuf};

use pocketvlm_format::architecture::dense_tensors;
use pocketvlm_format::dir::{DirSink, write_manifest};
use pocketvlm_format::manifest::{FORMAT_TAG, VERSION};
use pocketvlm_format::{DEFAULT_SHARD_BYTES, FormatError, Manifest, ShardPacker, SourceInfo};
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::error::{CompressError, Result};
use crate::hf_config::{generation_config, model_config, processor_config, read_json};
use crate::tokenizer;

/// How the weights are transformed on the way into the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Every tensor copied bit for bit in its source encoding.
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
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self { recipe: Recipe::Dense, max_shard_bytes: DEFAULT_SHARD_BYTES }
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

/// Convert the checkpoint in `hf_dir` into a model directory `out_dir` (created if needed).
pub fn convert(hf_dir: &Path, out_dir: &Path, options: &ConvertOptions) -> Result<ConvertSummary> {
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
    let (tokenizer_bytes, tokenizer_info) = tokenizer::read(hf_dir, processor.as_ref())?;

    let checkpoint = Checkpoint::open(hf_dir)?;
    let tensors = checkpoint.tensors()?;
    let expected = dense_tensors(&model);
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    // With tied embeddings a stored lm_head is a duplicate of the embedding table and is skipped.
    let skipped = |n: &str| model.text.tie_word_embeddings && n == "lm_head.weight";
    if let Some(extra) = tensors.keys().find(|n| !known.contains(n.as_str()) && !skipped(n)) {
        return Err(FormatError::UnexpectedTensor { name: extra.clone() }.into());
    }

    std::fs::create_dir_all(out_dir)
        .map_err(|e| FormatError::Io { path: out_dir.display().to_string(), source: e })?;
    let mut packer = ShardPacker::new(DirSink { dir: out_dir.to_path_buf() }, options.max_shard_bytes)?;
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
        packer.add(name, &t.shape, t.encoding, t.bytes)?;
    }
    let (_, shards, tensor_table) = packer.finish()?;

    let tokenizer_path = out_dir.join(&tokenizer_info.file);
    std::fs::write(&tokenizer_path, &tokenizer_bytes)
        .map_err(|e| FormatError::Io { path: tokenizer_path.display().to_string(), source: e })?;

    let manifest = Manifest {
        format: FORMAT_TAG.to_string(),
        version: VERSION,
        model,
        processor: processor_cfg,
        tokenizer: tokenizer_info,
        generation,
        source: SourceInfo { recipe: options.recipe.name().to_string(), defaulted_keys: defaulted },
        shards,
        tensors: tensor_table,
    };
    manifest.validate()?;
    write_manifest(out_dir, &manifest)?;
    Ok(ConvertSummary { out_dir: out_dir.to_path_buf(), manifest })
}
