//! The model loader ([`pocketvlm_wasm::loader`]) inside a dedicated worker (where there is no
//! `window`): the tiny model served by `cargo xtask test` is fetched and verified, and a missing
//! file is a typed fetch error. Run it through `cargo xtask test` (which sets `POCKETVLM_TEST_SERVER`).
#![cfg(target_arch = "wasm32")]

mod cases;

use cases::server;
use pocketvlm_runtime::RuntimeError;
use pocketvlm_wasm::fetch::{fetch_bytes, file_url};
use pocketvlm_wasm::loader::fetch_model;
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen_test]
async fn a_worker_fetches_and_verifies_the_model() {
    let global = js_sys::global();
    let has = |name: &str| js_sys::Reflect::has(&global, &name.into()).unwrap_or(false);
    assert!(!has("document") && has("importScripts"), "this test must run in a dedicated worker");
    let model = file_url(server(), "model/tiny");
    let fetched = fetch_model(&model).await.unwrap();
    let manifest = &fetched.data.manifest;
    assert_eq!(manifest.model.text.vocab_size, 49280);
    for (i, shard) in manifest.shards.iter().enumerate() {
        assert_eq!(fetched.data.shard(i).len() as u64, shard.bytes, "{}", shard.file);
    }
    assert_eq!(pocketvlm_format::sha256_hex(&fetched.tokenizer), manifest.tokenizer.sha256);
}

#[wasm_bindgen_test]
async fn a_missing_file_is_a_fetch_error_in_a_worker() {
    let url = file_url(server(), "model/tiny/no-such-shard.bin");
    match fetch_bytes(&url).await.err() {
        Some(RuntimeError::Fetch { url: got, status, .. }) => {
            assert_eq!((got, status), (url, Some(404)));
        }
        other => panic!("expected a fetch error, got {other:?}"),
    }
}
