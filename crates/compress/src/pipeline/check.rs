//! The check of a written candidate: the mean answer loss on the calibration samples of the
//! model read back from its files (through the format's reader and the integer contract), next
//! to the dense model's (measured while collecting statistics).

use std::path::Path;

use pocketvlm_format::Manifest;

use super::calibrate::Calibration;
use super::{Clock, LowRankOptions};
use crate::error::Result;
use crate::model::CpuModel;

/// `(dense, compressed)` mean answer loss over the calibration samples.
pub fn calibration_loss(
    out_dir: &Path,
    manifest: &Manifest,
    calibration: &Calibration,
    opts: &LowRankOptions,
    clock: &mut Clock,
) -> Result<(f64, f64)> {
    let s = &calibration.samples;
    let compressed = CpuModel::from_format(out_dir)?;
    // the cached image features are the float connector's output, rotated into a rotated
    // model's residual basis (`R f`): the check measures the quantized decoder and embeddings,
    // not the quantized vision tower and connector (the fixture model tests measure those end to
    // end against transformers)
    let rotation = match manifest.quantization.as_ref().and_then(|q| q.residual_rotation) {
        Some(spec) => Some(spec.build()?),
        None => None,
    };
    let stage = opts.progress.stage("compressed loss");
    stage.set_total(s.samples.len() as u64);
    let mut sum = 0.0;
    for sample in &s.samples {
        let features = sample.features_in(rotation.as_ref())?;
        let embeds = compressed.merge_embeddings(&sample.ids, features.as_ref())?;
        let loss = compressed.answer_loss(&embeds, &sample.ids, sample.answer_start, None)?;
        sum += loss.to_scalar::<f32>()? as f64;
        stage.step();
    }
    drop(stage);
    clock.lap("check");
    Ok((calibration.collected.mean_loss, sum / s.samples.len().max(1) as f64))
}
