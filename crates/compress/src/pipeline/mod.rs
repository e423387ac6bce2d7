//! The compressor, run as its stages. [`compress`] opens the checkpoint ([`Source`]) and runs a
//! [`Plan`]: dense ([`dense`]: quantize → write), or low-rank: pool the targets under their
//! budgets ([`pools`]); calibrate ([`calibrate`]: samples and statistics); decompose and score
//! every target ([`decompose`]); then, for each candidate (rank budgets and β), choose the
//! components each target keeps ([`ranks`]), write the model ([`emit`]: factors → quantization →
//! files) and check it on the calibration samples ([`check`]), keeping the best candidate
//! ([`search`]).

mod calibrate;
mod check;
mod decompose;
mod dense;
mod emit;
mod pools;
mod ranks;
mod search;
mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pocketvlm_format::compression::Latent;
use pocketvlm_format::{Compression, Encoding, Manifest};

pub use self::dense::DenseOptions;
pub use self::search::Searched;
pub use self::targets::{dense_target_weight, out_splits, split_rows, target_factors};
use crate::budget::Budgets;
use crate::calib::CalibOptions;
use crate::checkpoint::Source;
use crate::error::{CompressError, Result};
use crate::lowrank::Method;
use crate::lowrank::decompose::TransformOptions;
use crate::model::CpuModel;
use crate::progress::Progress;
use crate::quant::QuantOptions;
use crate::report::{self, ReportFiles};
use crate::writer::Written;

/// The latent `--latent` names: `qkv` or `kv` (typed error otherwise).
pub fn latent_named(s: &str) -> Result<Latent> {
    [Latent::Qkv, Latent::Kv].into_iter().find(|l| l.name() == s).ok_or_else(|| CompressError::BadOptions {
        recipe: format!("--latent {s}"),
        what: "qkv or kv".into(),
    })
}

/// Everything a low-rank compression run needs.
#[derive(Clone, Debug)]
pub struct LowRankOptions {
    pub method: Method,
    pub budgets: Budgets,
    /// What the text decoder's latent (under the QKV-parameter and K/V budgets) is shared by.
    pub latent: Latent,
    /// Share of Σ given to the down factor (`down = Σ^β Vᵀ…`, `up = U Σ^(1−β)`).
    pub beta: f64,
    /// Search β over these values instead (quantized recipes only): each candidate is factored,
    /// quantized, written and measured on the calibration samples; the lowest loss wins.
    pub beta_search: Option<Vec<f64>>,
    /// Search the rank budgets over these candidates instead of `budgets` (with a byte budget for
    /// the whole model, [`QuantOptions::model_bytes`]): each is written at the same bytes and
    /// measured on the calibration samples; the lowest loss wins (see [`search`]).
    pub rank_search: Option<Vec<Budgets>>,
    pub transform: TransformOptions,
    /// Calibration data; required by every recipe but `svd`.
    pub calib: Option<CalibOptions>,
    /// A file keeping prepared calibration samples between runs (see [`calib::cache`]).
    pub calib_cache: Option<PathBuf>,
    /// Encoding of the factors (default: the checkpoint's encoding of the weights they replace).
    pub factor_encoding: Option<Encoding>,
    pub max_shard_bytes: u64,
    /// Rotate and quantize the text decoder after the factorisation (see
    /// [`crate::quant::model`]); the `check` stage then measures the quantized model.
    pub quant: Option<QuantOptions>,
    /// Where the run reports its stages, their times and each β's loss.
    pub progress: Progress,
}

impl LowRankOptions {
    pub fn new(method: Method, budgets: Budgets, calib: Option<CalibOptions>) -> Self {
        Self {
            method,
            budgets,
            latent: Latent::Qkv,
            beta: 0.5,
            beta_search: None,
            rank_search: None,
            transform: TransformOptions::default(),
            calib,
            calib_cache: None,
            factor_encoding: None,
            max_shard_bytes: pocketvlm_format::DEFAULT_SHARD_BYTES,
            quant: None,
            progress: Progress::silent(),
        }
    }
}

/// What a compression run makes of a checkpoint.
#[derive(Clone, Debug)]
pub enum Plan {
    /// Every weight at full rank: copied bit for bit in its source encoding, or rotated and
    /// quantized.
    Dense(DenseOptions),
    /// Q/K/V (and, with their budgets, the FFN and the vision tower's attention) factored under
    /// budgets, then optionally quantized.
    LowRank(LowRankOptions),
}

impl Plan {
    /// The low-rank method a recipe name (`--recipe`) asks for: `None` for `dense`.
    pub fn method_of(recipe: &str) -> Result<Option<Method>> {
        match (recipe, Method::parse(recipe)) {
            ("dense", _) => Ok(None),
            (_, Some(m)) => Ok(Some(m)),
            (other, None) => Err(CompressError::UnknownRecipe(other.to_string())),
        }
    }

    /// The low-bit recipe, `None` for a float model.
    pub fn quant(&self) -> Option<&QuantOptions> {
        match self {
            Plan::Dense(o) => o.quant.as_ref(),
            Plan::LowRank(o) => o.quant.as_ref(),
        }
    }

    fn progress(&self) -> &Progress {
        match self {
            Plan::Dense(o) => &o.progress,
            Plan::LowRank(o) => &o.progress,
        }
    }
}

/// What a run wrote.
#[derive(Debug)]
pub struct Summary {
    pub out_dir: PathBuf,
    pub manifest: Manifest,
    /// Wall time per stage.
    pub stages: Vec<(&'static str, f64)>,
    /// Mean answer loss of the source and the written model on the calibration samples (a
    /// low-rank plan with calibration data).
    pub calib_loss: Option<(f64, f64)>,
    /// The compression report and its plot (a low-rank plan).
    pub report: Option<ReportFiles>,
    /// The width allocation's report and plot (a plan whose widths `--model-bytes` chose).
    pub widths: Option<ReportFiles>,
    /// Every candidate and its calibration loss when β or the rank budgets were searched (see
    /// [`LowRankOptions::beta_search`], [`LowRankOptions::rank_search`]).
    pub search: Vec<Searched>,
}

impl Summary {
    /// A model written to `out_dir` with nothing measured beyond the stage times.
    pub(crate) fn written(out_dir: &Path, written: Written, clock: Clock) -> Self {
        Self {
            out_dir: out_dir.to_path_buf(),
            manifest: written.manifest,
            stages: clock.stages,
            calib_loss: None,
            report: None,
            widths: written.widths,
            search: Vec::new(),
        }
    }

    /// The compression section (a low-rank model's ranks, ratios and K/V cache).
    pub fn compression(&self) -> Option<&Compression> {
        self.manifest.compression.as_ref()
    }

    /// Bytes per component, as stored.
    pub fn component_bytes(&self) -> BTreeMap<String, u64> {
        self.manifest.component_sizes().into_iter().map(|(c, s)| (c.name().to_string(), s.bytes)).collect()
    }
}

/// The wall time of each part of a run, each reported to its progress as it ends.
pub(crate) struct Clock {
    started: Instant,
    last: Instant,
    progress: Progress,
    stages: Vec<(&'static str, f64)>,
}

impl Clock {
    pub(crate) fn new(progress: &Progress) -> Self {
        let now = Instant::now();
        Self { started: now, last: now, progress: progress.clone(), stages: Vec::new() }
    }

    /// Part `name` ended now.
    fn lap(&mut self, name: &'static str) {
        let secs = self.last.elapsed().as_secs_f64();
        self.progress.lap(name, secs);
        self.stages.push((name, secs));
        self.last = Instant::now();
    }
}

/// The options that no stage can check better than before starting.
fn check_low_rank_options(opts: &LowRankOptions) -> Result<()> {
    let candidates = search::candidates(opts)?;
    for (budgets, _) in &candidates {
        budgets.validate()?;
    }
    if !(0.0..=1.0).contains(&opts.beta) {
        return Err(CompressError::BudgetOutOfRange {
            name: "beta",
            value: opts.beta,
            range: "0 <= beta <= 1",
        });
    }
    if opts.method != Method::Svd && opts.calib.is_none() {
        return Err(CompressError::BadOptions {
            recipe: opts.method.name().into(),
            what: "calibration data (--calib <images folder> or --calib-text <file>)".into(),
        });
    }
    if opts.latent == Latent::Kv && !candidates[0].0.text_latent() {
        return Err(CompressError::BadOptions {
            recipe: "--latent kv".into(),
            what: "a text-decoder latent budget (--kv-cache or --qkv-params)".into(),
        });
    }
    Ok(())
}

/// Compress the checkpoint in `hf_dir` into the model directory `out_dir` (created if needed)
/// as `plan` says.
pub fn compress(hf_dir: &Path, out_dir: &Path, plan: &Plan) -> Result<Summary> {
    let mut clock = Clock::new(plan.progress());
    match plan {
        Plan::Dense(o) => dense::check_options(o)?,
        Plan::LowRank(o) => check_low_rank_options(o)?,
    }
    let source = Source::open(hf_dir)?;
    clock.lap("load");
    match plan {
        Plan::Dense(o) => dense::dense(&source, out_dir, o, clock),
        Plan::LowRank(o) => low_rank(&source, out_dir, o, clock),
    }
}

/// The low-rank plan's stages on `source`.
fn low_rank(source: &Source, out_dir: &Path, opts: &LowRankOptions, mut clock: Clock) -> Result<Summary> {
    let cfg = &source.meta.model;
    let tensors = source.tensors();
    let model = CpuModel::build(cfg.clone(), &tensors, None)?;
    clock.lap("model");

    let candidates = search::candidates(opts)?;
    // every candidate sets the same budgets, so they factor the same targets
    let candidate = |budgets: Budgets| LowRankOptions { budgets, ..opts.clone() };
    let targets = pools::targets(&pools::pools(cfg, &candidate(candidates[0].0)));
    let calibration = calibrate::calibrate(source, &model, opts, &targets, &mut clock)?;
    let decs = decompose::decompose(cfg, &tensors, opts, &targets, calibration.as_ref(), &mut clock)?;
    let scores = decompose::scores(&model, opts, &decs, calibration.as_ref(), &mut clock)?;

    let (mut results, mut searched, mut misfit) = (Vec::new(), Vec::new(), None);
    for (k, &(budgets, beta)) in candidates.iter().enumerate() {
        let opts = &candidate(budgets);
        let dir =
            if candidates.len() == 1 { out_dir.to_path_buf() } else { search::candidate_dir(out_dir, k) };
        let written = ranks::choose(&pools::pools(cfg, opts), &scores, opts.method).and_then(|choices| {
            let mut meta = source.meta.clone();
            emit::emit(
                &mut meta,
                &tensors,
                &decs,
                &choices,
                opts,
                beta,
                calibration.as_ref(),
                &dir,
                &mut clock,
            )
        });
        let (Written { manifest, widths }, compression) = match written {
            Err(e) if candidates.len() > 1 && search::does_not_fit(&e) => {
                opts.progress.note(&format!("candidate {k} ({budgets}, beta {beta}): {e}"));
                searched.push(Searched { budgets, beta, loss: None });
                misfit = Some(e);
                continue;
            }
            written => written?,
        };
        let calib_loss = match &calibration {
            Some(c) => Some(check::calibration_loss(&dir, &manifest, c, opts, &mut clock)?),
            None => None,
        };
        let total = clock.started.elapsed().as_secs_f64();
        let report = report::write(&dir, cfg, &compression, &clock.stages, total, calib_loss)?;
        if candidates.len() > 1 {
            let loss = calib_loss.map(|l| l.1);
            opts.progress.note(&format!("candidate {k} ({budgets}, beta {beta}): calibration loss {loss:?}"));
        }
        results.push((
            searched.len(),
            Summary {
                out_dir: dir,
                manifest,
                stages: clock.stages.clone(),
                calib_loss,
                report: Some(report),
                widths,
                search: Vec::new(),
            },
        ));
        searched.push(Searched { budgets, beta, loss: calib_loss.map(|l| l.1) });
    }
    search::pick(results, searched, misfit, out_dir)
}
