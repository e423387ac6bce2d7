//! Calibration: the samples (prepared, or read from the cache) and the statistics of every
//! target's input (and, for LASER, output gradients) over them.

use pocketvlm_format::CalibrationInfo;

use super::{Clock, LowRankOptions};
use crate::calib::{self, CalibOptions, Collected, Samples};
use crate::checkpoint::Source;
use crate::error::Result;
use crate::lowrank::Method;
use crate::model::{CpuModel, Target};

/// The samples and what was measured over them.
pub struct Calibration {
    pub samples: Samples,
    pub collected: Collected,
}

/// The calibration of `targets`, when `opts` has calibration data.
pub fn calibrate(
    source: &Source,
    model: &CpuModel,
    opts: &LowRankOptions,
    targets: &[Target],
    clock: &mut Clock,
) -> Result<Option<Calibration>> {
    let Some(c) = &opts.calib else { return Ok(None) };
    let stage = opts.progress.stage("calibration samples");
    let samples = calib::cache::load_or_prepare(source, Some(model), c, opts.calib_cache.as_deref(), &stage)?;
    drop(stage);
    clock.lap("samples");
    let stage = opts.progress.stage("statistics");
    let collected = calib::collect(model, &samples.samples, targets, opts.method == Method::Laser, &stage)?;
    drop(stage);
    clock.lap("statistics");
    Ok(Some(Calibration { samples, collected }))
}

/// The manifest's record of a calibration.
pub fn info(c: &CalibOptions, calibration: &Calibration) -> CalibrationInfo {
    let (s, col) = (&calibration.samples, &calibration.collected);
    CalibrationInfo {
        mode: s.mode.into(),
        targets: s.targets.clone(),
        samples: s.samples.len(),
        loss_tokens: col.loss_tokens,
        tokens: col.tokens,
        seed: c.seed,
        image_splitting: c.tiling,
    }
}
