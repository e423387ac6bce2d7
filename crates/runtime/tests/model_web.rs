//! The whole-model checks of `model.rs` in headless Chromium: the tiny fixture, converted by
//! `cargo xtask test` and served by its static server, is fetched and verified by
//! [`pocketvlm_wasm::loader`] and run on WebGPU; every case is checked against transformers
//! with the same code as natively (`cases/mod.rs`). Also: a corrupted shard is a typed integrity
//! error, a missing model a typed fetch error.
//!
//! Run it through `cargo xtask test` (which sets `POCKETVLM_TEST_SERVER` at build time).
#![cfg(target_arch = "wasm32")]

mod cases;

use cases::{
    CaseFiles, QUANT_LOGIT_TOLERANCE, TINY_CASES, check_case, check_case_within, check_concurrent,
    check_resumed_conversation, check_stopped_anywhere, join, read_case, server, text_request,
};
use pocketvlm_runtime::engine::Engine;
use pocketvlm_runtime::model::CacheKind;
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};
use pocketvlm_wasm::fetch::{fetch_bytes, fetch_manifest};
use pocketvlm_wasm::loader::fetch_model;
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// The converted tiny fixture, loaded from the test server.
async fn tiny_engine() -> Engine {
    let fetched = fetch_model(&join(server(), "model/tiny")).await.unwrap();
    let gpu = Gpu::new(&DeviceOptions::default()).await.unwrap();
    Engine::load(gpu, &fetched.data, &fetched.tokenizer).await.unwrap()
}

/// Case `name` of the tiny fixture (transformers' expectations and inputs) from the test server.
async fn tiny_case(name: &str) -> CaseFiles {
    let checkpoint = join(server(), "fixtures/tiny");
    read_case(async |url: String| fetch_bytes(&url).await.unwrap(), &checkpoint, name).await
}

#[wasm_bindgen_test]
async fn tiny_fixture_matches_transformers_in_the_browser() {
    let engine = tiny_engine().await;
    for name in TINY_CASES {
        check_case(&engine, &tiny_case(name).await).await;
    }
}

/// A caption stopped at every point of its vision tower and prefill fails with `Aborted` there,
/// and the same engine then answers it as transformers does (as natively in `model.rs`).
#[wasm_bindgen_test]
async fn stopped_anywhere_then_answers_as_transformers_in_the_browser() {
    check_stopped_anywhere(&tiny_engine().await, &tiny_case("coffee_nosplit").await).await;
}

/// A caption and a text chat started together on one engine, their passes interleaved on the
/// GPU queue and their decode steps taken in turn, each give the prompt logits and ids it gives
/// alone.
#[wasm_bindgen_test]
async fn two_generations_at_once_in_the_browser() {
    let engine = tiny_engine().await;
    check_concurrent(&engine, &tiny_case("coffee_nosplit").await, &tiny_case("text_chat").await).await;
}

/// Greedy decoding a step ahead (what GPUs get, `Capabilities::decode_ahead`; forced here on the
/// CPU adapter): every case answers as transformers does, and two generations interleaved on
/// one engine, each with a step in flight while the other records, give what each gives alone.
#[wasm_bindgen_test]
async fn decoding_a_step_ahead_matches_transformers_in_the_browser() {
    let fetched = fetch_model(&join(server(), "model/tiny")).await.unwrap();
    let gpu = Gpu::new(&DeviceOptions { decode_ahead: Some(true), ..Default::default() }).await.unwrap();
    let engine = Engine::load(gpu, &fetched.data, &fetched.tokenizer).await.unwrap();
    assert!(engine.gpu.caps.decode_ahead);
    for name in TINY_CASES {
        check_case(&engine, &tiny_case(name).await).await;
    }
    check_concurrent(&engine, &tiny_case("coffee_nosplit").await, &tiny_case("text_chat").await).await;
}

/// The quantized and low-rank variants of the tiny fixture (`/quant/index.json`: recipes,
/// low-rank recipes and cases) against the CPU reference (the integer contract's, with the
/// latent KV cache for low-rank models, which the engine uses by default), as natively in
/// `model.rs`.
#[wasm_bindgen_test]
async fn quantized_tiny_models_match_the_cpu_reference_in_the_browser() {
    let index = fetch_bytes(&join(server(), "quant/index.json")).await.unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let list = |key: &str| -> Vec<String> { serde_json::from_value(index[key].clone()).unwrap() };
    let (recipes, low_rank, cases) = (list("recipes"), list("low_rank_recipes"), list("cases"));
    assert!(recipes.len() >= 5 && low_rank.len() >= 3 && !cases.is_empty(), "{index}");
    for name in recipes.into_iter().chain(low_rank) {
        let base = join(server(), &format!("quant/{name}"));
        let fetched = fetch_model(&join(&base, "model")).await.unwrap();
        let gpu = Gpu::new(&DeviceOptions::default()).await.unwrap();
        let engine = Engine::load(gpu, &fetched.data, &fetched.tokenizer).await.unwrap();
        for case in &cases {
            let case = read_case(async |url: String| fetch_bytes(&url).await.unwrap(), &base, case).await;
            check_case_within(&engine, &case, QUANT_LOGIT_TOLERANCE).await;
        }
        wasm_bindgen_test::console_log!("{name}: matches the CPU reference ({})", engine.gpu.adapter.name);
    }
}

/// The low-rank W4A8 model caching INT8 latents (`svd-kv25-w4a8`): a conversation continued from
/// its latent cache (interrupted, rewound, grown, resumed twice) gives what a fresh start gives,
/// as natively in `conversation.rs`.
#[wasm_bindgen_test]
async fn latent_cache_conversations_match_a_fresh_start_in_the_browser() {
    let base = join(server(), "quant/svd-kv25-w4a8");
    let fetched = fetch_model(&join(&base, "model")).await.unwrap();
    let gpu = Gpu::new(&DeviceOptions::default()).await.unwrap();
    let engine = Engine::load(gpu, &fetched.data, &fetched.tokenizer).await.unwrap();
    assert_eq!(engine.model.cache_kind, CacheKind::Latent);
    assert!(engine.model.kv_bytes_per_token() < engine.model.kv_bytes_per_token_of(CacheKind::Plain));
    // the fixture's multi-turn conversation (its messages; the ids compared are the engine's own)
    let checkpoint = join(server(), "fixtures/tiny");
    let case =
        read_case(async |url: String| fetch_bytes(&url).await.unwrap(), &checkpoint, "text_multiturn").await;
    check_resumed_conversation(&engine, text_request(&case.expected)).await;
}

#[wasm_bindgen_test]
async fn a_corrupted_shard_is_an_integrity_error() {
    let base = join(server(), "corrupt");
    let manifest = fetch_manifest(&base, None).await.unwrap();
    match fetch_model(&base).await.err() {
        Some(RuntimeError::Integrity { file, expected, found }) => {
            assert_eq!(file, manifest.shards[0].file);
            assert_eq!(expected, format!("sha256 {}", manifest.shards[0].sha256));
            assert_ne!(found, expected);
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

#[wasm_bindgen_test]
async fn a_missing_model_is_a_fetch_error_with_its_status() {
    match fetch_model(&join(server(), "model/no-such-model")).await.err() {
        Some(RuntimeError::Fetch { url, status, .. }) => {
            assert_eq!(status, Some(404));
            assert!(url.ends_with("/model/no-such-model/manifest.json"), "{url}");
        }
        other => panic!("expected a fetch error, got {other:?}"),
    }
}
