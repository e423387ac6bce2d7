//! The candidate search: each candidate — a set of rank budgets and a β — is allocated,
//! factored, quantized, written to its own folder and checked on the calibration samples; the
//! candidate with the lowest loss is kept.
//!
//! * **β** (how the singular values split between the factors) only changes how the factors
//!   quantize, so its grid needs a quantized recipe.
//! * **Rank budgets** (`--qkv-params`, `--ffn-params`, `--vision-qkv-params` given several
//!   values) are searched under one byte budget for the whole model (`--model-bytes`): every
//!   candidate's widths are then chosen by the K-FAC knapsack ([`crate::quant::widths`]) to fit
//!   the same bytes, so the search decides how those bytes split between rank and width — fewer
//!   components buy wider weights elsewhere — by the loss it measures, not by an estimate that
//!   would have to put a truncation's and a rounding's loss on one scale. Within a candidate each
//!   layer's rank comes from the loss-aware allocation of its pool ([`crate::allocate`]) and each
//!   sublayer's width from the knapsack. A candidate whose smallest widths exceed the byte budget
//!   is recorded as not fitting; the search fails only when none fits.
//!
//! Candidates are every rank budget with every β.

use std::path::{Path, PathBuf};

use super::{LowRankOptions, Summary};
use crate::budget::Budgets;
use crate::error::{CompressError, Result};
use crate::report::{self, ReportFiles};

/// One candidate of the search and the calibration loss its model measured (`None`: its
/// smallest widths did not fit `--model-bytes`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Searched {
    pub budgets: Budgets,
    pub beta: f64,
    pub loss: Option<f64>,
}

/// The rank budgets to try: `opts.budgets` alone, or the search's candidates — which need a byte
/// budget for the whole model to compare at (`--model-bytes`), calibration samples to measure,
/// and the same budgets set in each (so every candidate factors the same targets).
pub fn budget_candidates(opts: &LowRankOptions) -> Result<Vec<Budgets>> {
    let Some(list) = &opts.rank_search else { return Ok(vec![opts.budgets]) };
    let bad = |what: &str| CompressError::BadOptions { recipe: "a rank search".into(), what: what.into() };
    if list.is_empty() {
        return Err(bad("at least one candidate"));
    }
    if opts.quant.as_ref().and_then(|q| q.model_bytes).is_none() {
        return Err(bad("a byte budget for the whole model (--model-bytes) to compare the candidates at"));
    }
    if opts.calib.is_none() {
        return Err(bad("calibration data to measure each candidate"));
    }
    let set = |b: &Budgets| {
        [b.qkv_params.is_some(), b.kv_cache.is_some(), b.ffn_params.is_some(), b.vision_qkv_params.is_some()]
    };
    if list.iter().any(|b| set(b) != set(&list[0]) || b.kv_cache != list[0].kv_cache) {
        return Err(bad("the same budgets set in every candidate, and one --kv-cache"));
    }
    Ok(list.clone())
}

/// The β values to try: `opts.beta` alone, or the search grid (which needs calibration samples
/// to measure and a quantized recipe to matter: β only changes how the factors quantize).
pub fn beta_candidates(opts: &LowRankOptions) -> Result<Vec<f64>> {
    let Some(grid) = &opts.beta_search else { return Ok(vec![opts.beta]) };
    let bad = |what: &str| CompressError::BadOptions { recipe: "--beta-search".into(), what: what.into() };
    if opts.quant.is_none() {
        return Err(bad("a low-bit recipe (--bits): β does not change a float model"));
    }
    if opts.calib.is_none() {
        return Err(bad("calibration data to measure each candidate"));
    }
    if grid.is_empty() {
        return Err(bad("at least one β"));
    }
    if let Some(&value) = grid.iter().find(|b| !(0.0..=1.0).contains(*b)) {
        return Err(CompressError::BudgetOutOfRange { name: "beta", value, range: "0 <= beta <= 1" });
    }
    Ok(grid.clone())
}

/// Every candidate: each rank budget with each β.
pub fn candidates(opts: &LowRankOptions) -> Result<Vec<(Budgets, f64)>> {
    let betas = beta_candidates(opts)?;
    Ok(budget_candidates(opts)?.into_iter().flat_map(|b| betas.iter().map(move |&beta| (b, beta))).collect())
}

/// Where candidate `k` is written before the search picks one.
pub fn candidate_dir(out_dir: &Path, k: usize) -> PathBuf {
    let name = out_dir.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
    out_dir.with_file_name(format!(".{name}.candidate-{k}"))
}

/// Whether a candidate's failure only says it does not fit the byte budget (the search goes on).
pub fn does_not_fit(e: &CompressError) -> bool {
    matches!(e, CompressError::BudgetTooSmall { .. })
}

/// Keep the candidate with the lowest calibration loss among those written (`results`, each
/// with its place in `searched`): its files move into `out_dir`, the other candidates are removed, and
/// the summary lists every candidate. `misfit` is the error of a candidate that did not fit, for
/// when none did.
pub fn pick(
    mut results: Vec<(usize, Summary)>,
    searched: Vec<Searched>,
    misfit: Option<CompressError>,
    out_dir: &Path,
) -> Result<Summary> {
    if searched.len() == 1 && results.len() == 1 {
        return Ok(results.remove(0).1);
    }
    let loss = |r: &Summary| r.calib_loss.map_or(f64::INFINITY, |l| l.1);
    let Some(best) = (0..results.len()).min_by(|&a, &b| loss(&results[a].1).total_cmp(&loss(&results[b].1)))
    else {
        return Err(
            misfit.unwrap_or_else(|| CompressError::Calibration("a search without candidates".into()))
        );
    };
    let io =
        |path: &Path, e| pocketvlm_format::FormatError::Io { path: path.display().to_string(), source: e };
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    for (k, (_, r)) in results.iter().enumerate() {
        if k == best {
            for entry in std::fs::read_dir(&r.out_dir).map_err(|e| io(&r.out_dir, e))? {
                let from = entry.map_err(|e| io(&r.out_dir, e))?.path();
                let to = out_dir.join(from.file_name().unwrap_or_default());
                std::fs::rename(&from, &to).map_err(|e| io(&from, e))?;
            }
        }
        std::fs::remove_dir_all(&r.out_dir).map_err(|e| io(&r.out_dir, e))?;
    }
    let (kept, mut chosen) = results.swap_remove(best);
    let moved = |path: &Path| out_dir.join(path.file_name().unwrap_or_default());
    let moved_files = |r: ReportFiles| ReportFiles { text: moved(&r.text), svg: moved(&r.svg) };
    chosen.report = chosen.report.map(moved_files);
    chosen.widths = chosen.widths.map(moved_files);
    if chosen.widths.is_none() {
        // the candidate's files replaced the model's; an earlier run's width report would not
        report::widths::remove(out_dir)?;
    }
    // nor would an earlier run's shards past the candidate's last
    crate::writer::remove_stale_shards(out_dir, chosen.manifest.shards.len())?;
    if let Some(report) = &chosen.report {
        report::append_search(&report.text, &searched, kept)?;
    }
    chosen.out_dir = out_dir.to_path_buf();
    chosen.search = searched;
    Ok(chosen)
}
