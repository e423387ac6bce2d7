//! One timed greedy generation: the measurement behind `cargo xtask bench`, run natively by
//! xtask and in the browser by `tests/bench_web.rs`, so both sides measure the same way.
//!
//! * time to first token: preprocessing, vision tower, prefill and choosing the first token, on
//!   the first generation after loading (so it includes compiling the pipelines it uses);
//! * prefill rate: prompt tokens over the prefill time (the text decoder on the whole prompt);
//! * decode rate: tokens after the first over the time spent producing them, and as a share of
//!   the adapter's memory roofline ([`roofline`]);
//! * host cost of a decode step: the dispatches it records and the milliseconds spent recording
//!   them ([`crate::model::DecodeRecording`]);
//! * GPU memory: weights, tables, KV cache and activations ([`MemoryUsage`]);
//! * a chat follow-up to the answer ([`FOLLOW_UP`]): its time to first token from the cache the
//!   answer left, and the pipelines it compiled beyond the caption's.

pub mod kernels;
pub mod roofline;
pub mod soak;

use std::cell::RefCell;
use std::rc::Rc;

use pocketvlm_processor::{Message, RgbImage};
use serde::{Deserialize, Serialize};

use crate::encoder::RecordProfile;
use crate::engine::{Conversation, Engine, Request, now_ms};
use crate::error::{Result, RuntimeError};
use crate::model::sampling::SamplingOptions;
use crate::model::{CacheKind, DecodeProfiling, Generator, MemoryUsage, Stop};

/// Deterministic values in [-1, 1) from `seed` (a 64-bit LCG's top bits): the inputs of the kernel
/// bench, whose contents do not change the work, and of the kernel tests, which compare the GPU
/// with a CPU reference on them.
pub fn values(seed: u64, len: usize) -> Vec<f32> {
    const MUL: u64 = 6364136223846793005;
    const INC: u64 = 1442695040888963407;
    let mut s = seed.wrapping_mul(MUL).wrapping_add(INC);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(MUL).wrapping_add(INC);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

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
    /// Contexts (tokens) of the latent-vs-plain KV cache comparison ([`measure_caches`]); empty:
    /// none.
    #[serde(default)]
    pub cache_contexts: Vec<usize>,
    /// Decode steps timed at each context.
    #[serde(default)]
    pub cache_steps: usize,
    /// Time single kernels ([`kernels::measure_kernels`]) before the models.
    #[serde(default)]
    pub kernels: bool,
    /// Time the decode steps' dispatches on the GPU ([`crate::model::DecodeProfiling::HostAndGpu`]):
    /// GPU time by kind of work, at the cost of slower decoding (one compute pass per dispatch).
    #[serde(default)]
    pub gpu_time: bool,
    /// Ask the prompt without the image (no vision tower): decode and text prefill only.
    #[serde(default)]
    pub text_only: bool,
    /// Also measure how soon a stop ends the vision tower and the prefill ([`measure_stop`]).
    #[serde(default)]
    pub stop_latency: bool,
    /// Also run this many generations in a row on the engine ([`soak::soak`]); 0: none.
    #[serde(default)]
    pub soak: usize,
    /// The KV cache the measured generation keeps ([`CacheKind::name`]).
    #[serde(default)]
    pub kv_cache: CacheKind,
}

impl BenchConfig {
    /// The request each model answers: the prompt about `image`, or alone when
    /// [`BenchConfig::text_only`].
    pub fn request(&self, image: &RgbImage) -> Request {
        let image = (!self.text_only).then(|| image.clone());
        let mut request = Request::caption(&self.prompt, image, self.max_new_tokens);
        request.split = self.split;
        request
    }
}

/// Prefix of the line the browser bench prints each [`CacheReport`] on.
pub const CACHE_REPORT_PREFIX: &str = "POCKETVLM_CACHE_BENCH ";

/// Decode at one context with one cache kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    pub model: String,
    /// [`CacheKind::name`].
    pub cache: String,
    /// Tokens in the cache when decoding starts.
    pub context: usize,
    pub steps: usize,
    pub kv_bytes_per_token: u64,
    pub kv_cache_bytes: u64,
    pub prefill_ms: f64,
    pub decode_tokens_per_s: f64,
    /// The attention half of one decode step, all layers ([`crate::model::Generator::attention_ms`]).
    pub attention_ms_per_step: f64,
    /// A pass of [`CACHE_FOLLOW_UP_TOKENS`] new tokens after the decode steps (a chat turn
    /// resumed from this cache), to its logits.
    #[serde(default)]
    pub follow_up_ms: f64,
}

/// New tokens of the follow-up pass [`measure_caches`] times at each context: a short chat turn.
pub const CACHE_FOLLOW_UP_TOKENS: usize = 16;

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
    /// Compiling the caption's pipelines before it ([`Engine::prepare`], as the web package's
    /// `Model.load` does after the upload), and how many it compiled.
    #[serde(default)]
    pub prepare_ms: f64,
    #[serde(default)]
    pub prepared_pipelines: usize,
    /// Pipelines the caption compiled itself (0 when the prepare foresaw them all).
    #[serde(default)]
    pub caption_pipelines: usize,
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub time_to_first_token_ms: f64,
    pub image_tiles: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// Dispatches one decode step records (the decoder pass; the argmax adds one).
    #[serde(default)]
    pub dispatches_per_token: f64,
    /// Host milliseconds spent recording one decode step's pass (not running it), a step after
    /// the second (see [`crate::model::DecodeRecording`]).
    #[serde(default)]
    pub record_ms_per_token: f64,
    /// Host milliseconds recording the first decode step took (with its pipeline compilations).
    #[serde(default)]
    pub first_step_record_ms: f64,
    /// Bind groups a decode step after the second builds (0 when every binding is reused;
    /// see [`crate::model::DecodeRecording`]).
    #[serde(default)]
    pub bind_groups_built_per_token: f64,
    /// Host milliseconds such a step spends building them (part of `record_ms_per_token`).
    #[serde(default)]
    pub bind_group_ms_per_token: f64,
    /// Where a later decode step's recording time goes, by kind of work, most first.
    #[serde(default)]
    pub record_by_kind: Vec<KindRecording>,
    /// Where a later decode step's GPU time goes, by kind of work, most first (with
    /// [`BenchConfig::gpu_time`] on a device that writes timestamps; else empty).
    #[serde(default)]
    pub gpu_by_kind: Vec<KindRecording>,
    /// The vision tower's and the prefill's GPU time by kind of work (with
    /// [`BenchConfig::gpu_time`]).
    #[serde(default)]
    pub vision_gpu_by_kind: Vec<KindRecording>,
    #[serde(default)]
    pub prefill_gpu_by_kind: Vec<KindRecording>,
    /// The prefill's host recording time by kind of work (pipeline compilations included).
    #[serde(default)]
    pub prefill_record_by_kind: Vec<KindRecording>,
    pub weight_bytes: u64,
    /// Bytes of weights one decode step reads ([`crate::model::Model::step_weight_bytes`]).
    #[serde(default)]
    pub step_weight_bytes: u64,
    /// The adapter's memory copy rate, bytes per second ([`roofline::copy_rate`]), measured
    /// after the generation.
    #[serde(default)]
    pub copy_bytes_per_s: f64,
    pub table_bytes: u64,
    pub kv_cache_bytes: u64,
    pub activation_bytes: u64,
    /// The generated ids (greedy), so two runs can be compared.
    pub generated_ids: Vec<u32>,
    /// How soon a stop ends the call, with [`BenchConfig::stop_latency`].
    #[serde(default)]
    pub stop: Option<StopReport>,
    /// The soak run, with [`BenchConfig::soak`].
    #[serde(default)]
    pub soak: Option<soak::SoakReport>,
    /// The chat follow-up after the answer (`measure_follow_up`); `None` when the conversation
    /// would not fit in the model's positions.
    #[serde(default)]
    pub follow_up: Option<FollowUpReport>,
}

/// The question of the follow-up turn [`measure`] asks after the measured answer.
pub const FOLLOW_UP: &str = "What else can you tell me about it?";

/// A chat follow-up turn resumed from the cache of the answer before it (`measure_follow_up`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowUpReport {
    /// Prompt tokens taken from the cache, and computed anew (the answer's last token, the turn
    /// markers and the question).
    pub cached_tokens: usize,
    pub new_tokens: usize,
    /// From the call to its first token.
    pub time_to_first_token_ms: f64,
    /// Pipelines it compiled that the prepared caption and its answer had not.
    pub pipelines: usize,
}

/// How soon a stop ends a call ([`measure_stop`]). The stop is asked between the parts of the
/// vision tower and the prefill, so a stop requested just after one ask waits for the next: the
/// longest time between two asks bounds the wait.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopReport {
    /// Parts of the vision tower (0 without an image) and of the prefill.
    pub vision_parts: usize,
    pub prefill_parts: usize,
    /// The longest time between two asks in the vision tower (from the call's start) and in the
    /// prefill, in an unstopped call.
    pub vision_longest_wait_ms: f64,
    pub prefill_longest_wait_ms: f64,
    /// A stop requested halfway through the vision tower (else the prefill): when, after the
    /// call started; how long until the call failed with `Aborted`; and until the GPU had
    /// finished the work already submitted.
    pub requested_at_ms: f64,
    /// `None` when the call finished before the stop was requested.
    pub to_error_ms: Option<f64>,
    pub to_idle_ms: f64,
}

/// One kind of work (a dispatch label, "copy", "(tail)") in a later decode step's recording.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KindRecording {
    pub kind: String,
    /// How many a step records.
    pub per_step: f64,
    /// Host milliseconds a step spends on them.
    pub ms_per_step: f64,
}

impl BenchReport {
    pub fn gpu_total_bytes(&self) -> u64 {
        self.weight_bytes + self.table_bytes + self.kv_cache_bytes + self.activation_bytes
    }

    /// The most tokens per second the adapter's memory lets a decode step reach: its copy rate
    /// over the bytes a step reads ([`roofline`]).
    pub fn roofline_tokens_per_s(&self) -> f64 {
        roofline::roofline_tokens_per_s(self.copy_bytes_per_s, self.step_weight_bytes)
    }

    /// The decode rate as a share of the adapter's memory roofline ([`roofline`]).
    pub fn roofline_share(&self) -> f64 {
        roofline::roofline_share(self.decode_tokens_per_s, self.step_weight_bytes, self.copy_bytes_per_s)
    }
}

/// `profile` per step over `steps` steps, most time first.
fn by_kind(profile: &RecordProfile, steps: f64) -> Vec<KindRecording> {
    let mut kinds: Vec<KindRecording> = profile
        .kinds
        .iter()
        .map(|(kind, cost)| KindRecording {
            kind: kind.clone(),
            per_step: cost.count as f64 / steps,
            ms_per_step: cost.ms / steps,
        })
        .collect();
    kinds.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step));
    kinds
}

fn per_second(count: usize, ms: f64) -> f64 {
    if ms > 0.0 { count as f64 * 1e3 / ms } else { 0.0 }
}

/// Run `request` (greedy whatever its sampling options) to the end and time it; `load_ms` is the
/// caller's measurement of loading `engine`, `model` names it in the report; `gpu_time` times
/// the dispatches of the vision tower, the prefill and the later decode steps on the GPU (see
/// [`BenchConfig::gpu_time`]; it sets [`crate::model::Model::time_passes`]).
pub async fn measure(
    engine: &mut Engine,
    mut request: Request,
    load_ms: f64,
    model: &str,
    config: &BenchConfig,
) -> Result<BenchReport> {
    let gpu_time = config.gpu_time;
    request.sampling = Default::default();
    engine.model.time_passes = gpu_time;
    engine.model.cache_kind = config.kv_cache;
    let image_tiles = match &request.image {
        Some(image) => {
            let split = request.split.unwrap_or(engine.preprocessor.default_split());
            engine.preprocessor.grid_for(image.width(), image.height(), split)?.n_tiles()
        }
        None => 0,
    };
    let prepared = engine.prepare(&request).await?;
    let compiled = engine.gpu.pipelines.compiled().len();
    let start = now_ms();
    let mut session = engine.start(request.clone()).await?;
    session.profile_decode(if gpu_time { DecodeProfiling::HostAndGpu } else { DecodeProfiling::Host });
    let mut answer = session.next(engine).await?.map(|p| p.text).unwrap_or_default();
    let first = now_ms();
    while let Some(piece) = session.next(engine).await? {
        answer.push_str(&piece.text);
    }
    let end = now_ms();
    let caption_pipelines = engine.gpu.pipelines.compiled().len() - compiled;
    let generated = session.generated().len();
    let t = session.timings;
    let memory: MemoryUsage = session.memory(engine);
    let recording = session.decode_recording();
    let later_steps = recording.steps.saturating_sub(2).max(1) as f64;
    let record_by_kind = by_kind(session.decode_profile(), later_steps);
    let gpu_by_kind = by_kind(session.decode_gpu_time(), later_steps);
    let vision_gpu_by_kind = by_kind(&session.vision_gpu_time, 1.0);
    let prefill_gpu_by_kind = by_kind(session.prefill_gpu_time(), 1.0);
    let prefill_record_by_kind = by_kind(session.prefill_record_time(), 1.0);
    let generated_ids = session.generated().to_vec();
    let prompt_tokens = session.prompt_ids.len();
    let follow_up = measure_follow_up(engine, &request, &answer, session.into_conversation()).await?;
    let copy_bytes_per_s = roofline::copy_rate(&engine.gpu).await?;
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
        prepare_ms: prepared.ms,
        prepared_pipelines: prepared.pipelines,
        caption_pipelines,
        preprocess_ms: t.preprocess_ms,
        vision_ms: t.vision_ms,
        prefill_ms: t.prefill_ms,
        time_to_first_token_ms: first - start,
        image_tiles,
        prompt_tokens,
        generated_tokens: generated,
        prefill_tokens_per_s: per_second(prompt_tokens, t.prefill_ms),
        decode_tokens_per_s: per_second(generated.saturating_sub(1), end - first),
        dispatches_per_token: recording.dispatches as f64 / recording.steps.max(1) as f64,
        record_ms_per_token: recording.later_record_ms / later_steps,
        first_step_record_ms: recording.first_record_ms,
        bind_groups_built_per_token: recording.later_built_bind_groups as f64 / later_steps,
        bind_group_ms_per_token: recording.later_bind_group_ms / later_steps,
        record_by_kind,
        gpu_by_kind,
        vision_gpu_by_kind,
        prefill_gpu_by_kind,
        prefill_record_by_kind,
        weight_bytes: memory.weights,
        step_weight_bytes: engine.model.step_weight_bytes(),
        copy_bytes_per_s,
        table_bytes: memory.tables,
        kv_cache_bytes: memory.kv_cache,
        activation_bytes: memory.activations,
        generated_ids,
        stop: match config.stop_latency {
            true => Some(measure_stop(engine, &request).await?),
            false => None,
        },
        soak: match config.soak {
            0 => None,
            n => {
                let text =
                    Request { image: None, ..Request::caption(&config.prompt, None, config.max_new_tokens) };
                Some(soak::soak(engine, &request, &text, n).await?)
            }
        },
        follow_up,
    })
}

/// Ask [`FOLLOW_UP`] after `request` was answered with `answer`, resuming from the cache the
/// answer left (`conversation`), and time the turn to its first token (greedy); `None` when the
/// conversation with the question and one answer token exceeds the model's positions.
async fn measure_follow_up(
    engine: &Engine,
    request: &Request,
    answer: &str,
    conversation: Conversation,
) -> Result<Option<FollowUpReport>> {
    let mut messages = request.messages.clone();
    messages.push(Message::text("assistant", answer));
    messages.push(Message::text("user", FOLLOW_UP));
    let turn = Request { messages, max_new_tokens: 1, sampling: Default::default(), ..request.clone() };
    let compiled = engine.gpu.pipelines.compiled().len();
    let start = now_ms();
    let mut session = match engine.resume(turn, Some(conversation)).await {
        Err(RuntimeError::PromptTooLong { .. }) => return Ok(None),
        session => session?,
    };
    session.next(engine).await?;
    let time_to_first_token_ms = now_ms() - start;
    Ok(Some(FollowUpReport {
        cached_tokens: session.reused_tokens(),
        new_tokens: session.prompt_ids.len() - session.reused_tokens(),
        time_to_first_token_ms,
        pipelines: engine.gpu.pipelines.compiled().len() - compiled,
    }))
}

/// Parts of `request`'s vision tower (two per vision layer, none without an image) and of its
/// prefill (one per decoder layer): the stop is asked once before anything and after each part.
fn stop_parts(engine: &Engine, request: &Request) -> (usize, usize) {
    let cfg = &engine.model.config;
    let vision = if request.image.is_some() { 2 * cfg.vision.num_hidden_layers } else { 0 };
    (vision, cfg.text.num_hidden_layers)
}

/// Two more calls of `request` (after a timed one, so nothing compiles): one unstopped, noting
/// when the stop is asked ([`StopReport`]'s waits), and one stopped halfway through the vision
/// tower (the prefill without an image), timed to the `Aborted` error and to an idle GPU.
pub async fn measure_stop(engine: &Engine, request: &Request) -> Result<StopReport> {
    let asks = Rc::new(RefCell::new(Vec::new()));
    let noted = asks.clone();
    let start = now_ms();
    let stop = Stop::when(move || {
        noted.borrow_mut().push(now_ms());
        false
    });
    engine.start(Request { stop, ..request.clone() }).await?;
    let asks: Vec<f64> = std::iter::once(start).chain(asks.take()).collect();
    let (vision_parts, prefill_parts) = stop_parts(engine, request);
    let longest = |asks: &[f64]| asks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let vision = &asks[1..(2 + vision_parts).min(asks.len())];
    let prefill = &asks[(1 + vision_parts).min(asks.len() - 1)..];
    let stage = if vision_parts > 0 { vision } else { prefill };
    let requested_at_ms = (stage[0] + stage[stage.len() - 1]) / 2.0 - start;
    let at = now_ms() + requested_at_ms;
    let stop = Stop::when(move || now_ms() >= at);
    let result = engine.start(Request { stop, ..request.clone() }).await;
    let failed = now_ms();
    engine.gpu.finish().await?;
    let idle = now_ms();
    let to_error_ms = match result {
        Err(RuntimeError::Aborted(_)) => Some(failed - at),
        Err(e) => return Err(e),
        Ok(_) => None,
    };
    Ok(StopReport {
        vision_parts,
        prefill_parts,
        vision_longest_wait_ms: longest(vision),
        prefill_longest_wait_ms: longest(prefill),
        requested_at_ms,
        to_error_ms,
        to_idle_ms: idle - at,
    })
}

/// For each context and each cache kind ([`CacheKind::ALL`], plain first):
/// prefill a text prompt of that many tokens, time `steps` greedy decode steps and the attention
/// half of one step. The model's cache kind is restored afterwards.
pub async fn measure_caches(
    engine: &mut Engine,
    model: &str,
    contexts: &[usize],
    steps: usize,
) -> Result<Vec<CacheReport>> {
    let restore = engine.model.cache_kind;
    let mut reports = Vec::new();
    // Warm up: compile every pipeline both kinds use before anything is timed.
    if let Some(&first) = contexts.first() {
        for kind in CacheKind::ALL {
            engine.model.cache_kind = kind;
            let warm = measure_cache(engine, model, first.min(64), 2).await;
            engine.model.cache_kind = restore;
            warm?;
        }
    }
    for &context in contexts {
        for kind in CacheKind::ALL {
            engine.model.cache_kind = kind;
            let report = measure_cache(engine, model, context, steps).await;
            engine.model.cache_kind = restore;
            reports.push(report?);
        }
    }
    Ok(reports)
}

async fn measure_cache(engine: &Engine, model: &str, context: usize, steps: usize) -> Result<CacheReport> {
    let (gpu, m) = (&engine.gpu, &engine.model);
    let cfg = &m.config;
    let steps = steps.max(1);
    let room = steps + 2 + CACHE_FOLLOW_UP_TOKENS;
    let context = context.clamp(1, m.max_positions().saturating_sub(room).max(1));
    // Ordinary text ids (not the image token), cycling; the follow-up's are the first ones.
    let ids: Vec<u32> = (0..context.max(CACHE_FOLLOW_UP_TOKENS) as u32)
        .map(|i| 100 + i % 1000)
        .map(|id| if id == cfg.image_token_id { id + 1 } else { id })
        .collect();
    let (ids, follow_up) = (&ids[..context], &ids[..CACHE_FOLLOW_UP_TOKENS]);
    let start = now_ms();
    let greedy = SamplingOptions::default;
    // room for the decode steps and the follow-up, so that neither grows the cache
    let max_new = steps + 1 + CACHE_FOLLOW_UP_TOKENS;
    let mut generator = Generator::start(gpu, m, ids, None, max_new, greedy(), &Stop::never()).await?;
    generator.logits(gpu, m).await?;
    let prefill_ms = now_ms() - start;
    generator.next_token(gpu, m).await?;
    let decode_start = now_ms();
    let mut decoded = 0;
    while decoded < steps && generator.next_token(gpu, m).await?.is_some() {
        decoded += 1;
    }
    let decode_ms = now_ms() - decode_start;
    let attention_ms_per_step = generator.attention_ms(gpu, m, 3).await?;
    let (kv_bytes_per_token, kv_cache_bytes) = (generator.kv_bytes_per_token(), generator.kv_cache_bytes());
    let cached = generator.cached_tokens().len();
    let turn: Vec<u32> = generator.cached_tokens().iter().chain(follow_up).copied().collect();
    let start = now_ms();
    let generator = generator.resume(gpu, m, &turn, cached, None, 1, greedy(), &Stop::never()).await?;
    generator.logits(gpu, m).await?;
    let follow_up_ms = now_ms() - start;
    Ok(CacheReport {
        model: model.to_string(),
        cache: m.cache_kind.name().into(),
        context,
        steps: decoded,
        kv_bytes_per_token,
        kv_cache_bytes,
        prefill_ms,
        decode_tokens_per_s: per_second(decoded, decode_ms),
        attention_ms_per_step,
        follow_up_ms,
    })
}
