//! The whole-model checks against what Hugging Face transformers computed for a checkpoint's
//! `expected/<case>.json`, shared by the native test (`model.rs`, files from disk) and the browser
//! test (`model_web.rs`, files fetched from the server `cargo xtask test` starts).
//!
//! For each case, through the [`Engine`] (chat template, image preprocessing, tokenization,
//! vision tower, prefill, greedy decoding): the resized tiles equal transformers' uint8 tiles,
//! the prompt ids are equal, the top-10 ids at the last prompt position are equal with logits
//! within 1e-3 relative, and the greedy ids are identical.
#![allow(dead_code)]

use std::cell::Cell;
use std::rc::Rc;
use std::task::Poll;

use pocketvlm_processor::{RgbImage, decode_image};
use pocketvlm_runtime::RuntimeError;
use pocketvlm_runtime::engine::{Engine, Request, Session};
use pocketvlm_runtime::model::Stop;
use pocketvlm_runtime::model::sampling::{SamplingOptions, top_k};
use pocketvlm_runtime::parity::teacher_forced;
use serde_json::Value;

/// Every case of the tiny fixture.
pub const TINY_CASES: [&str; 5] =
    ["text_chat", "text_multiturn", "chelsea_split", "rocket_split", "coffee_nosplit"];

/// The fixtures with the other SmolVLM sizes' traits (`tests/fixtures/README.md`), each with
/// every case of [`TINY_CASES`]: `tiny-2b` (SmolVLM-Instruct 2.2B: patch 14 on tiles it does not
/// divide, pixel-shuffle scale 3, as many key-value heads as query heads) and `tiny-500m`
/// (SmolVLM-500M: 15 query heads over 5 key-value heads, scale 4, lm_head tied).
pub const SIZE_FIXTURES: [&str; 2] = ["tiny-2b", "tiny-500m"];

/// Relative tolerance on the top logits (absolute below 1).
pub const LOGIT_TOLERANCE: f32 = 1e-3;

/// Relative tolerance on the top logits of a quantized model against its CPU reference, at the
/// prompt and at every teacher-forced step. Every quantized layer is bit-exact given the same input
/// (`tests/quant.rs`), but the float kernels between them (LayerNorm, RMSNorm, attention's softmax,
/// GELU's `tanh`) round differently from candle's by a few ULP, and an activation that lands that
/// close to a rounding boundary takes the neighbouring integer. Measured on the tiny fixture:
/// prompts of text ≤ 3e-7 and of images (12 quantized vision layers over 64 patches) ≤ 1e-2;
/// teacher-forced over 24 steps, text ≤ 2.0e-2 and images ≤ 3.8e-2 (W8A8, a logit of ~40).
pub const QUANT_LOGIT_TOLERANCE: f32 = 5e-2;

/// `rel` joined to the directory `base` ('/'-separated, a path or a URL), with `.` and `..`
/// resolved lexically.
pub fn join(base: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = base.trim_end_matches('/').split('/').collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// One case's expectations and input files.
pub struct CaseFiles {
    pub name: String,
    pub expected: Value,
    /// The image (PNG/JPEG bytes), for image cases.
    pub image: Option<Vec<u8>>,
    /// Transformers' resized tiles, `[tiles, M, M, 3]` uint8, for image cases.
    pub tiles: Option<Vec<u8>>,
}

/// Read case `name` of the checkpoint at `checkpoint` with `read` (a location → its bytes).
pub async fn read_case(read: impl AsyncFn(String) -> Vec<u8>, checkpoint: &str, name: &str) -> CaseFiles {
    let expected_dir = join(checkpoint, "expected");
    let expected: Value = serde_json::from_slice(&read(join(&expected_dir, &format!("{name}.json"))).await)
        .unwrap_or_else(|e| panic!("{name}: expected JSON: {e}"));
    // Image paths are relative to the expected file.
    let image = match expected["image"].as_str() {
        Some(rel) => Some(read(join(&expected_dir, rel)).await),
        None => None,
    };
    let tiles = match expected["tiles_u8"]["file"].as_str() {
        Some(file) => Some(read(join(&expected_dir, file)).await),
        None => None,
    };
    CaseFiles { name: name.to_string(), expected, image, tiles }
}

pub use pocketvlm_test_support::ids;
#[cfg(target_arch = "wasm32")]
pub use pocketvlm_test_support::server;

/// Convert `checkpoint` (dense) and load it with its tokenizer.
#[cfg(not(target_arch = "wasm32"))]
pub async fn load(checkpoint: &std::path::Path, options: pocketvlm_runtime::DeviceOptions) -> Engine {
    use pocketvlm_compress::{DenseOptions, Plan, compress};
    let out = tempfile::tempdir().expect("a temporary folder");
    compress(checkpoint, out.path(), &Plan::Dense(DenseOptions::default())).expect("the dense conversion");
    load_dir(out.path(), &options).await
}

/// Load the model directory `model` with its tokenizer on a new device.
#[cfg(not(target_arch = "wasm32"))]
pub async fn load_dir(model: &std::path::Path, options: &pocketvlm_runtime::DeviceOptions) -> Engine {
    use pocketvlm_format::dir;
    let data = dir::open(model).expect("the model directory");
    let tokenizer = dir::read_tokenizer(model, &data.manifest).expect("its tokenizer");
    let gpu = pocketvlm_runtime::Gpu::new(options).await.expect("a device");
    Engine::load(gpu, &data, &tokenizer).await.expect("the model loads")
}

/// Run one case through `engine` and compare every step with transformers.
pub async fn check_case(engine: &Engine, case: &CaseFiles) {
    check_case_within(engine, case, LOGIT_TOLERANCE).await;
}

/// [`check_case`] with logits within `tolerance` (relative, absolute below 1) of the case's; the
/// case may be a CPU-reference expectation of a quantized model (same keys, see
/// `pocketvlm_compress::model::reference`).
pub async fn check_case_within(engine: &Engine, case: &CaseFiles, tolerance: f32) {
    let (name, exp) = (case.name.as_str(), &case.expected);
    assert_eq!(
        exp["add_generation_prompt"].as_bool(),
        Some(true),
        "{name}: the engine adds the generation prompt"
    );
    let request = case_request(case);
    if let Some(img) = &request.image {
        let split = request.split.expect("image cases set splitting");
        let prepared = engine.preprocessor.preprocess(img, split).unwrap();
        let want = case.tiles.as_ref().expect("image cases have transformers' tiles");
        if prepared.tiles_u8 != *want {
            let first = prepared.tiles_u8.iter().zip(want).position(|(a, b)| a != b);
            panic!(
                "{name}: tiles differ from transformers ({} vs {} bytes, first difference at byte {first:?})",
                prepared.tiles_u8.len(),
                want.len()
            );
        }
    }

    let mut session = engine.start(request.clone()).await.unwrap();
    assert_eq!(session.prompt_ids, ids(&exp["prompt_ids"]), "{name}: prompt ids");

    let want: Vec<(u32, f32)> = exp["top_logits"]
        .as_array()
        .expect("top_logits")
        .iter()
        .take(10)
        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
        .collect();
    let got = top_k(&session.prompt_logits, 10);
    let got_ids: Vec<u32> = got.iter().map(|p| p.0).collect();
    let want_ids: Vec<u32> = want.iter().map(|p| p.0).collect();
    let worst =
        got.iter().zip(&want).map(|((_, g), (_, e))| (g - e).abs() / e.abs().max(1.0)).fold(0f32, f32::max);
    println!("{name}: largest relative top-10 logit difference {worst:e}");
    // Ranks may swap only between expected logits closer than the tolerance allows to separate.
    let near = |a: f32, b: f32| (a - b).abs() <= 2.0 * tolerance * a.abs().max(b.abs()).max(1.0);
    for (i, (&(g_id, _), &(w_id, w))) in got.iter().zip(&want).enumerate() {
        if g_id != w_id {
            let other = want.iter().find(|p| p.0 == g_id).map_or(want[9].1, |p| p.1);
            assert!(
                near(w, other),
                "{name}: top-10 ids at the last prompt position: {got_ids:?}, expected {want_ids:?} (rank {i})"
            );
        }
    }
    for ((id, g), (_, e)) in got.iter().zip(&want) {
        let e = want.iter().find(|p| p.0 == *id).map_or(*e, |p| p.1);
        assert!((g - e).abs() <= tolerance * e.abs().max(1.0), "{name}: logit of {id} is {g}, expected {e}");
    }

    // Greedy ids: equal, or different only from a step where the engine's logits of its choice
    // and of the expected id are a near-tie (then the continuations legitimately part).
    let expected = ids(&exp["generated_ids"]);
    let (mut step, mut parted) = (0, false);
    while session.next(engine).await.unwrap().is_some() {
        let got = session.generated()[step];
        if expected.get(step).is_some_and(|&want| want != got) {
            let logits = session.logits(engine).await.unwrap();
            let (g, w) = (logits[got as usize], logits[expected[step] as usize]);
            assert!(near(g, w), "{name}: greedy id {step} is {got} ({g}), expected {} ({w})", expected[step]);
            println!("{name}: greedy ids part at step {step} on a near-tie ({g} vs {w})");
            parted = true;
            break;
        }
        step += 1;
    }
    if !parted {
        assert_eq!(session.generated(), expected.as_slice(), "{name}: greedy ids");
    }
    if exp.get("step_top_logits").is_some() {
        check_teacher_forced(engine, request, exp, name, tolerance).await;
    }
}

/// The case as a request: its messages, image, splitting and token budget, never stopped.
pub fn case_request(case: &CaseFiles) -> Request {
    let image = case.image.as_ref().map(|bytes| decode_image(bytes).expect("the case's image decodes"));
    request_for(&case.expected, image)
}

/// The case `exp` as a request with `image` (greedy, never stopped).
pub fn request_for(exp: &Value, image: Option<RgbImage>) -> Request {
    Request {
        messages: serde_json::from_value(exp["messages"].clone()).expect("messages"),
        image,
        split: exp["do_image_splitting"].as_bool(),
        max_new_tokens: exp["max_new_tokens"].as_u64().expect("max_new_tokens") as usize,
        sampling: SamplingOptions::default(),
        stop: Stop::never(),
    }
}

/// A stop that counts how often it is asked and answers true from the `at`-th time on.
fn stop_at(at: usize, asked: Rc<Cell<usize>>) -> Stop {
    Stop::when(move || {
        asked.set(asked.get() + 1);
        asked.get() >= at
    })
}

/// Stopped at every point where it can be (`Engine::resume`: once before anything, then
/// between the parts of the vision tower — each layer's attention and MLP halves — and of the
/// prefill — each decoder layer), the case fails with `RuntimeError::Aborted` there; afterwards
/// the same engine answers it as transformers does ([`check_case`]).
pub async fn check_stopped_anywhere(engine: &Engine, case: &CaseFiles) {
    let name = case.name.as_str();
    let request = case_request(case);
    let cfg = &engine.model.config;
    let vision_parts = if request.image.is_some() { 2 * cfg.vision.num_hidden_layers } else { 0 };
    let points = 1 + vision_parts + cfg.text.num_hidden_layers;
    let asked = Rc::new(Cell::new(0));
    let whole = Request { stop: stop_at(usize::MAX, asked.clone()), ..request.clone() };
    engine.start(whole).await.unwrap();
    assert_eq!(asked.get(), points, "{name}: points where a stop is asked");
    for at in 1..=points {
        let asked = Rc::new(Cell::new(0));
        let stopped = Request { stop: stop_at(at, asked.clone()), ..request.clone() };
        match engine.start(stopped).await {
            Err(RuntimeError::Aborted(_)) => assert_eq!(asked.get(), at, "{name}: asked after the stop"),
            Err(e) => panic!("{name}: stopped at point {at}: {e}"),
            Ok(_) => panic!("{name}: stopped at point {at}, the prompt was processed anyway"),
        }
    }
    check_case(engine, case).await;
}

/// Both futures to their ends, polled in turn (in the browser, each await of the GPU lets the
/// other run).
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    (ra.expect("polled to its end"), rb.expect("polled to its end"))
}

/// Two cases on one engine at once — their vision towers and prefills in parts (a stop that
/// never fires) that the GPU queue interleaves, then their decode steps in turn — give the
/// prompt logits and greedy ids each gives alone.
pub async fn check_concurrent(engine: &Engine, a: &CaseFiles, b: &CaseFiles) {
    let mut alone = Vec::new();
    for case in [a, b] {
        let mut session = engine.start(case_request(case)).await.unwrap();
        run_to_end(engine, &mut session).await;
        alone.push(session);
    }
    let parts = || Stop::when(|| false);
    let (ra, rb) =
        (Request { stop: parts(), ..case_request(a) }, Request { stop: parts(), ..case_request(b) });
    let (sa, sb) = both(engine.start(ra), engine.start(rb)).await;
    let (mut sa, mut sb) = (sa.unwrap(), sb.unwrap());
    let (mut a_done, mut b_done) = (false, false);
    while !(a_done && b_done) {
        a_done = a_done || sa.next(engine).await.unwrap().is_none();
        b_done = b_done || sb.next(engine).await.unwrap().is_none();
    }
    for ((case, session), alone) in [(a, &sa), (b, &sb)].into_iter().zip(&alone) {
        let name = &case.name;
        assert!(
            session.prompt_logits == alone.prompt_logits,
            "{name}: prompt logits beside another generation"
        );
        assert_eq!(session.generated(), alone.generated(), "{name}: greedy ids beside another generation");
    }
}

/// Follow the reference's greedy ids (teacher forcing) and compare the engine's logits with the
/// reference's at every step, as `pocketvlm_runtime::parity` states: the whole generation is
/// checked even where free-running decoding parted on a near tie.
async fn check_teacher_forced(engine: &Engine, request: Request, exp: &Value, name: &str, tolerance: f32) {
    let expected = ids(&exp["generated_ids"]);
    let tops: Vec<Vec<(u32, f32)>> =
        serde_json::from_value(exp["step_top_logits"].clone()).expect("step_top_logits");
    assert_eq!(tops.len(), expected.len(), "{name}: one top list per generated id");
    let steps = teacher_forced(engine, request, &expected, &tops, tolerance).await.unwrap();
    for (step, check) in steps.iter().enumerate() {
        assert!(
            check.passes(tolerance),
            "{name}: teacher-forced step {step}: {check:?} (tolerance {tolerance})"
        );
    }
    let worst = steps.iter().map(|s| s.deviation).fold(0f32, f32::max);
    let near_ties = steps.iter().filter(|s| s.near_tie).count();
    println!(
        "{name}: teacher-forced over {} steps: largest relative deviation {worst:e}, {near_ties} near ties",
        expected.len()
    );
}

/// The text case `exp` as a request (its messages, splitting and token budget; no image).
pub fn text_request(exp: &Value) -> Request {
    request_for(exp, None)
}

async fn run_to_end(engine: &Engine, session: &mut Session) {
    while session.next(engine).await.unwrap().is_some() {}
}

/// The prompt logits of a prompt resumed from a cache (`resumed`) against those of the same
/// prompt computed from scratch (`fresh`): within 1e-3 of the largest (a prefill's kernels
/// against the decode steps' that cached the reused rows).
pub fn check_resumed_logits(resumed: &[f32], fresh: &[f32], what: &str) {
    let scale = fresh.iter().fold(1f32, |m, x| m.max(x.abs()));
    let worst = resumed.iter().zip(fresh).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-3 * scale, "{what}: prompt logits differ by {worst} (scale {scale})");
}

/// A conversation continued from an engine's KV cache gives what the same engine computes from
/// scratch: `full` (a multi-turn request) is started fresh; then its first message alone is
/// started and interrupted after two tokens, and `full` resumed from that cache (rewound past the
/// interrupted answer and grown); then `full` resumed again from the whole conversation's cache.
/// Both resumptions must reuse cached tokens, give the fresh start's greedy ids, and prompt
/// logits within 1e-3 of its (relative to the largest).
pub async fn check_resumed_conversation(engine: &Engine, full: Request) {
    let mut fresh = engine.start(full.clone()).await.unwrap();
    let fresh_logits = fresh.prompt_logits.clone();
    run_to_end(engine, &mut fresh).await;
    let check =
        |session: &Session, what: &str| check_resumed_logits(&session.prompt_logits, &fresh_logits, what);

    let mut first = full.clone();
    first.messages.truncate(1);
    first.max_new_tokens = 3;
    let mut session = engine.start(first).await.unwrap();
    assert!(session.next(engine).await.unwrap().is_some());
    assert!(session.next(engine).await.unwrap().is_some());
    let mut resumed = engine.resume(full.clone(), Some(session.into_conversation())).await.unwrap();
    assert!(resumed.reused_tokens() > 0);
    check(&resumed, "second turn");
    run_to_end(engine, &mut resumed).await;
    assert_eq!(resumed.generated(), fresh.generated(), "second turn: greedy ids");

    let mut again = engine.resume(full, Some(resumed.into_conversation())).await.unwrap();
    assert_eq!(again.reused_tokens(), again.prompt_ids.len() - 1);
    check(&again, "the same conversation again");
    run_to_end(engine, &mut again).await;
    assert_eq!(again.generated(), fresh.generated(), "the same conversation again: greedy ids");
}
