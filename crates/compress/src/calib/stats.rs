//! Calibration passes over the samples.
//!
//! * [`collect`] (pass 1): forward (and, for gradient statistics, backward) per sample,
//!   accumulating per target `Σ x xᵀ`, `Σ |x|` over input rows and `Σ g gᵀ` over output-gradient
//!   rows, then dividing by the row count. Only these running sums are kept, so memory does not
//!   grow with the number of samples.
//! * [`gradient_scores`] (qsvd pass 2): with each target's SVD known, project every sample's
//!   weight gradient `∂L_n/∂W = Σ_t g_t x_tᵀ` on the components (`a_iᵀ ∂L_n/∂W b_i =
//!   Σ_t (g_t·a_i)(x_t·b_i)`) and accumulate the squares, giving the RMS over samples.
//!
//! The loss of a sample is the mean cross-entropy of its answer tokens.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use faer::Mat;

use crate::calib::data::Sample;
use crate::error::{CompressError, Result};
use crate::lowrank::GroupStats;
use crate::lowrank::linalg::{from_rows_f64, to_rows_f32};
use crate::model::{CpuModel, Prompt, Tape, Target, Tower};
use crate::progress::Stage;

/// Running sums of one target.
struct Sums {
    d_in: usize,
    d_out: usize,
    rows: usize,
    xx: Vec<f64>,
    abs: Vec<f64>,
    gg: Option<Vec<f64>>,
}

fn add_into(acc: &mut [f64], t: &Tensor) -> Result<()> {
    for (a, v) in acc.iter_mut().zip(t.flatten_all()?.to_vec1::<f32>()?) {
        *a += v as f64;
    }
    Ok(())
}

/// What pass 1 produced.
pub struct Collected {
    pub stats: BTreeMap<Target, GroupStats>,
    /// Mean answer loss of the uncompressed model.
    pub mean_loss: f64,
    /// Decoder tokens over all samples.
    pub tokens: usize,
    /// Answer tokens over all samples.
    pub loss_tokens: usize,
}

/// Forward one sample with `tape`, returning the loss.
fn sample_loss(model: &CpuModel, s: &Sample, tape: &mut Tape) -> Result<Tensor> {
    let embeds = if tape.wants_tower(Tower::Vision) && s.pixels.is_some() {
        let prompt = Prompt { ids: s.ids.clone(), pixels: s.pixels.clone() };
        model.embed_prompt(&prompt, Some(&mut *tape))?
    } else {
        model.merge_embeddings(&s.ids, s.features.as_ref())?
    };
    model.answer_loss(&embeds, &s.ids, s.answer_start, Some(tape))
}

/// Pass 1 over `samples` for `targets`; with `grads`, also `E[g gᵀ]`.
pub fn collect(
    model: &CpuModel,
    samples: &[Sample],
    targets: &[Target],
    grads: bool,
    stage: &Stage,
) -> Result<Collected> {
    let mut sums: BTreeMap<Target, Sums> = BTreeMap::new();
    let (mut loss_sum, mut tokens, mut loss_tokens) = (0.0, 0, 0);
    stage.set_total(samples.len() as u64);
    for s in samples {
        let mut tape = Tape::new(targets.iter().copied(), grads);
        let loss = sample_loss(model, s, &mut tape)?;
        loss_sum += loss.to_scalar::<f32>()? as f64;
        tokens += s.ids.len();
        loss_tokens += s.ids.len() - s.answer_start;
        let store = if grads { Some(loss.backward()?) } else { None };
        for e in &tape.entries {
            let (rows, d_in) = e.x.dims2()?;
            let g = match (&store, &e.probe) {
                (Some(store), Some(p)) => Some(
                    store
                        .get(p.as_tensor())
                        .ok_or_else(|| {
                            CompressError::Calibration(format!("no gradient reached {:?}", e.target))
                        })?
                        .clone(),
                ),
                _ => None,
            };
            let d_out = g.as_ref().map_or(Ok(0), |g| g.dim(1))?;
            let acc = sums.entry(e.target).or_insert_with(|| Sums {
                d_in,
                d_out,
                rows: 0,
                xx: vec![0.0; d_in * d_in],
                abs: vec![0.0; d_in],
                gg: g.as_ref().map(|_| vec![0.0; d_out * d_out]),
            });
            acc.rows += rows;
            add_into(&mut acc.xx, &e.x.t()?.matmul(&e.x)?)?;
            add_into(&mut acc.abs, &e.x.abs()?.sum(0)?)?;
            if let (Some(g), Some(gg)) = (&g, acc.gg.as_mut()) {
                add_into(gg, &g.t()?.matmul(g)?)?;
            }
        }
        stage.step();
    }
    let stats = sums
        .into_iter()
        .map(|(t, s)| {
            let n = s.rows.max(1) as f64;
            let mean = |v: Vec<f64>| v.into_iter().map(|x| x / n).collect::<Vec<_>>();
            let a = from_rows_f64(s.d_in, s.d_in, &mean(s.xx));
            let g = s.gg.map(|gg| from_rows_f64(s.d_out, s.d_out, &mean(gg)));
            (t, GroupStats { a, abs_mean: mean(s.abs), g })
        })
        .collect();
    Ok(Collected { stats, mean_loss: loss_sum / samples.len().max(1) as f64, tokens, loss_tokens })
}

fn to_tensor(m: &Mat<f64>) -> Result<Tensor> {
    Ok(Tensor::from_vec(to_rows_f32(m), (m.nrows(), m.ncols()), &Device::Cpu)?)
}

/// qsvd pass 2: `RMS_n(a_iᵀ ∂L_n/∂W b_i)` per target and component, for the bases
/// `(a [out, k], b [in, k])` of each target.
pub fn gradient_scores(
    model: &CpuModel,
    samples: &[Sample],
    bases: &BTreeMap<Target, (Mat<f64>, Mat<f64>)>,
    stage: &Stage,
) -> Result<BTreeMap<Target, Vec<f64>>> {
    let tensors = bases
        .iter()
        .map(|(t, (a, b))| Ok((*t, (to_tensor(a)?, to_tensor(b)?))))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let mut sq: BTreeMap<Target, Vec<f64>> =
        bases.iter().map(|(t, (a, _))| (*t, vec![0.0; a.ncols()])).collect();
    stage.set_total(samples.len() as u64);
    for s in samples {
        let mut tape = Tape::new(bases.keys().copied(), true);
        let loss = sample_loss(model, s, &mut tape)?;
        let store = loss.backward()?;
        for e in &tape.entries {
            let (Some(p), Some((a, b))) = (&e.probe, tensors.get(&e.target)) else { continue };
            let g = store
                .get(p.as_tensor())
                .ok_or_else(|| CompressError::Calibration(format!("no gradient reached {:?}", e.target)))?;
            let proj = (g.matmul(a)? * e.x.matmul(b)?)?.sum(0)?.to_vec1::<f32>()?;
            for (acc, v) in sq.get_mut(&e.target).expect("target has a basis").iter_mut().zip(proj) {
                *acc += (v as f64) * (v as f64);
            }
        }
        stage.step();
    }
    let n = samples.len().max(1) as f64;
    Ok(sq.into_iter().map(|(t, v)| (t, v.into_iter().map(|x| (x / n).sqrt()).collect())).collect())
}
