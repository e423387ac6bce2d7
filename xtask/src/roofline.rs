//! The memory roofline of a decode step on this machine, for `cargo xtask bench`.
//!
//! A decode step reads each weight it multiplies at least once (`Model::step_weight_bytes`:
//! the text decoder's layers and head, one row of the embedding table), so no adapter that keeps
//! the weights in this machine's memory decodes faster than `R / B` tokens per second, `B` those
//! bytes and `R` the rate the memory delivers them. `R` is measured in the same run as the
//! decode it judges (this machine's rate drifts between sittings): the best of
//! [`COPY_REPEATS`] single-threaded copies of [`COPY_BYTES`], far larger than the CPU's caches,
//! as bytes copied per second (each byte read once and written once). A decode rate `r` is then
//! `r · B / R` of the roofline.

use std::time::Instant;

/// Bytes of each timed copy.
pub const COPY_BYTES: usize = 256 << 20;

/// Copies timed; the fastest counts.
pub const COPY_REPEATS: usize = 8;

/// This machine's memory copy rate, the roofline's denominator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Roofline {
    /// Bytes copied per second by one thread (best of the timed copies).
    pub copy_bytes_per_s: f64,
}

impl Roofline {
    /// Time the copies: both buffers written first, so every page is committed before the clock
    /// starts.
    pub fn measure() -> Self {
        let source = vec![1u8; COPY_BYTES];
        let mut target = vec![2u8; COPY_BYTES];
        let mut best = f64::INFINITY;
        for _ in 0..COPY_REPEATS {
            let start = Instant::now();
            target.copy_from_slice(std::hint::black_box(&source));
            std::hint::black_box(&mut target);
            best = best.min(start.elapsed().as_secs_f64());
        }
        Self { copy_bytes_per_s: COPY_BYTES as f64 / best }
    }

    /// The most tokens per second a step reading `bytes` reaches at the copy rate (`R / B`).
    pub fn tokens_per_s(&self, bytes: u64) -> f64 {
        if bytes == 0 { f64::INFINITY } else { self.copy_bytes_per_s / bytes as f64 }
    }

    /// A decode rate of `rate` tokens per second, with steps reading `bytes`, as a fraction of
    /// the roofline (`r · B / R`).
    pub fn share(&self, rate: f64, bytes: u64) -> f64 {
        rate * bytes as f64 / self.copy_bytes_per_s
    }
}

#[cfg(test)]
mod tests {
    use super::Roofline;

    #[test]
    fn the_share_is_the_rate_over_the_roofline() {
        // the figures: 139.2 MB a step at 10 GB/s
        let r = Roofline { copy_bytes_per_s: 10e9 };
        let bytes = 139_200_000;
        assert!((r.tokens_per_s(bytes) - 71.839).abs() < 1e-3, "{}", r.tokens_per_s(bytes));
        assert!((r.share(21.55, bytes) - 0.29998).abs() < 1e-4, "{}", r.share(21.55, bytes));
        assert!((r.share(r.tokens_per_s(bytes), bytes) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_copy_rate_is_measured() {
        let r = Roofline::measure();
        // any machine that runs the tests copies between 100 MB/s and 10 TB/s
        assert!(r.copy_bytes_per_s > 1e8 && r.copy_bytes_per_s < 1e13, "{r:?}");
    }
}
