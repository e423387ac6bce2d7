//! The classes JavaScript sees: [`Model`] (load, caption, chat, dispose) and [`Generation`] (one
//! streamed answer whose `next()` JavaScript calls token by token).

use std::cell::RefCell;
use std::rc::Rc;

use crate::fetch::check_signal;
use js_sys::{Function, Promise};
use pocketvlm_processor::{AlphaHandling, Message, RgbImage};
use pocketvlm_runtime::engine::{Conversation, Engine, Request, Session, now_ms};
use pocketvlm_runtime::model::{CacheKind, Stop};
use pocketvlm_runtime::{DeviceOptions, Gpu};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use web_sys::AbortSignal;

use crate::errors::WebError;
use crate::integrity::Pin;
use crate::js;
use crate::loader;
use crate::options::GenerateOptions;
use crate::progress::Progress;
use crate::usage::Usage;

#[wasm_bindgen(start)]
fn start() {
    #[cfg(debug_assertions)]
    console_error_panic_hook::set_once();
}

/// What [`Model::info`] reports about a loaded model.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    /// Every file came from the browser cache.
    loaded_from_cache: bool,
    cache_hits: usize,
    files: usize,
    downloaded_bytes: u64,
    cache_available: bool,
    weight_bytes: u64,
    adapter: String,
    shader_f16: bool,
    max_positions: usize,
    /// `dense` or the low-rank recipe that factored the model (`svd`, `qsvd`, `laser`, …).
    recipe: String,
    /// The low-bit scheme (`w8a8`, `w4a8`, `w4a4`), or `null` for a float model.
    bits: Option<String>,
    /// Bytes one token of context takes in the GPU's KV cache (the shared latent where the
    /// format allows it), and what the manifest counts for it (16-bit K/V).
    kv_bytes_per_token: u64,
    /// The KV cache's kind ([`CacheKind::name`]).
    kv_cache: &'static str,
    manifest_kv_bytes_per_token: Option<u64>,
}

/// State shared by a model and its generations.
struct Shared {
    /// `None` once disposed; each generation holds the engine it started on.
    engine: RefCell<Option<Rc<Engine>>>,
    /// The KV cache of the last chat turn, for the next one.
    conversation: RefCell<Option<Conversation>>,
    /// Where the model came from, to upload it again to a new device when its device is lost.
    source: Source,
}

/// How a model was loaded.
struct Source {
    base_url: String,
    options: OpenOptions,
    /// The verified `manifest.json`, so a reload fetches nothing that the cache holds.
    manifest: Vec<u8>,
}

/// How [`Model::open`] opens a model (`Model.load`'s options).
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Read the files from the browser's Cache API and keep them there.
    pub cache: bool,
    /// The sha256 `manifest.json` must have.
    pub pin: Option<Pin>,
    /// The most bytes of storage buffers the model's device may hold
    /// ([`DeviceOptions::memory_budget`]): more is an `OutOfMemoryError`.
    pub memory_budget: Option<u64>,
    /// The KV cache the model's generations keep ([`CacheKind`]).
    pub kv_cache: CacheKind,
    /// Compile a default caption's pipelines before the load resolves ([`prepare_caption`];
    /// JavaScript's default), so the first caption spends none of its time compiling kernels.
    /// It records a caption's passes, so a `memory_budget` too small for one fails the load.
    pub prepare: bool,
}

impl Shared {
    fn engine(&self) -> Result<Rc<Engine>, WebError> {
        self.engine.borrow().clone().ok_or_else(|| WebError::abort("the model was disposed"))
    }

    /// The engine for a new generation: the current one, or — when its device was lost (a driver
    /// reset, a GPU process crash, `destroy()`) — the model uploaded again to a new device from
    /// the browser cache (the network only for files the cache lacks). The generation that was
    /// running when the device was lost failed with `DeviceLostError`; a chat's cache is gone, so
    /// the next turn computes the conversation whole.
    async fn live_engine(&self) -> Result<Rc<Engine>, WebError> {
        let engine = self.engine()?;
        if engine.gpu.check_lost().is_ok() {
            return Ok(engine);
        }
        self.conversation.borrow_mut().take();
        drop(engine);
        let source = &self.source;
        let manifest = Some(source.manifest.as_slice());
        let (engine, _) = upload(&source.base_url, &source.options, manifest, None, &|_| ()).await?;
        let engine = Rc::new(engine);
        // Disposed meanwhile: the reload is dropped with it.
        let mut slot = self.engine.borrow_mut();
        if slot.is_none() {
            return Err(WebError::abort("the model was disposed"));
        }
        *slot = Some(engine.clone());
        Ok(engine)
    }
}

/// A new device, the model's files (`manifest`: its bytes when they are already at hand) and the
/// engine uploaded from them; the files are dropped once on the GPU.
async fn upload(
    base_url: &str,
    options: &OpenOptions,
    manifest: Option<&[u8]>,
    signal: Option<&AbortSignal>,
    on_progress: &dyn Fn(&Progress),
) -> Result<(Engine, loader::LoadReport), WebError> {
    // WebGPU first: a page without it learns so before downloading anything.
    let gpu =
        Gpu::new(&DeviceOptions { memory_budget: options.memory_budget, ..DeviceOptions::default() }).await?;
    let (fetched, load) =
        loader::load(base_url, options.cache, options.pin.as_ref(), manifest, signal, on_progress).await?;
    check_signal(signal, "loading the model")?;
    on_progress(&load.tally.uploading());
    let mut engine = Engine::load(gpu, &fetched.data, &fetched.tokenizer).await?;
    engine.model.cache_kind = options.kv_cache;
    if options.prepare {
        check_signal(signal, "loading the model")?;
        on_progress(&load.tally.preparing());
        prepare_caption(&engine).await?;
    }
    Ok((engine, load))
}

/// Compile the pipelines of a caption with the default options of a square picture one tile
/// wide ([`Engine::prepare`]: recorded, not run); a caption of a picture that splits into more
/// tiles, or with a longer prompt, may still compile a variant or two of its own.
async fn prepare_caption(engine: &Engine) -> Result<(), WebError> {
    let side = engine.model.config.vision.image_size;
    let options = GenerateOptions::default();
    let messages = Request::caption_messages(options.caption_prompt(), true);
    engine.prepare_for(&messages, Some((side, side)), options.split_image, options.max_new_tokens()?).await?;
    Ok(())
}

/// A loaded model.
#[wasm_bindgen]
pub struct Model {
    shared: Rc<Shared>,
    info: ModelInfo,
}

impl Model {
    /// What `Model.load` does, for Rust callers.
    pub async fn open(
        base_url: &str,
        options: &OpenOptions,
        signal: Option<&AbortSignal>,
        on_progress: &dyn Fn(&Progress),
    ) -> Result<Model, WebError> {
        let (engine, load) = upload(base_url, options, None, signal, on_progress).await?;
        let ready = load.tally.ready();
        on_progress(&ready);
        let info = ModelInfo {
            loaded_from_cache: load.tally.all_cached(),
            cache_hits: ready.cache_hits,
            files: ready.files_total,
            downloaded_bytes: ready.loaded_bytes,
            cache_available: load.cache_available,
            weight_bytes: engine.model.weight_bytes(),
            adapter: match engine.gpu.adapter.name.as_str() {
                "" => format!("{:?}", engine.gpu.adapter.backend),
                name => format!("{name} ({:?})", engine.gpu.adapter.backend),
            },
            shader_f16: engine.gpu.caps.shader_f16,
            max_positions: engine.model.max_positions(),
            recipe: engine.manifest.compression.as_ref().map_or_else(|| "dense".into(), |c| c.recipe.clone()),
            bits: engine.manifest.quantization.as_ref().map(|q| q.scheme.clone()),
            kv_bytes_per_token: engine.model.kv_bytes_per_token(),
            kv_cache: engine.model.cache_kind.name(),
            manifest_kv_bytes_per_token: engine
                .manifest
                .compression
                .as_ref()
                .map(|c| c.kv_cache.bytes_per_token),
        };
        let source =
            Source { base_url: base_url.to_string(), options: options.clone(), manifest: load.manifest };
        let shared =
            Shared { engine: RefCell::new(Some(Rc::new(engine))), conversation: RefCell::new(None), source };
        Ok(Model { shared: Rc::new(shared), info })
    }

    /// Another handle on the same model (for a future that outlives the borrow of `self`).
    fn handle(&self) -> Model {
        Model { shared: self.shared.clone(), info: self.info.clone() }
    }

    /// Destroy the GPU device under the model, as a driver reset or a crashed GPU process would
    /// lose it: the generation running on it fails with `DeviceLostError`, and the next one
    /// starts on a new device with the model uploaded again from the browser cache. For tests.
    pub fn destroy_device(&self) {
        if let Ok(engine) = self.shared.engine() {
            engine.gpu.device.destroy();
        }
    }

    /// Whether every file of the load came from the browser cache.
    pub fn loaded_from_cache(&self) -> bool {
        self.info.loaded_from_cache
    }

    /// What `caption` does, for Rust callers.
    pub async fn start_caption(
        &self,
        rgba: &[u8],
        width: u32,
        height: u32,
        options: GenerateOptions,
        stop: Stop,
    ) -> Result<Generation, WebError> {
        let start = now_ms();
        let mut request = options.caption_request(rgb(rgba, width, height)?)?;
        request.stop = stop;
        Generation::start(self.shared.clone(), request, false, start).await
    }

    /// What `chat` does, for Rust callers.
    pub async fn start_chat(
        &self,
        messages: Vec<Message>,
        image: Option<(&[u8], u32, u32)>,
        options: GenerateOptions,
        stop: Stop,
    ) -> Result<Generation, WebError> {
        let start = now_ms();
        let image = image.map(|(rgba, w, h)| rgb(rgba, w, h)).transpose()?;
        let mut request = options.chat_request(messages, image)?;
        request.stop = stop;
        Generation::start(self.shared.clone(), request, true, start).await
    }
}

fn rgb(rgba: &[u8], width: u32, height: u32) -> Result<RgbImage, WebError> {
    Ok(RgbImage::from_rgba(width as usize, height as usize, rgba, AlphaHandling::CompositeOnWhite)?)
}

/// The runtime's stop for an optional `AbortSignal`.
fn stop(signal: Option<AbortSignal>) -> Stop {
    signal.map_or_else(Stop::never, |signal| Stop::when(move || signal.aborted()))
}

fn options(value: JsValue) -> Result<GenerateOptions, WebError> {
    if value.is_undefined() || value.is_null() {
        return Ok(GenerateOptions::default());
    }
    serde_wasm_bindgen::from_value(value).map_err(|e| WebError::invalid(format!("options: {e}")))
}

fn promise<F>(future: F) -> Promise
where
    F: std::future::Future<Output = Result<JsValue, WebError>> + 'static,
{
    future_to_promise(async move { future.await.map_err(js::error) })
}

#[wasm_bindgen]
impl Model {
    /// `Model.load(baseUrl, { cache = true, onProgress, signal, integrity, memoryBudget, kvCache,
    /// prepare = true })`: open the GPU, fetch and verify the model directory at `baseUrl` and upload it. `onProgress`
    /// receives progress events; `signal` (an `AbortSignal`) stops the download (`AbortError`);
    /// `integrity` (`"sha256-<base64>"`, see [`Pin`]) pins `manifest.json`, and so the whole model
    /// (`IntegrityError` when it differs); `memoryBudget` (bytes) caps what the model's device may
    /// hold (`OutOfMemoryError` for a load or a generation that would need more); `kvCache`
    /// (`"latent"`, the default, `"latent-keys"` or `"plain"`, [`CacheKind`]) picks the KV cache;
    /// `prepare` (default true) compiles a caption's GPU kernels before the load resolves
    /// (a `prepare` progress event), so the first caption does not wait for them.
    pub fn load(base_url: String, options: JsValue) -> Promise {
        let get = |name: &str| {
            js_sys::Reflect::get(&options, &JsValue::from_str(name))
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_null())
        };
        let cache = get("cache").is_none_or(|v| v.is_truthy());
        let on_progress: Option<Function> = get("onProgress").and_then(|v| v.dyn_into().ok());
        let signal: Option<AbortSignal> = get("signal").and_then(|v| v.dyn_into().ok());
        let pin = match get("integrity") {
            Some(v) => v.as_string().ok_or_else(|| WebError::invalid("integrity must be a string")).map(Some),
            None => Ok(None),
        };
        let memory_budget = match get("memoryBudget") {
            Some(v) => match v.as_f64() {
                Some(b) if b.is_finite() && b >= 0.0 && b.fract() == 0.0 && b <= 2f64.powi(53) => {
                    Ok(Some(b as u64))
                }
                _ => Err(WebError::invalid("memoryBudget must be a whole number of bytes")),
            },
            None => Ok(None),
        };
        let prepare = get("prepare").is_none_or(|v| v.is_truthy());
        let kv_cache = match get("kvCache") {
            Some(v) => CacheKind::from_name(&v.as_string().unwrap_or_default())
                .map_err(|names| WebError::invalid(format!("kvCache must be {names}"))),
            None => Ok(CacheKind::default()),
        };
        promise(async move {
            let pin = pin?.as_deref().map(Pin::parse).transpose()?;
            let (memory_budget, kv_cache) = (memory_budget?, kv_cache?);
            let options = OpenOptions { cache, pin, memory_budget, kv_cache, prepare };
            let report = |p: &Progress| {
                if let Some(f) = &on_progress {
                    // A throwing progress callback does not stop the load.
                    let _ = f.call1(&JsValue::NULL, &js::to_js(p));
                }
            };
            Ok(Model::open(&base_url, &options, signal.as_ref(), &report).await?.into())
        })
    }

    /// Facts about the loaded model (cache use, weight bytes, adapter).
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> JsValue {
        js::to_js(&self.info)
    }

    /// Caption an image given as straight-alpha RGBA bytes; resolves to a [`Generation`] once
    /// the prompt is processed. `signal` (an `AbortSignal`) stops the vision tower and the
    /// prefill between their parts (`AbortError`); the model stays usable.
    pub fn caption(
        &self,
        rgba: Vec<u8>,
        width: u32,
        height: u32,
        options: JsValue,
        signal: Option<AbortSignal>,
    ) -> Promise {
        let (model, options) = (self.handle(), self::options(options));
        promise(
            async move { Ok(model.start_caption(&rgba, width, height, options?, stop(signal)).await?.into()) },
        )
    }

    /// Answer the last user turn of `messages` (`[{ role, content }]`, content a string or
    /// `[{ type: "image" } | { type: "text", text }]`), reusing the KV cache of the previous
    /// chat turn for the part of the conversation it already holds. `rgba` is the image of the
    /// conversation's image part, if it has one. `signal` as for `caption` (a stopped turn
    /// leaves no cache behind: the next computes the conversation whole).
    #[allow(clippy::too_many_arguments)]
    pub fn chat(
        &self,
        messages: JsValue,
        rgba: Option<Vec<u8>>,
        width: u32,
        height: u32,
        options: JsValue,
        signal: Option<AbortSignal>,
    ) -> Promise {
        let messages: Result<Vec<Message>, WebError> =
            serde_wasm_bindgen::from_value(messages).map_err(|e| WebError::invalid(format!("messages: {e}")));
        let (model, options) = (self.handle(), self::options(options));
        promise(async move {
            let image = rgba.as_deref().map(|bytes| (bytes, width, height));
            Ok(model.start_chat(messages?, image, options?, stop(signal)).await?.into())
        })
    }

    /// Free the GPU memory (once running steps finish). Later calls fail with `AbortError`.
    pub fn dispose(&self) {
        self.shared.conversation.borrow_mut().take();
        self.shared.engine.borrow_mut().take();
    }
}

/// The state of a generation between two `next()` calls.
struct State {
    /// `None` while a step runs, and once finished or closed.
    session: Option<Session>,
    running: bool,
    finished: bool,
    closed: bool,
    generated: Vec<u32>,
    prompt_ids: Vec<u32>,
    usage: Usage,
}

/// One streamed answer.
#[wasm_bindgen]
pub struct Generation {
    shared: Rc<Shared>,
    /// The engine (and so the device) this generation's session lives on.
    engine: Rc<Engine>,
    state: Rc<RefCell<State>>,
    /// A chat turn hands its KV cache back to the model when it ends.
    chat: bool,
    started_ms: f64,
}

impl Generation {
    async fn start(
        shared: Rc<Shared>,
        request: Request,
        chat: bool,
        started_ms: f64,
    ) -> Result<Self, WebError> {
        let engine = shared.live_engine().await?;
        let previous = if chat { shared.conversation.borrow_mut().take() } else { None };
        let session = engine.resume(request, previous).await?;
        let state = State {
            prompt_ids: session.prompt_ids.clone(),
            usage: usage(&engine, &session, 0.0),
            session: Some(session),
            running: false,
            finished: false,
            closed: false,
            generated: Vec::new(),
        };
        Ok(Self { shared, engine, state: Rc::new(RefCell::new(state)), chat, started_ms })
    }

    /// End the generation: keep a chat turn's cache for the next turn (if the model still runs
    /// on the engine it was computed on), free a caption's.
    fn finish(&self, state: &mut State) {
        let current = self.shared.engine.borrow().as_ref().is_some_and(|e| Rc::ptr_eq(e, &self.engine));
        if let Some(session) = state.session.take()
            && self.chat
            && current
        {
            *self.shared.conversation.borrow_mut() = Some(session.into_conversation());
        }
    }
}

impl Generation {
    /// What `next()` does, for Rust callers: `None` once the answer is complete or closed.
    pub async fn step(&self) -> Result<Option<String>, WebError> {
        let (state, started) = (&self.state, self.started_ms);
        let mut session = {
            let mut s = state.borrow_mut();
            if s.finished || s.closed {
                return Ok(None);
            }
            if s.running {
                return Err(WebError::invalid("next() was called before the previous call finished"));
            }
            s.session.take().ok_or_else(|| WebError::abort("the generation has ended"))?
        };
        if let Err(e) = self.shared.engine() {
            state.borrow_mut().finished = true;
            return Err(e);
        }
        let engine = &self.engine;
        state.borrow_mut().running = true;
        let step = session.next(engine).await;
        let mut s = state.borrow_mut();
        s.running = false;
        let piece = match step {
            Ok(piece) => piece,
            Err(e) => {
                s.finished = true;
                return Err(e.into());
            }
        };
        let ttft = if s.generated.is_empty() { now_ms() - started } else { s.usage.time_to_first_token_ms };
        if let Some(p) = &piece {
            s.generated.push(p.id);
        }
        s.usage = usage(engine, &session, ttft);
        s.session = Some(session);
        if piece.is_none() {
            s.finished = true;
        }
        if s.finished || s.closed {
            self.finish(&mut s);
        }
        Ok(piece.filter(|_| !s.closed).map(|p| p.text))
    }

    /// The generated token ids so far.
    pub fn generated_ids(&self) -> Vec<u32> {
        self.state.borrow().generated.clone()
    }

    /// Usage so far.
    pub fn current_usage(&self) -> Usage {
        self.state.borrow().usage.clone()
    }
}

fn usage(engine: &Engine, session: &Session, ttft_ms: f64) -> Usage {
    Usage::new(
        session.prompt_ids.len(),
        session.reused_tokens(),
        session.generated().len(),
        ttft_ms,
        &session.timings,
        &session.memory(engine),
    )
}

#[wasm_bindgen]
impl Generation {
    /// The next piece of text (possibly empty while a character is incomplete), or `undefined`
    /// once the answer is complete. One call at a time.
    pub fn next(&self) -> Promise {
        let this = Generation {
            shared: self.shared.clone(),
            engine: self.engine.clone(),
            state: self.state.clone(),
            chat: self.chat,
            started_ms: self.started_ms,
        };
        promise(async move { Ok(this.step().await?.map_or(JsValue::UNDEFINED, |t| JsValue::from_str(&t))) })
    }

    /// Token counts, latency, throughput and GPU memory so far.
    pub fn usage(&self) -> JsValue {
        js::to_js(&self.current_usage())
    }

    /// The generated token ids so far.
    pub fn ids(&self) -> Vec<u32> {
        self.generated_ids()
    }

    /// The prompt's token ids.
    #[wasm_bindgen(js_name = promptIds)]
    pub fn prompt_ids(&self) -> Vec<u32> {
        self.state.borrow().prompt_ids.clone()
    }

    /// Whether generation reached its end (end of utterance or `maxNewTokens`).
    #[wasm_bindgen(getter)]
    pub fn done(&self) -> bool {
        self.state.borrow().finished
    }

    /// Stop generating (a running step completes first). A chat turn's KV cache goes back to
    /// the model for the next turn; a caption's is freed.
    pub fn close(&self) {
        let mut s = self.state.borrow_mut();
        s.closed = true;
        self.finish(&mut s);
    }
}
