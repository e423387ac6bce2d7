//! Quantizing a model directory that is already written (v1 dense or v2 low-rank): the same
//! rotation and quantization as `compress … --bits`, without repeating the calibration and the
//! factorisation.

use std::borrow::Cow;
use std::path::Path;

use pocketvlm_format::Manifest;
use pocketvlm_format::dir;

use crate::budget::{count_sizes, record_kv_cache};
use crate::calib::Sample;
use crate::checkpoint::SourceMeta;
use crate::error::{CompressError, Result};
use crate::quant::{QuantOptions, quantize_tensors};
use crate::writer::{OutTensor, Sections, Written, write_model};

impl SourceMeta {
    /// Everything of a PocketVLM model directory except the weights.
    pub fn from_model_dir(model_dir: &Path, manifest: &Manifest) -> Result<Self> {
        Ok(Self {
            model: manifest.model.clone(),
            processor: manifest.processor.clone(),
            generation: manifest.generation.clone(),
            tokenizer_bytes: dir::read_tokenizer(model_dir, manifest)?,
            tokenizer: manifest.tokenizer.clone(),
            defaulted: manifest.source.defaulted_keys.clone(),
        })
    }
}

/// Rotate and quantize the float model in `model_dir` into `out_dir` and return the manifest
/// written (GPTQ, if `opts` asks for it, takes its input moments from `samples` run through that
/// float model). Its recipe is recorded as `<recipe>` unchanged; the compression section (if any) gets the new component sizes and
/// the INT8 latent cache size. A directory that is already quantized is a typed error.
pub fn quantize_dir(
    model_dir: &Path,
    out_dir: &Path,
    opts: &QuantOptions,
    max_shard_bytes: u64,
    samples: Option<&[Sample]>,
) -> Result<Written> {
    let data = dir::open(model_dir)?;
    let manifest = &data.manifest;
    if manifest.quantization.is_some() {
        return Err(CompressError::BadOptions {
            recipe: format!("quantize {}", model_dir.display()),
            what: "a float model directory (this one is already quantized)".into(),
        });
    }
    let mut meta = SourceMeta::from_model_dir(model_dir, manifest)?;
    let mut compression = manifest.compression.clone();
    let tensors = manifest
        .tensors
        .iter()
        .map(|t| {
            Ok(OutTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                encoding: t.encoding()?,
                bytes: Cow::Owned(data.tensor_bytes(&t.name)?.into_owned()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (out, quantized) = quantize_tensors(&mut meta.model, compression.as_ref(), tensors, opts, samples)?;
    if let Some(c) = compression.as_mut() {
        count_sizes(&mut c.sizes, &out);
        record_kv_cache(&meta.model, c, true);
    }
    let sections = Sections {
        recipe: &manifest.source.recipe,
        compression,
        quantization: Some(quantized.section),
        allocation: quantized.allocation.as_ref(),
    };
    write_model(&meta, sections, out, out_dir, max_shard_bytes)
}
