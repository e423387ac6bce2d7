//! One timed greedy generation: the measurement behind `cargo xtask bench`, run natively by
//! xtask and in the browser by `tests/bench_web.rs`, so both sides measure the same way.
//!
//! * time to first token: preprocessing, vision tower, prefill and choosing the first token, on
//!   the first generation after loading (so it includes compiling the pipelines it uses);
//! * prefill rate: prompt tokens over the prefill time (the text decoder on the whole prompt);
//! * decode rate: tokens after the first over the time spent producing them;
//! * GPU memory: weights, tables, KV cache and activations ([`MemoryUsage`]).

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Request, now_ms};
use crate::error::Result;
use crate::model::MemoryUsage;

/// Prefix of the line the browser bench prints its [`BenchReport`] on.
pub const REPORT_PREFIX: &str = "POCKETVLM_BENCH ";

/// What the browser bench runs, served by xtask as `bench.json`. Locations are relative to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// The model directories, measured one after the other (the first is the baseline of the
    /// ratios xtask prints).
    pub models: Vec<String>,
    /// The image file (PNG or JPEG).
    pub image: String,
    pub prompt: String,
    /// Split the image into tiles (`None`: the checkpoint's default).
    pub split: Option<bool>,
    pub max_new_tokens: usize,
}

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The model measured (as the caller named it).
    pub model: String,
    /// The GPU adapter (name, backend, driver).
    pub adapter: String,
    /// The device's largest storage binding and buffer, in bytes.
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    /// Reading (or fetching) and verifying the model, opening the device, uploading the weights.
    pub load_ms: f64,
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub time_to_first_token_ms: f64,
    pub image_tiles: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub weight_bytes: u64,
    pub table_bytes: u64,
    pub kv_cache_bytes: u64,
    pub activation_bytes: u64,
    /// The generated ids (greedy), so two runs can be compared.
    pub generated_ids: Vec<u32>,
}

impl BenchReport {
    pub fn gpu_total_bytes(&self) -> u64 {
        self.weight_bytes + self.table_bytes + self.kv_cache_bytes + self.activation_bytes
    }
}

fn per_second(count: usize, ms: f64) -> f64 {
    if ms > 0.0 { count as f64 * 1e3 / ms } else { 0.0 }
}

/// Run `request` (greedy whatever its sampling options) to the end and time it; `load_ms` is the
/// caller's measurement of loading `engine`, `model` names it in the report.
pub async fn measure(
    engine: &Engine,
    mut request: Request,
    load_ms: f64,
    model: &str,
) -> Result<BenchReport> {
    request.sampling = Default::default();
    let image_tiles = match &request.image {
        Some(image) => {
            let split = request.split.unwrap_or(engine.preprocessor.default_split());
            engine.preprocessor.grid_for(image.width(), image.height(), split)?.n_tiles()
        }
        None => 0,
    };
    let start = now_ms();
    let mut session = engine.start(request).await?;
    session.next(engine).await?;
    let first = now_ms();
    while session.next(engine).await?.is_some() {}
    let end = now_ms();
    let generated = session.generated().len();
    let t = session.timings;
    let memory: MemoryUsage = session.memory(engine);
    let info = &engine.gpu.adapter;
    let name = if info.name.is_empty() { "(unnamed adapter)".to_string() } else { info.name.clone() };
    let mut adapter = vec![name, format!("{:?}", info.backend), format!("{:?}", info.device_type)];
    adapter.extend([info.driver.clone(), info.driver_info.clone()].into_iter().filter(|s| !s.is_empty()));
    Ok(BenchReport {
        model: model.to_string(),
        adapter: adapter.join(", "),
        max_storage_binding: engine.gpu.caps.max_storage_binding,
        max_buffer_size: engine.gpu.caps.max_buffer_size,
        load_ms,
        preprocess_ms: t.preprocess_ms,
        vision_ms: t.vision_ms,
        prefill_ms: t.prefill_ms,
        time_to_first_token_ms: first - start,
        image_tiles,
        prompt_tokens: session.prompt_ids.len(),
        generated_tokens: generated,
        prefill_tokens_per_s: per_second(session.prompt_ids.len(), t.prefill_ms),
        decode_tokens_per_s: per_second(generated.saturating_sub(1), end - first),
        weight_bytes: memory.weights,
        table_bytes: memory.tables,
        kv_cache_bytes: memory.kv_cache,
        activation_bytes: memory.activations,
        generated_ids: session.generated().to_vec(),
    })
}
