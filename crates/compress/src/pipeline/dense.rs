//! The dense plan's stages: every weight at full rank, copied bit for bit in its source
//! encoding, or — with a low-bit recipe — rotated and quantized (GPTQ takes its input moments
//! from the calibration samples); then the files.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use pocketvlm_format::DEFAULT_SHARD_BYTES;
use pocketvlm_format::architecture::expected_tensors;

use super::{Clock, Summary};
use crate::calib::{self, CalibOptions, Samples};
use crate::checkpoint::Source;
use crate::error::{CompressError, Result};
use crate::progress::Progress;
use crate::quant::{QuantOptions, quantize_tensors};
use crate::writer::{OutTensor, Sections, write_model};

/// What the dense plan needs.
#[derive(Clone, Debug)]
pub struct DenseOptions {
    pub max_shard_bytes: u64,
    /// Rotate and quantize the model (see [`crate::quant::model`]).
    pub quant: Option<QuantOptions>,
    /// Calibration samples for GPTQ ([`QuantOptions::gptq`]) and the width allocation
    /// ([`QuantOptions::model_bytes`]); only with `quant`.
    pub calib: Option<CalibOptions>,
    /// A file keeping prepared calibration samples between runs (see [`crate::calib::cache`]).
    pub calib_cache: Option<PathBuf>,
    /// Where the run reports its stages and their times.
    pub progress: Progress,
}

impl Default for DenseOptions {
    fn default() -> Self {
        Self {
            max_shard_bytes: DEFAULT_SHARD_BYTES,
            quant: None,
            calib: None,
            calib_cache: None,
            progress: Progress::silent(),
        }
    }
}

/// The options no stage can check better than before starting.
pub(super) fn check_options(opts: &DenseOptions) -> Result<()> {
    if opts.calib.is_some() && opts.quant.is_none() {
        return Err(CompressError::BadOptions {
            recipe: "dense".into(),
            what: "a low-bit recipe (--bits) for calibration data: a float dense conversion uses none".into(),
        });
    }
    Ok(())
}

/// Write `source` at full rank to `out_dir`.
pub(super) fn dense(
    source: &Source,
    out_dir: &Path,
    opts: &DenseOptions,
    mut clock: Clock,
) -> Result<Summary> {
    let samples = samples(source, opts, &mut clock)?;
    let tensors = source.tensors();
    let out: Vec<OutTensor> = expected_tensors(&source.meta.model, None)
        .into_iter()
        .map(|(name, shape)| {
            let t = &tensors[&name];
            OutTensor { name, shape, encoding: t.encoding, bytes: Cow::Borrowed(t.bytes) }
        })
        .collect();
    let mut meta = source.meta.clone();
    let (out, section, allocation) = match &opts.quant {
        Some(q) => {
            let samples = samples.as_ref().map(|s| s.samples.as_slice());
            let (out, quantized) = quantize_tensors(&mut meta.model, None, out, q, samples)?;
            clock.lap("quantize");
            (out, Some(quantized.section), quantized.allocation)
        }
        None => (out, None, None),
    };
    let sections = Sections {
        recipe: "dense",
        compression: None,
        quantization: section,
        allocation: allocation.as_ref(),
    };
    let written = write_model(&meta, sections, out, out_dir, opts.max_shard_bytes)?;
    clock.lap("write");
    Ok(Summary::written(out_dir, written, clock))
}

/// The calibration samples, which serve GPTQ and the width allocation only: prepared (or read
/// from the cache) when one of them runs.
fn samples(source: &Source, opts: &DenseOptions, clock: &mut Clock) -> Result<Option<Samples>> {
    let (Some(c), Some(q)) = (&opts.calib, &opts.quant) else { return Ok(None) };
    if !q.needs_samples() {
        return Ok(None);
    }
    let stage = opts.progress.stage("calibration samples");
    let samples = calib::cache::load_or_prepare(source, None, c, opts.calib_cache.as_deref(), &stage)?;
    drop(stage);
    clock.lap("samples");
    Ok(Some(samples))
}
