//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use pocketvlm_format::config::ProcessorConfig;
use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `crates/processor/tests/data`.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The repository's `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// SmolVLM-style processor settings (mean = std = 0.5, rescale 1/255, Lanczos).
pub fn smolvlm_processor_config(longest_edge: usize, max_image_size: usize, split: bool) -> ProcessorConfig {
    ProcessorConfig {
        do_convert_rgb: true,
        do_resize: true,
        longest_edge,
        max_image_size,
        do_image_splitting: split,
        resample: "lanczos".into(),
        do_rescale: true,
        rescale_factor: 1.0 / 255.0,
        do_normalize: true,
        image_mean: [0.5; 3],
        image_std: [0.5; 3],
        do_pad: true,
        image_seq_len: 0,
    }
}

/// The 32-bit integer hash of `reference.py::mix`.
fn mix(x: u64) -> u64 {
    let m = 0xFFFF_FFFFu64;
    let mut x = x & m;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D) & m;
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B) & m;
    x ^= x >> 16;
    x
}

/// The synthetic `[h, w, 3]` test picture of `reference.py::pattern`.
pub fn pattern(w: usize, h: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h as u64 {
        for x in 0..w as u64 {
            for c in 0..3u64 {
                let grad = (x * 255 / (w as u64 - 1).max(1) + y * 255 / (h as u64 - 1).max(1) * (c + 1)) / 2;
                let edge = if (x / 5 + y / 7 + seed) % 2 == 1 { 120 } else { 0 };
                let key = x.wrapping_mul(73_856_093)
                    ^ y.wrapping_mul(19_349_663)
                    ^ c.wrapping_mul(83_492_791)
                    ^ seed.wrapping_mul(2_654_435_761);
                let noise = if (x / 4 + y / 4 + c) % 3 == 0 { mix(key) & 0xFF } else { 0 };
                out.push(((grad + edge + noise) & 0xFF) as u8);
            }
        }
    }
    out
}
