//! Every target's decomposition and the score of each of its components: the singular value
//! (SVD, ASVD, SVD-LLM), its loss estimate `σ²/2` (LASER), or the singular value times the RMS
//! gradient along it over the calibration samples (QSVD).

use std::collections::BTreeMap;

use pocketvlm_format::ModelConfig;

use super::calibrate::Calibration;
use super::targets::dense_target_weight;
use super::{Clock, LowRankOptions};
use crate::calib;
use crate::checkpoint::RawTensor;
use crate::error::Result;
use crate::lowrank::{Decomposition, Method};
use crate::model::{CpuModel, Target};

/// The decomposition of each target (weighted by its statistics when calibrated).
pub fn decompose(
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, RawTensor<'_>>,
    opts: &LowRankOptions,
    targets: &[Target],
    calibration: Option<&Calibration>,
    clock: &mut Clock,
) -> Result<BTreeMap<Target, Decomposition>> {
    let stage = opts.progress.stage("decompositions");
    stage.set_total(targets.len() as u64);
    let mut decs: BTreeMap<Target, Decomposition> = BTreeMap::new();
    for &tg in targets {
        let w = dense_target_weight(cfg, tensors, tg)?;
        let stats = calibration.and_then(|c| c.collected.stats.get(&tg));
        decs.insert(tg, Decomposition::new(opts.method, &w, stats, &opts.transform)?);
        stage.step();
    }
    drop(stage);
    clock.lap("decompositions");
    Ok(decs)
}

/// The score of every component of every target (see the module documentation).
pub fn scores(
    model: &CpuModel,
    opts: &LowRankOptions,
    decs: &BTreeMap<Target, Decomposition>,
    calibration: Option<&Calibration>,
    clock: &mut Clock,
) -> Result<BTreeMap<Target, Vec<f64>>> {
    let method = opts.method;
    let mut scores: BTreeMap<Target, Vec<f64>> = BTreeMap::new();
    if method == Method::Qsvd {
        let bases = decs.iter().map(|(t, d)| (*t, d.score_bases())).collect();
        let stage = opts.progress.stage("gradient scores");
        let samples = &calibration.expect("qsvd has samples").samples.samples;
        let rms = calib::gradient_scores(model, samples, &bases, &stage)?;
        drop(stage);
        for (t, d) in decs {
            scores.insert(*t, d.svd.s.iter().zip(&rms[t]).map(|(s, r)| s * r).collect());
        }
        clock.lap("gradient scores");
    } else {
        for (t, d) in decs {
            let s = &d.svd.s;
            scores.insert(
                *t,
                if method == Method::Laser { s.iter().map(|x| 0.5 * x * x).collect() } else { s.clone() },
            );
        }
    }
    Ok(scores)
}
