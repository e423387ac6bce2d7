//! The engine: preprocessing, prompt, model and streaming detokenization behind one small API
//! that the native CLI and the web layer share.
//!
//! ```text
//! let engine = Engine::load(gpu, &model_data, tokenizer_json).await?;
//! let mut session = engine.start(request).await?;
//! while let Some(piece) = session.next(&engine).await? { print!("{}", piece.text) }
//! ```
//! The caller owns the loop, so it can stream, and abort between two tokens.

use pocketvlm_format::{Manifest, ModelData};
use pocketvlm_processor::{Message, Part, Preprocessor, Prompt, RgbImage, StreamDecoder};

use crate::device::Gpu;
use crate::error::Result;
use crate::model::sampling::SamplingOptions;
use crate::model::{Generator, Model};

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
}

impl Request {
    /// A single user turn: the image (if any) followed by `text`.
    pub fn caption(text: &str, image: Option<RgbImage>, max_new_tokens: usize) -> Self {
        let mut parts = Vec::new();
        if image.is_some() {
            parts.push(Part::Image);
        }
        parts.push(Part::text(text));
        Self {
            messages: vec![Message::new("user", parts)],
            image,
            split: None,
            max_new_tokens,
            sampling: SamplingOptions::default(),
        }
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
    decoder: StreamDecoder,
    pub prompt_ids: Vec<u32>,
    /// Logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    pub timings: Timings,
}

/// Milliseconds since an arbitrary origin (`performance.now()` in the browser).
pub fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
    }
}

impl Engine {
    /// Upload a verified model and build its tokenizer and preprocessor.
    pub async fn load(gpu: Gpu, data: &ModelData, tokenizer_json: &[u8]) -> Result<Self> {
        let manifest = data.manifest.clone();
        let prompt = Prompt::new(tokenizer_json, &manifest.tokenizer, manifest.processor.image_seq_len)?;
        let preprocessor = Preprocessor::new(&manifest.processor)?;
        let model = Model::load(&gpu, data).await?;
        Ok(Self { gpu, model, prompt, preprocessor, manifest })
    }

    /// Preprocess, encode the image, prefill the prompt.
    pub async fn start(&self, request: Request) -> Result<Session> {
        let t0 = now_ms();
        let text = self.prompt.render(&request.messages, true)?;
        let prepared = match &request.image {
            Some(image) => {
                let split = request.split.unwrap_or(self.preprocessor.default_split());
                Some(self.preprocessor.preprocess(image, split)?)
            }
            None => None,
        };
        let grids: Vec<_> = prepared.iter().map(|p| p.grid()).collect();
        let prompt_ids = self.prompt.encode(&text, &grids)?;
        let t1 = now_ms();
        let image = match &prepared {
            Some(p) => {
                let embedding = self.model.encode_image(&self.gpu, &p.pixel_values, p.n_tiles).await?;
                self.gpu.finish().await?;
                Some(embedding)
            }
            None => None,
        };
        let t2 = now_ms();
        let generator = Generator::start(
            &self.gpu,
            &self.model,
            &prompt_ids,
            image.as_ref(),
            request.max_new_tokens,
            request.sampling.clone(),
        )
        .await?;
        let prompt_logits = generator.logits(&self.gpu, &self.model).await?;
        let t3 = now_ms();
        Ok(Session {
            generator,
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

impl Session {
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

    pub fn is_finished(&self) -> bool {
        self.generator.is_finished()
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.generator.kv_cache_bytes()
    }
}
