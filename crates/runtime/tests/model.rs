//! The dense model on the GPU against what Hugging Face transformers computed for the tiny
//! SmolVLM fixture: last-prompt-position top-10 ids and logits, and greedy generated ids.
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};

use pocketvlm_compress::{ConvertOptions, convert};
use pocketvlm_format::dir;
use pocketvlm_processor::{Preprocessor, decode_image};
use pocketvlm_runtime::model::sampling::{SamplingOptions, top_k};
use pocketvlm_runtime::model::{Generator, Model};
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn expected(checkpoint: &Path, case: &str) -> Value {
    let path = checkpoint.join(format!("expected/{case}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

struct Loaded {
    gpu: Gpu,
    model: Model,
    pre: Preprocessor,
}

async fn load(checkpoint: &Path, options: DeviceOptions) -> Loaded {
    let out = tempfile::tempdir().unwrap();
    convert(checkpoint, out.path(), &ConvertOptions::default()).unwrap();
    let data = dir::open(out.path()).unwrap();
    let gpu = Gpu::new(&options).await.unwrap();
    let model = Model::load(&gpu, &data).await.unwrap();
    let pre = Preprocessor::new(&data.manifest.processor).unwrap();
    Loaded { gpu, model, pre }
}

/// Run one fixture case and compare with transformers.
async fn check_case(l: &Loaded, checkpoint: &Path, case: &str) {
    let exp = expected(checkpoint, case);
    let prompt = ids(&exp["prompt_ids"]);
    let image = match exp["image"].as_str() {
        Some(rel) => {
            // Image paths are relative to the expected file.
            let bytes = std::fs::read(checkpoint.join("expected").join(rel)).unwrap();
            let img = decode_image(&bytes).unwrap();
            let split = exp["do_image_splitting"].as_bool().unwrap();
            let prepared = l.pre.preprocess(&img, split).unwrap();
            Some(l.model.encode_image(&l.gpu, &prepared.pixel_values, prepared.n_tiles).await.unwrap())
        }
        None => None,
    };
    let max_new = exp["max_new_tokens"].as_u64().unwrap() as usize;
    let mut generator =
        Generator::start(&l.gpu, &l.model, &prompt, image.as_ref(), max_new, SamplingOptions::default())
            .await
            .unwrap();

    let logits = generator.logits(&l.gpu, &l.model).await.unwrap();
    let want: Vec<(u32, f32)> = exp["top_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
        .collect();
    let got = top_k(&logits, 10);
    let got_ids: Vec<u32> = got.iter().map(|p| p.0).collect();
    let want_ids: Vec<u32> = want.iter().take(10).map(|p| p.0).collect();
    assert_eq!(got_ids, want_ids, "{case}: top-10 ids at the last prompt position");
    for ((id, g), (_, e)) in got.iter().zip(&want) {
        assert!((g - e).abs() <= 1e-3 * e.abs().max(1.0), "{case}: logit of {id} is {g}, transformers {e}");
    }

    while generator.next_token(&l.gpu, &l.model).await.unwrap().is_some() {}
    assert_eq!(generator.generated(), ids(&exp["generated_ids"]).as_slice(), "{case}: greedy ids");
}

#[test]
fn tiny_fixture_matches_transformers() {
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let l = load(&tiny, DeviceOptions::default()).await;
        for case in ["text_chat", "text_multiturn", "chelsea_split", "rocket_split", "coffee_nosplit"] {
            check_case(&l, &tiny, case).await;
        }
    });
}

#[test]
fn split_bindings_give_the_same_tokens() {
    // 1 MiB bindings force chunked embedding gathers and lm_head (9.4 MB each in f32).
    pollster::block_on(async {
        let tiny = fixtures().join("tiny");
        let l = load(&tiny, DeviceOptions { max_storage_binding: Some(1 << 20) }).await;
        for case in ["text_chat", "coffee_nosplit"] {
            check_case(&l, &tiny, case).await;
        }
    });
}

#[test]
fn prompt_too_long_is_a_typed_error() {
    pollster::block_on(async {
        let l = load(&fixtures().join("tiny"), DeviceOptions::default()).await;
        let prompt = vec![1u32; l.model.max_positions()];
        let err = Generator::start(&l.gpu, &l.model, &prompt, None, 4, SamplingOptions::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, RuntimeError::PromptTooLong { .. }), "{err}");
        // The image-token count must match the features given.
        let prompt = vec![l.model.config.image_token_id; 3];
        let err = Generator::start(&l.gpu, &l.model, &prompt, None, 4, SamplingOptions::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    });
}

/// The SmolVLM-256M-shaped checkpoint with the real SmolLM2-135M-Instruct text weights, generated
/// by `python3 tests/fixtures/generate.py --big <dir>` (not committed: 500 MB). Run with
/// `POCKETVLM_256M=<dir> cargo test --release -p pocketvlm-runtime --test model -- --ignored`.
#[test]
#[ignore = "needs the locally generated 256M-shaped checkpoint (POCKETVLM_256M)"]
fn smolvlm_256m_shape_with_real_text_weights_matches_transformers() {
    let dir = PathBuf::from(std::env::var("POCKETVLM_256M").expect("POCKETVLM_256M=<checkpoint dir>"));
    pollster::block_on(async {
        let l = load(&dir, DeviceOptions::default()).await;
        for case in ["text_chat", "chelsea_split"] {
            check_case(&l, &dir, case).await;
            eprintln!("{case}: matches transformers");
        }
    });
}
