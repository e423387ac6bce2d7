//! The engine: preprocessing, prompt, model and streaming detokenization behind one small API
//! that the native CLI and the web layer share.
//!
//! ```text
//! let engine = Engine::load(gpu, &model_data, tokenizer_json).await?;
//! let mut session = engine.start(request).await?;
//! while let Some(piece) = session.next(&engine).await? { print!("{}", piece.text) }
//! ```
//! The caller owns the loop, so it can stream, and abort between two tokens; [`Request::stop`]
//! ends the vision tower and the prefill between their parts.

use pocketvlm_format::{Manifest, ModelData};
use pocketvlm_processor::{ImageGrid, Message, Part, Preprocessor, Prompt, RgbImage, StreamDecoder};

use crate::device::Gpu;
use crate::encoder::RecordProfile;
use crate::error::{Result, RuntimeError};
use crate::model::sampling::SamplingOptions;
use crate::model::{DecodeProfiling, DecodeRecording, Generator, MemoryUsage, Model, Prepared, Stop};

/// A loaded model with its tokenizer and image preprocessor.
pub struct Engine {
    pub gpu: Gpu,
    pub model: Model,
    pub prompt: Prompt,
    pub preprocessor: Preprocessor,
    pub manifest: Manifest,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Request {
    /// Chat messages; at most one [`Part::Image`] in total, matching `image`.
    pub messages: Vec<Message>,
    pub image: Option<RgbImage>,
    /// Split the image into tiles (`None`: the checkpoint's default).
    pub split: Option<bool>,
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Ends the vision tower and the prefill between their parts
    /// ([`Interrupt`](crate::model::Interrupt)); the decode loop is the caller's, which stops
    /// between two tokens.
    pub stop: Stop,
}

impl Request {
    /// A single user turn: the image (if any) followed by `text`.
    pub fn caption(text: &str, image: Option<RgbImage>, max_new_tokens: usize) -> Self {
        Self {
            messages: Self::caption_messages(text, image.is_some()),
            image,
            split: None,
            max_new_tokens,
            sampling: SamplingOptions::default(),
            stop: Stop::never(),
        }
    }

    /// The messages of [`Request::caption`]: one user turn, an image part (`with_image`)
    /// followed by `text`.
    pub fn caption_messages(text: &str, with_image: bool) -> Vec<Message> {
        let image = with_image.then_some(Part::Image);
        vec![Message::new("user", image.into_iter().chain([Part::text(text)]).collect())]
    }
}

/// Wall-clock milliseconds of each stage (GPU stages include waiting for the GPU).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// One streamed token.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub id: u32,
    /// Text completed by this token (may be empty while a multi-byte character is incomplete).
    pub text: String,
}

/// An in-progress generation.
pub struct Session {
    generator: Generator,
    /// The image behind the prompt's `<image>` tokens and whether it was split.
    image: Option<(RgbImage, bool)>,
    decoder: StreamDecoder,
    pub prompt_ids: Vec<u32>,
    /// Logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    pub timings: Timings,
    /// GPU time of the vision tower by kind of work, when [`Model::time_passes`] (else empty).
    pub vision_gpu_time: RecordProfile,
}

pub use crate::device::now_ms;

impl Engine {
    /// Upload a verified model and build its tokenizer and preprocessor.
    pub async fn load(gpu: Gpu, data: &ModelData, tokenizer_json: &[u8]) -> Result<Self> {
        let manifest = data.manifest.clone();
        let prompt = Prompt::new(tokenizer_json, &manifest.tokenizer, manifest.processor.image_seq_len)?;
        let preprocessor = Preprocessor::new(&manifest.processor)?;
        let model = Model::load(&gpu, data).await?;
        Ok(Self { gpu, model, prompt, preprocessor, manifest })
    }

    /// Compile the pipelines a request like `request` uses (its tiles, its prompt's length),
    /// before it is made: the caption then spends none of its time to first token compiling
    /// kernels ([`Model::prepare`]; nothing runs, no state changes). Its image's pixels are not
    /// read, only its size.
    pub async fn prepare(&self, request: &Request) -> Result<Prepared> {
        let size = request.image.as_ref().map(|image| (image.width(), image.height()));
        self.prepare_for(&request.messages, size, request.split, request.max_new_tokens).await
    }

    /// [`Engine::prepare`] for a request of `messages` with an image of `image_size` (width,
    /// height; `None` without an image) split as `split` asks, generating up to
    /// `max_new_tokens`, without the image itself.
    pub async fn prepare_for(
        &self,
        messages: &[Message],
        image_size: Option<(usize, usize)>,
        split: Option<bool>,
        max_new_tokens: usize,
    ) -> Result<Prepared> {
        let split = split.unwrap_or(self.preprocessor.default_split());
        let grids = match image_size {
            Some((width, height)) => vec![self.preprocessor.grid_for(width, height, split)?],
            None => Vec::new(),
        };
        let prompt_ids = self.prompt_ids(messages, &grids)?;
        let tiles = grids.iter().map(|g| g.n_tiles()).sum();
        self.model.prepare(&self.gpu, tiles, prompt_ids.len(), max_new_tokens).await
    }

    /// The prompt's token ids: `messages` rendered by the chat template with the generation
    /// prompt, each image part expanded for its grid.
    fn prompt_ids(&self, messages: &[Message], grids: &[ImageGrid]) -> Result<Vec<u32>> {
        let text = self.prompt.render(messages, true)?;
        Ok(self.prompt.encode(&text, grids)?)
    }

    /// Preprocess, encode the image, prefill the prompt.
    pub async fn start(&self, request: Request) -> Result<Session> {
        self.resume(request, None).await
    }

    /// Like [`Engine::start`], reusing the KV cache of an earlier generation of this engine
    /// (`previous`) for the longest prefix of the new prompt that it holds: for a conversation,
    /// `request.messages` is the whole conversation so far and only the new turns are computed.
    ///
    /// When `request.stop` ends the call, it fails with [`RuntimeError::Aborted`] and
    /// `previous` is dropped: nothing of the stopped pass is kept, and the engine answers the
    /// next call as if this one had not been made (computing its prompt whole). When it fails
    /// with [`RuntimeError::OutOfMemory`], the device also lets go of its kernel scratch (which
    /// the failed pass may have grown; the next pass grows it again), so it holds no more than
    /// before the call.
    pub async fn resume(&self, request: Request, previous: Option<Conversation>) -> Result<Session> {
        let session = self.process_prompt(request, previous).await;
        if let Err(RuntimeError::OutOfMemory(_)) = &session {
            self.gpu.drop_kernel_scratch();
        }
        session
    }

    /// [`Engine::resume`]'s passes: preprocess, encode the image, prefill the prompt.
    async fn process_prompt(&self, request: Request, previous: Option<Conversation>) -> Result<Session> {
        if request.stop.requested() {
            return Err(RuntimeError::Aborted("before the prompt was processed".into()));
        }
        let t0 = now_ms();
        let split = request.split.unwrap_or(self.preprocessor.default_split());
        let prepared = match &request.image {
            Some(image) => Some(self.preprocessor.preprocess(image, split)?),
            None => None,
        };
        let grids: Vec<_> = prepared.iter().map(|p| p.grid()).collect();
        let prompt_ids = self.prompt_ids(&request.messages, &grids)?;
        let image_key = request.image.map(|image| (image, split));
        let previous = previous.map(|p| {
            let keep = p.generator.reusable_prefix(&self.model, &prompt_ids, p.image == image_key);
            (p.generator, keep)
        });
        let keep = previous.as_ref().map_or(0, |p| p.1);
        let t1 = now_ms();
        let image_token = self.model.config.image_token_id;
        let image = match &prepared {
            Some(p) if prompt_ids[keep..].contains(&image_token) => {
                let embedding =
                    self.model.encode_image(&self.gpu, &p.pixel_values, p.n_tiles, &request.stop).await?;
                self.gpu.finish().await?;
                Some(embedding)
            }
            _ => None,
        };
        let t2 = now_ms();
        let (gpu, model, max_new, sampling, stop) =
            (&self.gpu, &self.model, request.max_new_tokens, request.sampling.clone(), &request.stop);
        let generator = match previous {
            Some((generator, keep)) => {
                generator
                    .resume(gpu, model, &prompt_ids, keep, image.as_ref(), max_new, sampling, stop)
                    .await?
            }
            None => {
                Generator::start(gpu, model, &prompt_ids, image.as_ref(), max_new, sampling, stop).await?
            }
        };
        let prompt_logits = generator.logits(&self.gpu, &self.model).await?;
        let t3 = now_ms();
        let vision_gpu_time = image.map(|i| i.gpu_time).unwrap_or_default();
        Ok(Session {
            vision_gpu_time,
            generator,
            image: image_key,
            decoder: self.prompt.stream_decoder(true),
            prompt_ids,
            prompt_logits,
            timings: Timings {
                preprocess_ms: t1 - t0,
                vision_ms: t2 - t1,
                prefill_ms: t3 - t2,
                decode_ms: 0.0,
            },
        })
    }
}

/// A finished or interrupted generation kept for its KV cache, which the next
/// [`Engine::resume`] of the same engine reuses.
pub struct Conversation {
    generator: Generator,
    image: Option<(RgbImage, bool)>,
}

impl Conversation {
    /// The tokens whose keys and values the cache holds.
    pub fn cached_tokens(&self) -> &[u32] {
        self.generator.cached_tokens()
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.generator.kv_cache_bytes()
    }
}

impl Session {
    /// Stop here and keep the KV cache for the next turn.
    pub fn into_conversation(self) -> Conversation {
        Conversation { generator: self.generator, image: self.image }
    }

    /// Prompt tokens taken from an earlier generation's cache instead of being computed.
    pub fn reused_tokens(&self) -> usize {
        self.generator.reused_tokens()
    }

    /// The next token and the text it completes; `None` when generation has finished.
    pub async fn next(&mut self, engine: &Engine) -> Result<Option<Piece>> {
        let t0 = now_ms();
        let token = self.generator.next_token(&engine.gpu, &engine.model).await?;
        self.timings.decode_ms += now_ms() - t0;
        let Some(id) = token else { return Ok(None) };
        let mut text = self.decoder.step(&engine.prompt, id)?.unwrap_or_default();
        if self.generator.is_finished()
            && let Some(rest) = self.decoder.finish(&engine.prompt)?
        {
            text.push_str(&rest);
        }
        Ok(Some(Piece { id, text }))
    }

    pub fn generated(&self) -> &[u32] {
        self.generator.generated()
    }

    /// Teacher forcing: take `id` as the next token instead of choosing one (see
    /// [`Generator::force_token`]); [`Session::logits`] then reads the logits it was forced at.
    /// The streamed text is not advanced.
    pub async fn force(&mut self, engine: &Engine, id: u32) -> Result<()> {
        let t0 = now_ms();
        self.generator.force_token(&engine.gpu, &engine.model, id).await?;
        self.timings.decode_ms += now_ms() - t0;
        Ok(())
    }

    /// The logits the last token was chosen from (after [`Engine::start`]: the last prompt
    /// position's).
    pub async fn logits(&self, engine: &Engine) -> Result<Vec<f32>> {
        self.generator.logits(&engine.gpu, &engine.model).await
    }

    pub fn is_finished(&self) -> bool {
        self.generator.is_finished()
    }

    /// Host-side cost of the decode steps so far (dispatches, recording time).
    pub fn decode_recording(&self) -> DecodeRecording {
        self.generator.decode_recording()
    }

    /// Host recording time of the decode steps after the second, by kind of work.
    pub fn decode_profile(&self) -> &RecordProfile {
        self.generator.decode_profile()
    }

    /// Profile the decode steps after the second ([`Generator::profile_decode`]).
    pub fn profile_decode(&mut self, profiling: DecodeProfiling) {
        self.generator.profile_decode(profiling);
    }

    /// GPU time of the decode steps timed so far, by kind of work.
    pub fn decode_gpu_time(&self) -> &RecordProfile {
        self.generator.decode_gpu_time()
    }

    /// GPU time of the prefill by kind of work, when [`Model::time_passes`] (else empty).
    pub fn prefill_gpu_time(&self) -> &RecordProfile {
        self.generator.prefill_gpu_time()
    }

    /// Host time recording the prefill by kind of work, when [`Model::time_passes`] (else empty).
    pub fn prefill_record_time(&self) -> &RecordProfile {
        self.generator.prefill_record_time()
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.generator.kv_cache_bytes()
    }

    /// GPU memory of the model and this generation so far.
    pub fn memory(&self, engine: &Engine) -> MemoryUsage {
        self.generator.memory(&engine.model)
    }
}
