//! Shared helpers: the tiny fixture and its transformers expectations.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pocketvlm_compress::model::Prompt;
use serde_json::Value;

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

pub fn expected(case: &str) -> Value {
    expected_in(&fixture(), case)
}

/// The fixture `name` of `tests/fixtures` (`tiny`, `tiny-2b`, `tiny-500m`).
pub fn fixture_named(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// Case `case` of the fixture at `dir`.
pub fn expected_in(dir: &Path, case: &str) -> Value {
    let path = dir.join("expected").join(format!("{case}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The case's model input: prompt ids and (for image cases) the pixel values rebuilt from the
/// stored uint8 tiles with transformers' arithmetic: `((f32)(u8 · (1/255)) − 0.5) / 0.5`.
pub fn prompt(case: &Value) -> Prompt {
    prompt_in(&fixture(), case)
}

/// [`prompt`] for a case of the fixture at `dir`.
pub fn prompt_in(dir: &Path, case: &Value) -> Prompt {
    let ids: Vec<u32> =
        case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let pixels = case["tiles_u8"].as_object().map(|t| {
        let shape: Vec<usize> =
            t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let (n, h, w) = (shape[0], shape[1], shape[2]);
        let bytes = std::fs::read(dir.join("expected").join(t["file"].as_str().unwrap())).unwrap();
        let mut out = vec![0f32; n * 3 * h * w];
        for tile in 0..n {
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let u = bytes[((tile * h + y) * w + x) * 3 + c];
                        let v = ((u as f64 * (1.0 / 255.0)) as f32 - 0.5) / 0.5;
                        out[((tile * 3 + c) * h + y) * w + x] = v;
                    }
                }
            }
        }
        Tensor::from_vec(out, (n, 3, h, w), &Device::Cpu).unwrap()
    });
    Prompt { ids, pixels }
}

/// `[id, value]` pairs of the reference top logits.
pub fn top_logits(case: &Value) -> Vec<(u32, f32)> {
    case["top_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
        .collect()
}

/// The last row of a `[len, vocab]` logits tensor.
pub fn last_row(logits: &Tensor) -> Vec<f32> {
    let len = logits.dim(0).unwrap();
    logits.narrow(0, len - 1, 1).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

pub const CASES: [&str; 5] =
    ["text_chat", "text_multiturn", "chelsea_split", "rocket_split", "coffee_nosplit"];
