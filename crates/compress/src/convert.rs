//! Converting a Hugging Face checkpoint directory into a PocketVLM model directory.

use std::path::{Path, PathBuf};

use pocketvlm_format::architecture::expected_tensors;
use pocketvlm_format::{DEFAULT_SHARD_BYTES, Manifest};

use crate::calib::CalibOptions;
use crate::checkpoint::{Checkpoint, SourceMeta, check_checkpoint_tensors};
use crate::error::{CompressError, Result};
use crate::quant::{QuantOptions, quantize_tensors};
use crate::writer::{OutTensor, write_model};

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
            &crate::progress::Progress::silent().stage("calibration samples"),
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
