//! Compiling a caption's pipelines before the caption is asked for.
//!
//! A pipeline compiles the first time a pass records a dispatch of it, and the recording waits
//! for the compilation ([`crate::pipelines::Pipelines::compile`]), with the GPU idle: a pass is
//! submitted after it is recorded. On a software adapter that is seconds of the first caption's
//! time to first token (SwiftShader compiles a large written-out kernel in hundreds of
//! milliseconds). [`Model::prepare`] records the passes of a caption — the vision tower of its
//! tiles, the prefill of its prompt with their image rows, one decode step and its argmax — and
//! of chat follow-ups after it (`follow_ups`), each into an encoder that it drops unsubmitted:
//! every pipeline those passes use compiles, nothing runs, nothing a generation holds is touched
//! (the passes get a KV cache, activations and kernel scratch of their own, dropped at the end),
//! and no more memory is held at once than the caption will hold but the follow-ups' cache rows
//! and activations. A pass chooses its kernels from its shapes (tokens, keys, tiles, the cache's
//! capacity), so a caption with another prompt length or tile count may still compile a variant
//! or two. A follow-up of fewer than [`SPLIT_KEYS_BELOW`] new tokens runs the recorded
//! short follow-up's kernels (over a latent cache it rebuilds the values,
//! [`text::rebuilds_values`], and its attention reads per-head values for few queries, which
//! neither the caption's prefill nor its decode step does); a longer one runs the prefill's when
//! the caption's prompt has that many tokens too, as an image's rows give it, and after a
//! shorter prompt (a text question) those of a recorded follow-up of [`SPLIT_KEYS_BELOW`] tokens
//! (`tests/conversation.rs`).

use super::interrupt::Interrupt;
use super::kv_cache::KvCache;
use super::scratch::{Scratch, f32_buffer};
use super::{Model, text, vision};
use crate::device::{Gpu, now_ms};
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::argmax::Argmax;
use crate::kernels::attention::SPLIT_KEYS_BELOW;
use crate::kernels::embed::ImageFeatures;

/// New tokens of the short chat follow-up [`Model::prepare`] records after the caption's decode
/// step: any count from 2 to [`SPLIT_KEYS_BELOW`]` − 1` picks the same kernels.
pub const FOLLOW_UP_TOKENS: usize = 2;

/// What [`Model::prepare`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prepared {
    /// Pipelines it compiled (those compiled before it are not counted).
    pub pipelines: usize,
    /// Host milliseconds it took (the compilations and the recording).
    pub ms: f64,
}

/// New tokens of the chat follow-ups [`Model::prepare`] records after a `prompt_tokens`-token
/// prompt and its one generated token, each while the model's positions leave room for it: a
/// short one ([`FOLLOW_UP_TOKENS`]), and, after a prompt of fewer than [`SPLIT_KEYS_BELOW`]
/// tokens (a text question), one of [`SPLIT_KEYS_BELOW`], whose many queries take the kernels of
/// a long prompt's prefill, which the short prompt's did not compile.
fn follow_ups(prompt_tokens: usize, max_positions: usize) -> Vec<usize> {
    let long = (prompt_tokens < SPLIT_KEYS_BELOW).then_some(SPLIT_KEYS_BELOW);
    let mut rows = prompt_tokens + 1;
    let mut fitting = Vec::new();
    for tokens in std::iter::once(FOLLOW_UP_TOKENS).chain(long) {
        if rows + tokens <= max_positions {
            rows += tokens;
            fitting.push(tokens);
        }
    }
    fitting
}

impl Model {
    /// Compile the pipelines of a caption of `tiles` image tiles (0: a text prompt) whose
    /// prompt has `prompt_tokens` tokens, the image's rows among them, and that generates up to
    /// `max_new_tokens`, by recording its passes without running them (see the module
    /// documentation). Its passes get a cache of the caption's capacity (`prompt_tokens +
    /// max_new_tokens` rows, more if the follow-ups need them): kernels that choose by the
    /// capacity choose as the caption's will. The generation's own checks apply: a prompt without
    /// room for `max_new_tokens` is a typed error, as its generation would be.
    pub async fn prepare(
        &self,
        gpu: &Gpu,
        tiles: usize,
        prompt_tokens: usize,
        max_new_tokens: usize,
    ) -> Result<Prepared> {
        let (start, compiled) = (now_ms(), gpu.pipelines.compiled().len());
        let cfg = &self.config;
        let rows = tiles * cfg.image_seq_len();
        if prompt_tokens == 0 || prompt_tokens < rows {
            return Err(RuntimeError::Shape(format!(
                "a {prompt_tokens}-token prompt cannot hold the {rows} rows of {tiles} image tiles"
            )));
        }
        self.check_room(prompt_tokens, max_new_tokens.max(1))?;
        // Each pass in an encoder of its own, dropped unsubmitted once recorded (with it what
        // it bound), so the prepare holds no more at once than the caption will (but for the
        // follow-ups' cache rows and activations).
        let features = match tiles {
            0 => None,
            _ => {
                let pixels = f32_buffer(gpu, "pixel values", self.pixel_values_len(tiles)).await?;
                let encoder = &mut gpu.encoder();
                let never = &mut Interrupt::never();
                Some(vision::encode_image(gpu, encoder, never, cfg, &self.vision, &pixels, tiles).await?)
            }
        };
        let image =
            features.as_ref().map(|f| ImageFeatures { features: f, rows, token_id: cfg.image_token_id });
        let layout = self.text.cache_layout(cfg, self.cache_kind);
        let follow_ups = follow_ups(prompt_tokens, self.max_positions());
        let rows = prompt_tokens + max_new_tokens.max(1 + follow_ups.iter().sum::<usize>());
        let mut cache = KvCache::new(gpu, &layout, rows).await?;
        let vocab = cfg.text.vocab_size;
        let logits = f32_buffer(gpu, "logits", vocab).await?;
        self.record_text(gpu, &mut gpu.encoder(), &mut cache, prompt_tokens, image, &logits).await?;
        drop(features);
        let argmax = gpu.zeroed_buffer("argmax", 4).await?;
        {
            let encoder = &mut gpu.encoder();
            self.record_text(gpu, encoder, &mut cache, 1, None, &logits).await?;
            Argmax.encode(gpu, encoder, 1, vocab, &logits, &argmax).await?;
        }
        for tokens in follow_ups {
            self.record_text(gpu, &mut gpu.encoder(), &mut cache, tokens, None, &logits).await?;
        }
        // The kernel scratch the passes grew goes too, so the caption holds (and counts) what it
        // would have.
        gpu.drop_kernel_scratch();
        Ok(Prepared { pipelines: gpu.pipelines.compiled().len() - compiled, ms: now_ms() - start })
    }

    /// Record into `encoder` a text pass of `tokens` new tokens (zero ids, `image`'s rows among
    /// them) over `cache`, with activations of its own.
    async fn record_text(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        cache: &mut KvCache,
        tokens: usize,
        image: Option<ImageFeatures<'_>>,
        logits: &wgpu::Buffer,
    ) -> Result<()> {
        let ids = gpu.zeroed_buffer("prepared ids", (tokens * 4) as u64).await?;
        let (never, scratch) = (&mut Interrupt::never(), &mut Scratch::default());
        text::forward(
            gpu,
            encoder,
            never,
            scratch,
            &self.config,
            &self.text,
            cache,
            &ids,
            tokens,
            image,
            logits,
        )
        .await
    }
}
