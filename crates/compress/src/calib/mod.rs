//! Calibration: samples and the statistics the recipes need.

pub mod cache;
pub mod data;
pub mod stats;

pub use data::{CalibOptions, CalibSource, Sample, Samples, prepare};
pub use stats::{Collected, collect, gradient_scores};
