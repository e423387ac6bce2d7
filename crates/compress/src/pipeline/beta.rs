//! The β search: each candidate β (how the singular values split between the factors, which
//! changes how they quantize) is written to its own folder and checked on the calibration
//! samples; the candidate with the lowest loss is kept.

use std::path::{Path, PathBuf};

use super::{LowRankOptions, Summary};
use crate::error::{CompressError, Result};
use crate::report::{self, ReportFiles};

/// The β values to try: `opts.beta` alone, or the search grid (which needs calibration samples
/// to measure and a quantized recipe to matter: β only changes how the factors quantize).
pub fn candidates(opts: &LowRankOptions, calibrated: bool) -> Result<Vec<f64>> {
    let Some(grid) = &opts.beta_search else { return Ok(vec![opts.beta]) };
    let bad = |what: &str| CompressError::BadOptions { recipe: "--beta-search".into(), what: what.into() };
    if opts.quant.is_none() {
        return Err(bad("a low-bit recipe (--bits): β does not change a float model"));
    }
    if !calibrated {
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

/// Where β candidate `k` is written before the search picks one.
pub fn candidate_dir(out_dir: &Path, k: usize) -> PathBuf {
    let name = out_dir.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
    out_dir.with_file_name(format!(".{name}.beta-{k}"))
}

/// Keep the candidate with the lowest calibration loss: its files move into `out_dir`, the
/// other candidates are removed, and the summary lists every candidate's loss.
pub fn pick(mut results: Vec<Summary>, out_dir: &Path) -> Result<Summary> {
    if results.len() == 1 {
        return Ok(results.remove(0));
    }
    let loss = |r: &Summary| r.calib_loss.map_or(f64::INFINITY, |l| l.1);
    let beta = |r: &Summary| r.compression().map_or(f64::NAN, |c| c.beta);
    let search: Vec<(f64, f64)> = results.iter().map(|r| (beta(r), loss(r))).collect();
    let best =
        (0..results.len()).min_by(|&a, &b| loss(&results[a]).total_cmp(&loss(&results[b]))).unwrap_or(0);
    let io =
        |path: &Path, e| pocketvlm_format::FormatError::Io { path: path.display().to_string(), source: e };
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    for (k, r) in results.iter().enumerate() {
        if k == best {
            for entry in std::fs::read_dir(&r.out_dir).map_err(|e| io(&r.out_dir, e))? {
                let from = entry.map_err(|e| io(&r.out_dir, e))?.path();
                let to = out_dir.join(from.file_name().unwrap_or_default());
                std::fs::rename(&from, &to).map_err(|e| io(&from, e))?;
            }
        }
        std::fs::remove_dir_all(&r.out_dir).map_err(|e| io(&r.out_dir, e))?;
    }
    let mut chosen = results.swap_remove(best);
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
    chosen.out_dir = out_dir.to_path_buf();
    chosen.beta_search = search;
    Ok(chosen)
}
