//! Symmetric weight quantization with an MSE clip search.
//!
//! Each output row `o` (or each group of 64 / 128 columns of it, INT4 only) gets one scale. For a
//! clip ratio `c ∈ (0, 1]` the scale is `s = f32(c · max_j |w_j| / qmax)` and the integers are
//! `q_j = clamp(roundTiesEven(w_j / s), −qmax, qmax)` (`qmax` = 127 or 7), so the error of every
//! element with `|w_j| ≤ qmax · s` is at most `s / 2`, and clipped elements err by
//! `|w_j| − qmax · s`. The search evaluates `c = 1 − k · (1 − c_min) / steps` for
//! `k = 0 … steps − 1` and keeps, per row or group, the `c` with the smallest
//! `Σ_j (w_j − s q_j)²` (the first, i.e. largest, on ties). `c = 1` is always a candidate, so the
//! search never does worse than plain round-to-nearest.

use pocketvlm_format::quant::linear::check_group;
use pocketvlm_format::quant::{Bits, QuantWeights};

use crate::error::Result;

/// The clip-ratio grid of the MSE search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipSearch {
    /// Number of candidates (1 = no search, plain absmax scaling).
    pub steps: usize,
    /// Smallest candidate ratio.
    pub min_ratio: f64,
}

impl Default for ClipSearch {
    fn default() -> Self {
        Self { steps: 20, min_ratio: 0.5 }
    }
}

impl ClipSearch {
    /// No search: `c = 1`.
    pub const NONE: ClipSearch = ClipSearch { steps: 1, min_ratio: 1.0 };

    fn ratios(&self) -> impl Iterator<Item = f64> + '_ {
        let steps = self.steps.max(1);
        (0..steps).map(move |k| 1.0 - k as f64 * (1.0 - self.min_ratio) / steps as f64)
    }
}

/// The scale of ratio `c` and the squared error it gives `w`, writing the integers to `q`.
fn quantize_span(w: &[f32], max: f64, c: f64, qmax: f64, q: &mut [i8]) -> (f32, f64) {
    let s = (c * max / qmax) as f32;
    if s.is_nan() || s <= 0.0 {
        q.fill(0);
        return (0.0, w.iter().map(|&v| (v as f64).powi(2)).sum());
    }
    (s, round_span(w, s as f64, qmax, q))
}

/// Lanes of the error sum: eight independent partial sums (added in a fixed order at the end)
/// let the loop vectorize; the result is deterministic, only not the left-to-right sum.
const LANES: usize = 8;

/// `q_j = clamp(roundTiesEven(w_j / s), −qmax, qmax)` and `Σ_j (w_j − s q_j)²`.
#[inline(always)]
fn round_span_plain(w: &[f32], s: f64, qmax: f64, q: &mut [i8]) -> f64 {
    let mut lanes = [0f64; LANES];
    let one = |o: &mut i8, v: f32, lane: &mut f64| {
        let k = (v as f64 / s).round_ties_even().clamp(-qmax, qmax);
        *o = k as i8;
        *lane += (v as f64 - s * k).powi(2);
    };
    let n = w.len() / LANES * LANES;
    for (qc, wc) in q[..n].chunks_exact_mut(LANES).zip(w[..n].chunks_exact(LANES)) {
        for ((o, &v), lane) in qc.iter_mut().zip(wc).zip(lanes.iter_mut()) {
            one(o, v, lane);
        }
    }
    for (o, &v) in q[n..].iter_mut().zip(&w[n..]) {
        one(o, v, &mut lanes[0]);
    }
    lanes.iter().sum()
}

/// [`round_span_plain`] compiled with AVX2 (vector division and rounding; the baseline x86_64
/// target calls `rint` per element).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn round_span_avx2(w: &[f32], s: f64, qmax: f64, q: &mut [i8]) -> f64 {
    round_span_plain(w, s, qmax, q)
}

#[allow(unsafe_code)] // calling the AVX2 variant once the CPU is known to have it
fn round_span(w: &[f32], s: f64, qmax: f64, q: &mut [i8]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { round_span_avx2(w, s, qmax, q) };
    }
    round_span_plain(w, s, qmax, q)
}

/// The best clip ratio of one row or group: its integers go to `q`, its scale is returned.
fn search_span(span: &[f32], search: ClipSearch, qmax: f64, q: &mut [i8], trial: &mut [i8]) -> f32 {
    let max = span.iter().fold(0f64, |m, v| m.max((*v as f64).abs()));
    let mut best = (f64::INFINITY, 0f32);
    for c in search.ratios() {
        let (s, err) = quantize_span(span, max, c, qmax, trial);
        if err < best.0 {
            best = (err, s);
            q.copy_from_slice(trial);
        }
    }
    best.1
}

/// Quantize a row-major `[out, cols]` weight to `bits`, one scale per row or per `group`.
pub fn quantize_weights(
    w: &[f32],
    out: usize,
    cols: usize,
    bits: Bits,
    group: Option<usize>,
    search: ClipSearch,
) -> Result<QuantWeights> {
    let g = check_group(bits, group, cols)?;
    bits.check_row(cols).map_err(pocketvlm_format::FormatError::from)?;
    let qmax = bits.qmax() as f64;
    let g = g.max(1);
    let spans = out * (cols / g);
    let mut values = vec![0i8; out * cols];
    let mut scales = vec![0f32; spans];
    // Rows are independent: split them over the CPU's threads (the result does not depend on
    // the split).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(spans.max(1));
    let per = spans.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for ((w, q), sc) in
            w[..spans * g].chunks(per * g).zip(values.chunks_mut(per * g)).zip(scales.chunks_mut(per))
        {
            scope.spawn(move || {
                let mut trial = vec![0i8; g];
                for ((span, q), s) in w.chunks(g).zip(q.chunks_mut(g)).zip(sc.iter_mut()) {
                    *s = search_span(span, search, qmax, q, &mut trial);
                }
            });
        }
    });
    Ok(QuantWeights::new(bits, out, cols, group, values, scales)?)
}
