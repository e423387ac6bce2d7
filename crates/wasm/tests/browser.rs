//! The browser API end to end in headless Chromium (WebGPU) on the tiny fixture, served by
//! `cargo xtask test` (whose server's URL arrives at build time in `POCKETVLM_TEST_SERVER`):
//! load with progress events and the cache, greedy ids equal to transformers' for an image and
//! for text conversations, stopping mid-stream, and a corrupted shard.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

use pocketvlm_processor::{Message, decode_image};
use pocketvlm_runtime::model::Stop;
use pocketvlm_test_support::{ids, server};
use pocketvlm_wasm::fetch::{fetch_bytes, fetch_manifest, file_url};
use pocketvlm_wasm::options::GenerateOptions;
use pocketvlm_wasm::progress::{Phase, Progress};
use pocketvlm_wasm::shard_cache::{ShardCache, key};
use pocketvlm_wasm::{Generation, Model, OpenOptions};
use serde_json::Value;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const COFFEE: &[u8] = include_bytes!("../../../tests/fixtures/images/coffee.png");
const COFFEE_NOSPLIT: &str = include_str!("../../../tests/fixtures/tiny/expected/coffee_nosplit.json");
const TEXT_CHAT: &str = include_str!("../../../tests/fixtures/tiny/expected/text_chat.json");
const TEXT_MULTITURN: &str = include_str!("../../../tests/fixtures/tiny/expected/text_multiturn.json");
const CONFIG: &str = include_str!("../../../tests/fixtures/tiny/config.json");

fn model_url() -> String {
    format!("{}/model/tiny", server())
}

/// Open with the browser cache.
fn cached() -> OpenOptions {
    OpenOptions { cache: true, ..OpenOptions::default() }
}

fn case(json: &str) -> Value {
    serde_json::from_str(json).unwrap()
}

/// The fixture's image as straight RGBA, with its size.
fn coffee_rgba() -> (Vec<u8>, u32, u32) {
    let rgb = decode_image(COFFEE).unwrap();
    let rgba = rgb.as_bytes().chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    (rgba, rgb.width() as u32, rgb.height() as u32)
}

/// Tokens generated where a prefix of the fixture's greedy ids suffices (SwiftShader is slow).
const SHORT: usize = 6;

/// Options that reproduce a fixture case: its question, split and token budget (`None`: the
/// fixture's), greedy.
fn options_for(exp: &Value, prompt: Option<&str>, max_new_tokens: Option<usize>) -> GenerateOptions {
    GenerateOptions {
        prompt: prompt.map(str::to_owned),
        max_new_tokens: max_new_tokens.map(|n| n as f64).or(exp["max_new_tokens"].as_f64()),
        split_image: exp["do_image_splitting"].as_bool(),
        ..GenerateOptions::default()
    }
}

async fn drain(generation: &Generation) -> String {
    let mut text = String::new();
    while let Some(piece) = generation.step().await.unwrap() {
        text.push_str(&piece);
    }
    text
}

async fn caption_coffee(model: &Model, max_new_tokens: Option<usize>) -> Generation {
    let exp = case(COFFEE_NOSPLIT);
    let (rgba, w, h) = coffee_rgba();
    let options = options_for(&exp, Some("What is in the cup?"), max_new_tokens);
    model.start_caption(&rgba, w, h, options, Stop::never()).await.unwrap()
}

fn messages(exp: &Value) -> Vec<Message> {
    serde_json::from_value(exp["messages"].clone()).unwrap()
}

#[wasm_bindgen_test]
async fn load_caption_stop_and_chat_match_transformers() {
    let events = RefCell::new(Vec::<Progress>::new());
    let model =
        Model::open(&model_url(), &OpenOptions::default(), None, &|p| events.borrow_mut().push(p.clone()))
            .await
            .unwrap();

    let events = events.into_inner();
    assert_eq!(events.first().map(|e| e.phase), Some(Phase::Manifest));
    assert_eq!(events.last().map(|e| e.phase), Some(Phase::Ready));
    let files: Vec<&Progress> = events.iter().filter(|e| e.phase == Phase::File).collect();
    let last = events.last().unwrap();
    assert_eq!(files.len(), last.files_total);
    assert!(files.iter().all(|e| e.from_cache == Some(false) && e.file.is_some()));
    assert!(files.windows(2).all(|w| w[0].loaded_bytes < w[1].loaded_bytes));
    assert_eq!(last.loaded_bytes, last.total_bytes);
    assert!(!model.loaded_from_cache());

    // The caption streams transformers' greedy ids and text.
    let exp = case(COFFEE_NOSPLIT);
    let generation = caption_coffee(&model, None).await;
    assert_eq!(generation.prompt_ids(), ids(&exp["prompt_ids"]));
    let text = drain(&generation).await;
    assert_eq!(generation.generated_ids(), ids(&exp["generated_ids"]));
    assert_eq!(text, exp["generated_text_skip_special"].as_str().unwrap());
    let usage = generation.current_usage();
    assert_eq!((usage.prompt_tokens, usage.generated_tokens), (33, 24));
    assert!(usage.time_to_first_token_ms > 0.0 && usage.decode_tokens_per_second > 0.0);
    assert!(usage.kv_cache_bytes > 0 && usage.weight_bytes > 0 && usage.gpu_bytes > usage.weight_bytes);

    // Stopped after three tokens, then the same caption again: the model is unharmed.
    let generation = caption_coffee(&model, None).await;
    for _ in 0..3 {
        assert!(generation.step().await.unwrap().is_some());
    }
    generation.close();
    assert_eq!(generation.step().await.unwrap(), None);
    assert_eq!(generation.generated_ids().len(), 3);
    let again = caption_coffee(&model, Some(SHORT)).await;
    drain(&again).await;
    assert_eq!(again.generated_ids(), ids(&exp["generated_ids"])[..SHORT]);

    // A text chat, then a second turn that reuses the first turn's KV cache.
    let chat = case(TEXT_CHAT);
    let generation = model
        .start_chat(messages(&chat), None, options_for(&chat, None, Some(SHORT)), Stop::never())
        .await
        .unwrap();
    drain(&generation).await;
    assert_eq!(generation.generated_ids(), ids(&chat["generated_ids"])[..SHORT]);

    let multi = case(TEXT_MULTITURN);
    let mut first_turn = messages(&multi);
    first_turn.truncate(1);
    let generation =
        model.start_chat(first_turn, None, options_for(&multi, None, Some(2)), Stop::never()).await.unwrap();
    let first_prompt = generation.prompt_ids().len();
    generation.step().await.unwrap();
    generation.close();
    let generation = model
        .start_chat(messages(&multi), None, options_for(&multi, None, Some(SHORT)), Stop::never())
        .await
        .unwrap();
    drain(&generation).await;
    assert_eq!(generation.generated_ids(), ids(&multi["generated_ids"])[..SHORT]);
    assert!(generation.current_usage().reused_prompt_tokens >= first_prompt);

    // A budget of new tokens past the context (transformers' max_position_embeddings) is a
    // PromptTooLongError naming both numbers, before anything runs; the model stays usable.
    let context = case(CONFIG)["text_config"]["max_position_embeddings"].as_u64().unwrap() as usize;
    let options = options_for(&chat, None, Some(context));
    let err = model.start_chat(messages(&chat), None, options, Stop::never()).await.err().unwrap();
    assert_eq!(err.name, "PromptTooLongError");
    let prompt_tokens = ids(&chat["prompt_ids"]).len();
    assert_eq!(
        (err.fields.tokens, err.fields.max_new_tokens, err.fields.limit),
        (Some(prompt_tokens), Some(context), Some(context))
    );

    // After dispose, generations fail with AbortError.
    let pending = caption_coffee(&model, Some(SHORT)).await;
    model.dispose();
    assert_eq!(pending.step().await.unwrap_err().name, "AbortError");
}

#[wasm_bindgen_test]
async fn aborting_a_load_stops_the_download() {
    // Aborted after the first file (the tokenizer) arrived: no shard is fetched.
    let controller = web_sys::AbortController::new().unwrap();
    let signal = controller.signal();
    let files = RefCell::new(Vec::new());
    let result = Model::open(&model_url(), &OpenOptions::default(), Some(&signal), &|p| {
        if let Some(file) = &p.file {
            files.borrow_mut().push((file.clone(), p.files_total));
            controller.abort();
        }
    })
    .await;
    assert_eq!(result.err().map(|e| e.name), Some("AbortError"));
    let files = files.into_inner();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].1 > 1, "the model has shards after the tokenizer");

    // Through the JavaScript API, with a signal aborted before the call.
    let controller = web_sys::AbortController::new().unwrap();
    controller.abort();
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"signal".into(), &controller.signal()).unwrap();
    let error = JsFuture::from(Model::load(model_url(), options.into())).await.unwrap_err();
    let name = js_sys::Reflect::get(&error, &"name".into()).unwrap().as_string();
    assert_eq!(name.as_deref(), Some("AbortError"));

    // The page can load the model afterwards.
    Model::open(&model_url(), &OpenOptions::default(), None, &|_| ()).await.unwrap().dispose();
}

#[wasm_bindgen_test]
async fn a_second_load_comes_from_the_cache() {
    let first = Model::open(&model_url(), &cached(), None, &|_| ()).await.unwrap();
    first.dispose();
    let hits = RefCell::new(0);
    let second = Model::open(&model_url(), &cached(), None, &|p| {
        if p.from_cache == Some(true) {
            *hits.borrow_mut() += 1;
        }
    })
    .await
    .unwrap();
    assert!(second.loaded_from_cache());
    assert!(*hits.borrow() >= 2, "tokenizer and shards come from the cache");
    second.dispose();
}

/// A device lost in the middle of a caption (`destroy()`, as a driver reset would lose it):
/// that caption's next step fails with `DeviceLostError`; the next caption runs on a new device,
/// the model uploaded again from the browser cache with nothing fetched, and gives transformers'
/// ids.
#[wasm_bindgen_test]
async fn after_a_lost_device_the_next_caption_runs_on_a_new_one() {
    let model = Model::open(&model_url(), &cached(), None, &|_| ()).await.unwrap();
    let exp = case(COFFEE_NOSPLIT);
    let pending = caption_coffee(&model, Some(SHORT)).await;
    pending.step().await.unwrap();
    model.destroy_device();
    assert_eq!(pending.step().await.unwrap_err().name, "DeviceLostError");

    js_sys::eval("performance.clearResourceTimings()").unwrap();
    let again = caption_coffee(&model, Some(SHORT)).await;
    let fetched = js_sys::eval("performance.getEntriesByType('resource').map((e) => e.name)").unwrap();
    drain(&again).await;
    assert_eq!(again.generated_ids(), ids(&exp["generated_ids"])[..SHORT]);
    assert_eq!(js_sys::Array::from(&fetched).length(), 0, "the reload fetched {fetched:?}");
    model.dispose();
}

/// `Model.load(url, { integrity })` with `manifest.json`'s sha256 in Subresource Integrity form
/// (computed here with the `sha2` crate) loads the model; another digest is an `IntegrityError`
/// naming `manifest.json`, and a malformed value a `TypeError`, both before any shard is fetched.
#[wasm_bindgen_test]
async fn a_pinned_manifest_loads_only_with_its_digest() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let manifest = fetch_bytes(&format!("{}/manifest.json", model_url())).await.unwrap();
    let digest = sha2::Sha256::digest(&manifest);
    let load = async |integrity: String| {
        let options = js_sys::Object::new();
        js_sys::Reflect::set(&options, &"cache".into(), &JsValue::FALSE).unwrap();
        js_sys::Reflect::set(&options, &"integrity".into(), &integrity.into()).unwrap();
        JsFuture::from(Model::load(model_url(), options.into())).await
    };
    let sri = |digest: &[u8]| format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(digest));

    let model = load(sri(&digest)).await.unwrap();
    let dispose: js_sys::Function = js_sys::Reflect::get(&model, &"dispose".into()).unwrap().unchecked_into();
    dispose.call0(&model).unwrap();

    let mut other = digest.to_vec();
    other[0] ^= 1;
    let error = load(sri(&other)).await.unwrap_err();
    let get = |name: &str| js_sys::Reflect::get(&error, &name.into()).unwrap().as_string();
    assert_eq!(get("name").as_deref(), Some("IntegrityError"));
    assert_eq!(get("shard").as_deref(), Some("manifest.json"));

    let error = load("md5-abc".into()).await.unwrap_err();
    let name = js_sys::Reflect::get(&error, &"name".into()).unwrap().as_string();
    assert_eq!(name.as_deref(), Some("TypeError"));
}

/// Where the Cache API is unavailable (hidden from the page here), a load with `cache: true`
/// still loads the model, from the network, with one `Warning` progress event saying why.
#[wasm_bindgen_test]
async fn without_the_cache_api_the_model_loads_with_a_warning() {
    // `caches` is the global object's own accessor (WebIDL [Global]): kept aside and put back.
    js_sys::eval(
        "globalThis.__caches = Object.getOwnPropertyDescriptor(globalThis, 'caches');\
         Object.defineProperty(globalThis, 'caches', { value: undefined, configurable: true })",
    )
    .unwrap();
    let events = RefCell::new(Vec::<Progress>::new());
    let model = Model::open(&model_url(), &cached(), None, &|p| events.borrow_mut().push(p.clone())).await;
    js_sys::eval(
        "delete globalThis.caches;\
         if (globalThis.__caches) Object.defineProperty(globalThis, 'caches', globalThis.__caches);\
         delete globalThis.__caches",
    )
    .unwrap();
    assert!(ShardCache::open().await.is_some(), "the Cache API is back");
    let model = model.unwrap();
    let events = events.into_inner();
    let warnings: Vec<&Progress> = events.iter().filter(|e| e.phase == Phase::Warning).collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert!(warnings[0].warning.as_deref().is_some_and(|w| w.contains("Cache API")), "{warnings:?}");
    assert!(events.iter().filter(|e| e.phase == Phase::File).all(|e| e.from_cache == Some(false)));
    assert!(!model.loaded_from_cache());
    model.dispose();
}

/// A cache that refuses to store anything (its quota used up) does not stop a load: the model
/// comes from the network with one warning naming the refusal, nothing is left in the cache, and
/// the model answers as transformers.
#[wasm_bindgen_test]
async fn a_full_cache_still_loads_with_one_warning() {
    let manifest = fetch_manifest(&model_url(), None).await.unwrap();
    let files = manifest.shards.iter().map(|s| (&s.file, &s.sha256));
    let keys: Vec<String> = files
        .chain([(&manifest.tokenizer.file, &manifest.tokenizer.sha256)])
        .map(|(file, sha256)| key(&file_url(&model_url(), file), sha256))
        .collect();
    let cache = ShardCache::open().await.unwrap();
    for k in &keys {
        cache.delete(k).await;
    }
    js_sys::eval(
        "globalThis.__put = Cache.prototype.put;\
         Cache.prototype.put = () => Promise.reject(new DOMException('quota used up', 'QuotaExceededError'))",
    )
    .unwrap();
    let events = RefCell::new(Vec::<Progress>::new());
    let model = Model::open(&model_url(), &cached(), None, &|p| events.borrow_mut().push(p.clone())).await;
    js_sys::eval("Cache.prototype.put = globalThis.__put; delete globalThis.__put").unwrap();
    let model = model.unwrap();
    let events = events.into_inner();
    let warnings: Vec<&Progress> = events.iter().filter(|e| e.phase == Phase::Warning).collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert!(warnings[0].warning.as_deref().is_some_and(|w| w.contains("refused")), "{warnings:?}");
    assert!(events.iter().filter(|e| e.phase == Phase::File).all(|e| e.from_cache == Some(false)));
    for k in &keys {
        assert!(cache.get(k).await.is_none(), "{k} was stored");
    }
    let exp = case(COFFEE_NOSPLIT);
    let generation = caption_coffee(&model, Some(SHORT)).await;
    drain(&generation).await;
    assert_eq!(generation.generated_ids(), ids(&exp["generated_ids"])[..SHORT]);
    model.dispose();
}

/// A cache entry cut short (a write interrupted by a closed tab) is never used: the load checks
/// it against the manifest, fetches that file again and replaces the entry.
#[wasm_bindgen_test]
async fn a_half_written_cache_entry_is_fetched_again() {
    Model::open(&model_url(), &cached(), None, &|_| ()).await.unwrap().dispose();
    let manifest = fetch_manifest(&model_url(), None).await.unwrap();
    let shard = &manifest.shards[0];
    let url = format!("{}/{}", model_url(), shard.file);
    let whole = fetch_bytes(&url).await.unwrap();
    let cache = ShardCache::open().await.unwrap();
    assert!(cache.put(&key(&url, &shard.sha256), &whole[..whole.len() / 2]).await);

    let origin = |events: &[Progress]| {
        events.iter().find(|e| e.file.as_deref() == Some(shard.file.as_str())).and_then(|e| e.from_cache)
    };
    let events = RefCell::new(Vec::<Progress>::new());
    let model = Model::open(&model_url(), &cached(), None, &|p| events.borrow_mut().push(p.clone())).await;
    model.unwrap().dispose();
    assert_eq!(origin(&events.borrow()), Some(false), "the half entry was not used");
    let events = RefCell::new(Vec::<Progress>::new());
    let model = Model::open(&model_url(), &cached(), None, &|p| events.borrow_mut().push(p.clone())).await;
    let model = model.unwrap();
    assert_eq!(origin(&events.borrow()), Some(true), "the entry was replaced");
    assert!(model.loaded_from_cache());
    model.dispose();
}

#[wasm_bindgen_test]
async fn a_corrupted_shard_is_an_integrity_error() {
    let base = format!("{}/corrupt", server());
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"cache".into(), &JsValue::FALSE).unwrap();
    let error = JsFuture::from(Model::load(base.clone(), options.into())).await.unwrap_err();
    let get = |name: &str| js_sys::Reflect::get(&error, &name.into()).unwrap();
    assert!(error.is_instance_of::<js_sys::Error>());
    assert_eq!(get("name").as_string().as_deref(), Some("IntegrityError"));
    let manifest = fetch_manifest(&base, None).await.unwrap();
    assert_eq!(get("shard").as_string(), Some(manifest.shards[0].file.clone()));
    assert_eq!(get("expectedSha256").as_string(), Some(manifest.shards[0].sha256.clone()));

    // A missing model directory is a FetchError with the HTTP status.
    let error = JsFuture::from(Model::load(format!("{}/no-such-model", server()), JsValue::UNDEFINED))
        .await
        .unwrap_err();
    let get = |name: &str| js_sys::Reflect::get(&error, &name.into()).unwrap();
    assert_eq!(get("name").as_string().as_deref(), Some("FetchError"));
    assert_eq!(get("status").as_f64(), Some(404.0));
}
