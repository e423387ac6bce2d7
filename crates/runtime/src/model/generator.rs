//! Token-by-token generation: the prefill, then one decode step per token, greedy a step ahead
//! of the host on GPUs ([`Generator`]), and what the decode steps record about themselves for the
//! bench ([`DecodeRecording`], [`DecodeProfiling`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::interrupt::{Interrupt, Stop};
use super::kv_cache::KvCache;
use super::prefix::reusable_prefix;
use super::sampling::{Pcg32, SamplingOptions, sample};
use super::scratch::{Scratch, f32_buffer};
use super::text;
use super::{ImageEmbedding, MemoryUsage, Model};
use crate::device::{Gpu, now_ms};
use crate::encoder::{BindGroups, Encoder, GpuTimings, RecordProfile};
use crate::error::{Result, RuntimeError};
use crate::kernels::argmax::Argmax;
use crate::kernels::embed::ImageFeatures;
use crate::memory::DeviceBuffer;

/// An in-progress generation: the KV cache, the logits of the next position, and the tokens so far.
///
/// Greedy decoding on a GPU keeps it one step ahead of the host
/// ([`crate::Capabilities::decode_ahead`]): while the GPU runs the step choosing token `t`,
/// [`Generator::next_token`] records and submits the step after it, which embeds the GPU's choice
/// straight from `tokens` (no readback in between), and only then waits to read `t`. So the
/// host's recording and the readback's latency are off the GPU's path (on a GPU, where a step
/// takes milliseconds, they are much of it). The steps alternate between two slots of
/// logits and chosen tokens, so the logits that chose the last token stay readable
/// ([`Generator::logits`]) while the step ahead writes the other slot. If `t` ends the generation
/// (an end-of-utterance token), the step ahead has fed it: its cache row is what a following turn
/// computes for it anyway, and [`Generator::cached_tokens`] counts it. The same operations run in
/// the same order for every token, so the ids and logits are those of one step at a time.
pub struct Generator {
    cache: KvCache,
    /// Two slots of logits: step `j` of a generation writes the slot its input's logits were not in.
    logits: [DeviceBuffer; 2],
    /// The token each slot's logits chose (greedy argmax), or the host wrote for the step after
    /// them: what that step embeds.
    tokens: [DeviceBuffer; 2],
    /// The slot holding the logits the last generated token was chosen from (the prompt's last
    /// position before any): what [`Generator::logits`] reads.
    slot: usize,
    /// Greedy choices submitted and not yet read, oldest first: none, the one choosing the next
    /// token, or (a call that stopped while waiting for it) that one and the step ahead of it.
    /// Not empty exactly when the last generated token has been fed.
    choices: VecDeque<Choice>,
    options: SamplingOptions,
    rng: Pcg32,
    max_new_tokens: usize,
    prompt_tokens: usize,
    /// Prompt tokens whose cache rows came from an earlier generation (see [`Generator::resume`]).
    reused_tokens: usize,
    /// The tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
    generated: Vec<u32>,
    finished: bool,
    /// The most bytes one pass held at once so far beyond what was held before it (see
    /// [`MemoryUsage::activations`]).
    peak_pass_bytes: u64,
    /// The decode steps' activations, kept from step to step.
    scratch: Scratch,
    /// The decode steps' bind groups (the same buffers every step).
    bind_groups: Arc<Mutex<BindGroups>>,
    decode: DecodeRecording,
    /// Host recording time of the decode steps after the second, by kind of work.
    decode_profile: RecordProfile,
    /// How the decode steps after the second are profiled.
    profiling: DecodeProfiling,
    /// Their GPU time by kind of work, when timed.
    decode_gpu: RecordProfile,
    /// The prefill's GPU time and host recording time by kind of work, when timed
    /// ([`Model::time_passes`]).
    prefill_gpu: RecordProfile,
    prefill_record: RecordProfile,
}

/// What the decode steps after the second record about themselves, for the bench: host
/// recording time charged to each kind of dispatch ([`crate::encoder::Encoder::profile_from_now`]),
/// and with it GPU time per dispatch from timestamps (one compute pass each, which slows the steps;
/// [`crate::encoder::Encoder::time_dispatches`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeProfiling {
    #[default]
    Off,
    Host,
    HostAndGpu,
}

/// Host-side cost of the decode steps recorded so far: what `cargo xtask bench` reports per
/// token (the GPU work of a step is one command buffer: the decoder pass and, when greedy, the
/// argmax).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeRecording {
    /// Decoder passes of one token recorded.
    pub steps: usize,
    /// Dispatches they recorded.
    pub dispatches: usize,
    /// Milliseconds spent recording them (building the command buffer, not running it).
    pub record_ms: f64,
    /// Of those, the first step's (which compiles the pipelines only one-token passes use:
    /// seconds in a browser) …
    pub first_record_ms: f64,
    /// … and the steps' after the second (which build no bind groups and allocate nothing).
    pub later_record_ms: f64,
    /// Dispatches (of decode steps and their argmax) that reused a bind group built by an
    /// earlier step.
    pub reused_bind_groups: usize,
    /// Bind groups built by the decode steps after the second: one for each dispatch whose
    /// bindings changed since the step before (e.g. grew with the context). The first step
    /// builds all of its own, and the second again those of the scratch buffers the first grew
    /// (a role's first user in a pass may need less than a later layer).
    pub later_built_bind_groups: usize,
    /// Host milliseconds spent building those (part of `record_ms`).
    pub later_bind_group_ms: f64,
}

impl Generator {
    /// Prefill the prompt (with image features for its `<image>` tokens, in order), in parts
    /// that `stop` can end ([`Interrupt`]; an ended prefill leaves nothing behind).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        gpu: &Gpu,
        model: &Model,
        prompt: &[u32],
        image: Option<&ImageEmbedding>,
        max_new_tokens: usize,
        options: SamplingOptions,
        stop: &Stop,
    ) -> Result<Self> {
        Self::prefill(gpu, model, None, prompt, image, max_new_tokens, options, stop).await
    }

    /// Continue from this generation's KV cache with a new whole prompt (e.g. the conversation so
    /// far plus a new user turn): the first `keep` tokens of `prompt` must be tokens this cache
    /// holds (see [`Generator::reusable_prefix`]); only the rest is prefilled. `image` gives the
    /// features of the `<image>` tokens in `prompt[keep..]`, if it has any. An ended prefill
    /// (`stop`) consumes this cache: the next prompt is computed whole.
    #[allow(clippy::too_many_arguments)]
    pub async fn resume(
        self,
        gpu: &Gpu,
        model: &Model,
        prompt: &[u32],
        keep: usize,
        image: Option<&ImageEmbedding>,
        max_new_tokens: usize,
        options: SamplingOptions,
        stop: &Stop,
    ) -> Result<Self> {
        if keep >= prompt.len() || keep > self.cached.len() || self.cached[..keep] != prompt[..keep] {
            return Err(RuntimeError::Shape(format!(
                "cannot reuse {keep} cached tokens for a {}-token prompt",
                prompt.len()
            )));
        }
        Self::prefill(gpu, model, Some((self, keep)), prompt, image, max_new_tokens, options, stop).await
    }

    /// How many leading tokens of `prompt` [`Generator::resume`] can take from this cache;
    /// `same_image` says whether the prompt's image is the one this cache was computed with.
    pub fn reusable_prefix(&self, model: &Model, prompt: &[u32], same_image: bool) -> usize {
        reusable_prefix(&self.cached, prompt, model.config.image_token_id, same_image)
    }

    #[allow(clippy::too_many_arguments)]
    async fn prefill(
        gpu: &Gpu,
        model: &Model,
        reuse: Option<(Generator, usize)>,
        prompt: &[u32],
        image: Option<&ImageEmbedding>,
        max_new_tokens: usize,
        options: SamplingOptions,
        stop: &Stop,
    ) -> Result<Self> {
        let cfg = &model.config;
        if prompt.is_empty() {
            return Err(RuntimeError::Shape("empty prompt".into()));
        }
        model.check_room(prompt.len(), max_new_tokens)?;
        if let Some(bad) = prompt.iter().find(|&&id| id as usize >= cfg.text.vocab_size) {
            return Err(RuntimeError::Shape(format!("token id {bad} is outside the vocabulary")));
        }
        let keep = reuse.as_ref().map_or(0, |r| r.1);
        let new = &prompt[keep..];
        let image_tokens = new.iter().filter(|&&id| id == cfg.image_token_id).count();
        let image_rows = image.map_or(0, |i| i.rows);
        if image_tokens != image_rows {
            return Err(RuntimeError::Shape(format!(
                "the prompt has {image_tokens} image tokens to compute but {image_rows} image features were given"
            )));
        }
        let capacity = prompt.len() + max_new_tokens;
        // A step ahead of the previous generation (choices not read) is dropped with its
        // choices: the cache keeps only rows of the tokens it knows.
        let (mut cache, logits, tokens, scratch) = match reuse {
            Some((previous, keep)) => {
                let mut cache = previous.cache;
                cache.rewind_and_reserve(gpu, keep, capacity).await?;
                (cache, previous.logits, previous.tokens, previous.scratch)
            }
            None => (
                KvCache::new(gpu, &model.text.cache_layout(cfg, model.cache_kind), capacity).await?,
                [
                    f32_buffer(gpu, "logits", cfg.text.vocab_size).await?,
                    f32_buffer(gpu, "logits", cfg.text.vocab_size).await?,
                ],
                [gpu.zeroed_buffer("token id", 4).await?, gpu.zeroed_buffer("token id", 4).await?],
                Scratch::default(),
            ),
        };
        let start = gpu.start_pass();
        let ids = gpu.storage_buffer("prompt ids", bytemuck::cast_slice(new)).await?;
        let features = image.map(|i| ImageFeatures {
            features: &i.features,
            rows: i.rows,
            token_id: cfg.image_token_id,
        });
        // The prompt's activations are dropped after the prefill: decode steps need a row each.
        let mut prefill_scratch = Scratch::default();
        let mut encoder = gpu.encoder();
        if model.time_passes {
            encoder.profile_from_now();
            encoder.time_dispatches(gpu);
        }
        let (text, n) = (&model.text, new.len());
        let mut interrupt = Interrupt::new(stop, "the prefill");
        text::forward(
            gpu,
            &mut encoder,
            &mut interrupt,
            &mut prefill_scratch,
            cfg,
            text,
            &mut cache,
            &ids,
            n,
            features,
            &logits[0],
        )
        .await?;
        // The image features stay alive through the prefill.
        let prefill_bytes = gpu.pass_bytes(start) + image.map_or(0, |i| i.features.size());
        let prefill_record = encoder.take_profile().unwrap_or_default();
        let prefill_gpu = interrupt.finish(gpu, encoder).await?;
        Ok(Self {
            peak_pass_bytes: prefill_bytes.max(image.map_or(0, |i| i.pass_bytes)),
            cache,
            logits,
            tokens,
            slot: 0,
            choices: VecDeque::new(),
            rng: Pcg32::new(options.seed),
            options,
            max_new_tokens,
            prompt_tokens: prompt.len(),
            reused_tokens: keep,
            cached: prompt.to_vec(),
            generated: Vec::new(),
            finished: max_new_tokens == 0,
            scratch,
            bind_groups: Arc::default(),
            decode: DecodeRecording::default(),
            decode_profile: RecordProfile::default(),
            profiling: DecodeProfiling::Off,
            decode_gpu: RecordProfile::default(),
            prefill_gpu,
            prefill_record,
        })
    }

    /// Host time recording this generation's prefill by kind of work (pipeline compilations
    /// included), when [`Model::time_passes`] (else empty).
    pub fn prefill_record_time(&self) -> &RecordProfile {
        &self.prefill_record
    }

    /// GPU time of this generation's prefill by kind of work, when [`Model::time_passes`] (else
    /// empty).
    pub fn prefill_gpu_time(&self) -> &RecordProfile {
        &self.prefill_gpu
    }

    /// Logits of the next position (after [`Generator::start`]: the last prompt position).
    pub async fn logits(&self, gpu: &Gpu, model: &Model) -> Result<Vec<f32>> {
        gpu.read_f32(&self.logits[self.slot], model.config.text.vocab_size).await
    }

    /// The next token, or `None` once the end-of-utterance token was produced or the limit reached.
    pub async fn next_token(&mut self, gpu: &Gpu, model: &Model) -> Result<Option<u32>> {
        if self.finished {
            return Ok(None);
        }
        if !self.options.is_greedy() {
            self.submit_feed_last(gpu, model).await?;
            let logits = gpu.read_f32(&self.logits[self.slot], model.config.text.vocab_size).await?;
            let token = sample(&logits, &self.options, &mut self.rng);
            self.accept(model, token);
            return Ok(Some(token));
        }
        if self.choices.is_empty() {
            let mut encoder = gpu.encoder_reusing(&self.bind_groups);
            self.feed_last(gpu, model, &mut encoder).await?;
            let choice = self.choose(gpu, model, encoder, self.slot).await?;
            self.choices.push_back(choice);
        }
        // The step after it, unless the token being chosen is the last the limit allows: fed
        // with that choice on the GPU, submitted before waiting to read it.
        let room = self.generated.len() + 1 < self.max_new_tokens;
        if gpu.caps.decode_ahead && self.choices.len() == 1 && room {
            let from = self.choices[0].slot;
            let mut encoder = gpu.encoder_reusing(&self.bind_groups);
            let to = self.record_step(gpu, model, &mut encoder, from).await?;
            let choice = self.choose(gpu, model, encoder, to).await?;
            self.choices.push_back(choice);
        }
        let bytes = match self.choices.front() {
            Some(choice) => gpu.read_staged(&choice.staging, choice.index.clone()).await?,
            None => return Err(RuntimeError::Shape("no token is being chosen".into())),
        };
        let Some(choice) = self.choices.pop_front() else { return Ok(None) };
        let token = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        self.slot = choice.slot;
        if !self.choices.is_empty() {
            // the step ahead fed it
            self.cached.push(token);
        }
        self.add_gpu_time(gpu, choice.timings).await?;
        self.accept(model, token);
        Ok(Some(token))
    }

    /// Finish `encoder` (the step whose logits are in `slot`, or nothing when they are the
    /// prompt's) with the greedy choice from those logits into `tokens[slot]` and a copy of it to
    /// read, and submit it.
    async fn choose(&self, gpu: &Gpu, model: &Model, mut encoder: Encoder, slot: usize) -> Result<Choice> {
        let vocab = model.config.text.vocab_size;
        Argmax.encode(gpu, &mut encoder, 1, vocab, &self.logits[slot], &self.tokens[slot]).await?;
        let staging = gpu.readback_buffer(4);
        encoder.copy_buffer_to_buffer(&self.tokens[slot], 0, &staging, 0, 4);
        let timings = encoder.finish_timing(gpu);
        let index = gpu.submit(encoder);
        Ok(Choice { slot, staging, index, timings })
    }

    /// Teacher forcing: take `token` as the next generated token instead of choosing one (the
    /// way [`Generator::next_token`] takes its choice), e.g. to follow a reference's tokens and
    /// compare the logits at every step. [`Generator::logits`] then reads the logits `token`
    /// replaced a choice from.
    pub async fn force_token(&mut self, gpu: &Gpu, model: &Model, token: u32) -> Result<()> {
        if self.finished {
            return Err(RuntimeError::Shape("the generation has finished: no token can follow".into()));
        }
        if token as usize >= model.config.text.vocab_size {
            return Err(RuntimeError::Shape(format!("token id {token} is outside the vocabulary")));
        }
        if let Some(choice) = self.choices.pop_front() {
            // The GPU chose from the logits after the last token: `token` replaces that choice,
            // and a step ahead that fed it leaves no row.
            self.choices.clear();
            self.cache.truncate(self.cached.len());
            self.slot = choice.slot;
        } else {
            self.submit_feed_last(gpu, model).await?;
        }
        self.accept(model, token);
        Ok(())
    }

    /// Profile the decode steps after the second ([`DecodeProfiling`]; off by default):
    /// [`Generator::decode_profile`] and [`Generator::decode_gpu_time`] read the results.
    pub fn profile_decode(&mut self, profiling: DecodeProfiling) {
        self.profiling = profiling;
    }

    /// GPU time of the decode steps timed so far, by kind of work (empty unless profiled with
    /// [`DecodeProfiling::HostAndGpu`] on a device that writes timestamps).
    pub fn decode_gpu_time(&self) -> &RecordProfile {
        &self.decode_gpu
    }

    async fn add_gpu_time(&mut self, gpu: &Gpu, timings: Option<GpuTimings>) -> Result<()> {
        if let Some(t) = timings {
            self.decode_gpu.add(&t.read(gpu).await?);
        }
        Ok(())
    }

    /// Record the pass that computes the keys, values and next logits of the last generated
    /// token, if there is one (tokens are fed lazily, when the one after them is wanted), the
    /// token written by the host.
    async fn feed_last(&mut self, gpu: &Gpu, model: &Model, encoder: &mut Encoder) -> Result<()> {
        let Some(&last) = self.generated.last() else { return Ok(()) };
        gpu.queue.write_buffer(&self.tokens[self.slot], 0, bytemuck::bytes_of(&last));
        self.slot = self.record_step(gpu, model, encoder, self.slot).await?;
        self.cached.push(last);
        Ok(())
    }

    /// [`Generator::feed_last`] in a submission of its own (its GPU time added when timed).
    async fn submit_feed_last(&mut self, gpu: &Gpu, model: &Model) -> Result<()> {
        let mut encoder = gpu.encoder_reusing(&self.bind_groups);
        self.feed_last(gpu, model, &mut encoder).await?;
        let timings = encoder.finish_timing(gpu);
        gpu.submit(encoder);
        self.add_gpu_time(gpu, timings).await
    }

    /// Record the pass that embeds `tokens[from]` (chosen from, or written after, the logits
    /// in slot `from`) and computes its keys, values and next logits into the other slot, which
    /// it returns.
    async fn record_step(
        &mut self,
        gpu: &Gpu,
        model: &Model,
        encoder: &mut Encoder,
        from: usize,
    ) -> Result<usize> {
        let (t0, dispatches, start) = (now_ms(), encoder.dispatches(), gpu.start_pass());
        let built = || self.bind_groups.lock().map_or((0, 0.0), |c| (c.built, c.build_ms));
        let built_before = built();
        // Steps after the second (this one is step `steps + 1`).
        if self.decode.steps >= 2 && self.profiling != DecodeProfiling::Off {
            encoder.profile_from_now();
            if self.profiling == DecodeProfiling::HostAndGpu {
                encoder.time_dispatches(gpu);
            }
        }
        let to = 1 - from;
        let (cfg, text) = (&model.config, &model.text);
        let (scratch, cache) = (&mut self.scratch, &mut self.cache);
        let never = &mut Interrupt::never();
        let (token, logits) = (&self.tokens[from], &self.logits[to]);
        text::forward(gpu, encoder, never, scratch, cfg, text, cache, token, 1, None, logits).await?;
        self.peak_pass_bytes = self.peak_pass_bytes.max(gpu.pass_bytes(start));
        self.decode.steps += 1;
        self.decode.dispatches += encoder.dispatches() - dispatches;
        if let Some(profile) = encoder.take_profile() {
            self.decode_profile.add(&profile);
        }
        let ms = now_ms() - t0;
        self.decode.record_ms += ms;
        if self.decode.steps == 1 {
            self.decode.first_record_ms = ms;
        }
        if self.decode.steps > 2 {
            self.decode.later_record_ms += ms;
            let after = built();
            self.decode.later_built_bind_groups += after.0 - built_before.0;
            self.decode.later_bind_group_ms += after.1 - built_before.1;
        }
        Ok(to)
    }

    /// Host-side cost of the decode steps so far.
    pub fn decode_recording(&self) -> DecodeRecording {
        let reused_bind_groups = self.bind_groups.lock().map_or(0, |c| c.hits);
        DecodeRecording { reused_bind_groups, ..self.decode }
    }

    /// Host recording time of the decode steps after the second (when bind groups are reused),
    /// by kind of work (see [`crate::encoder`]; empty unless profiled).
    pub fn decode_profile(&self) -> &RecordProfile {
        &self.decode_profile
    }

    /// Record `token` as generated; finish on an end-of-utterance token or at the limit.
    fn accept(&mut self, model: &Model, token: u32) {
        self.generated.push(token);
        if model.eos_token_ids.contains(&token) || self.generated.len() >= self.max_new_tokens {
            self.finished = true;
        }
    }

    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Prompt tokens taken from an earlier generation's cache instead of being computed.
    pub fn reused_tokens(&self) -> usize {
        self.reused_tokens
    }

    /// The tokens whose keys and values the cache holds: the prompt and the generated tokens fed
    /// back so far (the last generated one too once a greedy step ahead of it has fed it).
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Bytes of the KV cache on the GPU.
    pub fn kv_cache_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Bytes one token takes in the KV cache, all layers together.
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.cache.bytes_per_token()
    }

    /// Milliseconds the attention half of one decode step takes at the current context, all
    /// layers (the fastest of `reps` timed submissions, each waited for; see
    /// [`text::attention_step`]). Needs a free cache row (a generation not yet at its limit).
    pub async fn attention_ms(&self, gpu: &Gpu, model: &Model, reps: usize) -> Result<f64> {
        let d = model.config.text.hidden_size;
        let normed = gpu.storage_buffer("bench row", bytemuck::cast_slice(&vec![0.05f32; d])).await?;
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let mut encoder = gpu.encoder();
            text::attention_step(gpu, &mut encoder, &model.config, &model.text, &self.cache, &normed).await?;
            let start = now_ms();
            gpu.submit(encoder);
            gpu.read_bytes(&normed, 4).await?;
            best = best.min(now_ms() - start);
        }
        Ok(best)
    }

    /// GPU memory of the model and this generation so far.
    pub fn memory(&self, model: &Model) -> MemoryUsage {
        MemoryUsage {
            weights: model.weight_bytes(),
            tables: model.table_bytes(),
            kv_cache: self.kv_cache_bytes(),
            activations: self.peak_pass_bytes
                + self.logits.iter().chain(&self.tokens).map(|b| b.size()).sum::<u64>(),
        }
    }
}

/// A greedy choice on its way back: the argmax of the logits in `slot`, written to the slot's
/// token and copied into `staging` by submission `index`.
struct Choice {
    slot: usize,
    staging: wgpu::Buffer,
    index: wgpu::SubmissionIndex,
    timings: Option<GpuTimings>,
}
