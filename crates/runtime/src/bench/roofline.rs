//! The memory roofline of a decode step on the adapter that runs it, for the bench.
//!
//! A decode step reads each weight it multiplies at least once
//! ([`crate::model::Model::step_weight_bytes`]: the text decoder's layers and head, one row of
//! the embedding table), so no adapter decodes faster than `R / B` tokens per second, `B` those
//! bytes and `R` the rate its memory delivers them. `R` is measured on the same adapter in the
//! same run as the decode it judges (a GPU's own memory; a CPU adapter's host memory, whose rate
//! drifts between sittings here as much as the decode rates do): the best of [`COPY_REPEATS`]
//! copies of [`COPY_BYTES`] between two of the adapter's buffers, each submitted alone and waited
//! for, after one untimed copy (buffers are committed on first use), as bytes copied per second
//! (each byte read once and written once: a memcpy's rate). A decode rate `r` is then `r · B / R`
//! of the roofline.

use crate::device::Gpu;
use crate::engine::now_ms;
use crate::error::Result;

/// Bytes of each timed copy (less where the adapter's buffers are smaller).
pub const COPY_BYTES: u64 = 256 << 20;

/// Copies timed; the fastest counts.
pub const COPY_REPEATS: usize = 5;

/// The adapter's copy rate in bytes per second (see the module doc).
pub async fn copy_rate(gpu: &Gpu) -> Result<f64> {
    let size = COPY_BYTES.min(gpu.caps.max_buffer_size) / 4 * 4;
    let source = gpu.zeroed_buffer("copy rate source", size).await?;
    let target = gpu.zeroed_buffer("copy rate target", size).await?;
    let mut best = f64::INFINITY;
    for timed in std::iter::once(false).chain([true; COPY_REPEATS]) {
        let mut encoder = gpu.encoder();
        encoder.copy_buffer_to_buffer(&source, 0, &target, 0, size);
        let start = now_ms();
        gpu.wait(gpu.submit_tracked(encoder)).await?;
        if timed {
            best = best.min(now_ms() - start);
        }
    }
    Ok(size as f64 * 1e3 / best.max(1e-3))
}

/// The most tokens per second a step reading `bytes` reaches at `copy_rate` bytes per second.
pub fn roofline_tokens_per_s(copy_rate: f64, bytes: u64) -> f64 {
    if bytes == 0 { f64::INFINITY } else { copy_rate / bytes as f64 }
}

/// A decode rate of `rate` tokens per second, with steps reading `bytes`, as a fraction of the
/// roofline at `copy_rate` bytes per second (`r · B / R`).
pub fn roofline_share(rate: f64, bytes: u64, copy_rate: f64) -> f64 {
    if copy_rate > 0.0 { rate * bytes as f64 / copy_rate } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::{roofline_share, roofline_tokens_per_s};

    #[test]
    fn the_share_is_the_rate_over_the_roofline() {
        // the figures: 139.2 MB a step at 10 GB/s
        let (copy, bytes) = (10e9, 139_200_000);
        assert!((roofline_tokens_per_s(copy, bytes) - 71.839).abs() < 1e-3);
        assert!((roofline_share(21.55, bytes, copy) - 0.29998).abs() < 1e-4);
        assert!((roofline_share(roofline_tokens_per_s(copy, bytes), bytes, copy) - 1.0).abs() < 1e-12);
        assert_eq!(roofline_share(21.55, bytes, 0.0), 0.0);
    }
}
