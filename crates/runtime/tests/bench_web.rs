//! The browser half of `cargo xtask bench`: fetches `bench.json` ([`BenchConfig`]) and each model
//! from xtask's server, times single kernels when asked (printing each [`KernelReport`] after
//! [`KERNEL_REPORT_PREFIX`]), runs one timed generation per model ([`pocketvlm_runtime::bench::measure`]) and
//! prints each [`BenchReport`] as one JSON line after [`REPORT_PREFIX`], which xtask parses.
//! Built only by `cargo xtask bench` (`test = false`), which sets `POCKETVLM_TEST_SERVER`.
#![cfg(target_arch = "wasm32")]

use pocketvlm_processor::decode_image;
use pocketvlm_runtime::bench::kernels::{KERNEL_REPORT_PREFIX, measure_kernels};
use pocketvlm_runtime::bench::{
    BenchConfig, BenchReport, CACHE_REPORT_PREFIX, REPORT_PREFIX, measure, measure_caches,
};
use pocketvlm_runtime::engine::{Engine, now_ms};
use pocketvlm_runtime::{DeviceOptions, Gpu};
use pocketvlm_wasm::fetch::{fetch_bytes, file_url};
use pocketvlm_wasm::loader::fetch_model;
use wasm_bindgen_test::{console_log, wasm_bindgen_test};

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn bench() {
    let Some(server) = option_env!("POCKETVLM_TEST_SERVER") else {
        panic!("POCKETVLM_TEST_SERVER was not set when this was built: run it with `cargo xtask bench`");
    };
    let bench_dir = file_url(server, "bench");
    let config: BenchConfig =
        serde_json::from_slice(&fetch_bytes(&file_url(&bench_dir, "bench.json")).await.unwrap()).unwrap();
    if config.kernels {
        let gpu = Gpu::new(&DeviceOptions::default()).await.unwrap();
        for report in measure_kernels(&gpu).await.unwrap() {
            console_log!("{KERNEL_REPORT_PREFIX}{}", serde_json::to_string(&report).unwrap());
        }
    }
    let image = decode_image(&fetch_bytes(&file_url(&bench_dir, &config.image)).await.unwrap()).unwrap();

    for model in &config.models {
        let start = now_ms();
        let fetched = fetch_model(&file_url(&bench_dir, model)).await.unwrap();
        let gpu = Gpu::new(&DeviceOptions::default()).await.unwrap();
        let mut engine = Engine::load(gpu, &fetched.data, &fetched.tokenizer).await.unwrap();
        drop(fetched);
        let load_ms = now_ms() - start;

        let report: BenchReport =
            measure(&mut engine, config.request(&image), load_ms, model, &config).await.unwrap();
        console_log!("{REPORT_PREFIX}{}", serde_json::to_string(&report).unwrap());
        let caches =
            measure_caches(&mut engine, model, &config.cache_contexts, config.cache_steps).await.unwrap();
        for c in caches {
            console_log!("{CACHE_REPORT_PREFIX}{}", serde_json::to_string(&c).unwrap());
        }
    }
}
