//! The same checks compiled to wasm32 and run under wasm-bindgen-test (Node):
//! `cargo test -p pocketvlm-processor --target wasm32-unknown-unknown --test wasm`.
//! Inputs are embedded because the wasm test has no file system.
#![cfg(target_arch = "wasm32")]

mod common;

use common::{f32_le_bytes, pattern, sha256_hex, smolvlm_processor_config};
use pocketvlm_format::config::TokenizerInfo;
use pocketvlm_processor::{Message, Preprocessor, Prompt, decode_image, resize::resize_lanczos};
use pocketvlm_test_support::ids;
use serde_json::Value;
use wasm_bindgen_test::wasm_bindgen_test;

const TOKENIZER: &[u8] = include_bytes!("../../../tests/fixtures/tiny/tokenizer.json");
const TEMPLATE: &str = include_str!("../../../tests/fixtures/tiny/chat_template.jinja");
const CASE: &str = include_str!("../../../tests/fixtures/tiny/expected/chelsea_split.json");
const TOKENIZE: &str = include_str!("../../../tests/fixtures/tiny/expected/tokenize.json");
const IMAGE: &[u8] = include_bytes!("../../../tests/fixtures/images/chelsea.png");
const TILES: &[u8] = include_bytes!("../../../tests/fixtures/tiny/expected/chelsea_split.tiles.u8");
const REFERENCE: &str = include_str!("data/reference.json");

fn prompt() -> Prompt {
    let info = TokenizerInfo {
        file: "tokenizer.json".into(),
        sha256: String::new(),
        chat_template: TEMPLATE.into(),
        bos_token: Some("<|im_start|>".into()),
        eos_token: Some("<end_of_utterance>".into()),
        pad_token: Some("<|im_end|>".into()),
        image_token: "<image>".into(),
        fake_image_token: "<fake_token_around_image>".into(),
        global_image_token: "<global-img>".into(),
        end_of_utterance_token: "<end_of_utterance>".into(),
    };
    Prompt::new(TOKENIZER, &info, 16).unwrap()
}

#[wasm_bindgen_test]
fn chelsea_case_matches_transformers_in_wasm() {
    let case: Value = serde_json::from_str(CASE).unwrap();
    let p = prompt();
    let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
    let text = p.render(&messages, true).unwrap();
    assert_eq!(text, case["prompt_text"].as_str().unwrap());

    let pre = Preprocessor::new(&smolvlm_processor_config(384, 128, true)).unwrap();
    let img = decode_image(IMAGE).unwrap();
    let out = pre.preprocess(&img, true).unwrap();
    assert_eq!((out.rows, out.cols), (2, 3));
    assert!(out.tiles_u8 == TILES, "tiles differ from transformers");
    assert_eq!(
        sha256_hex(&f32_le_bytes(&out.pixel_values)),
        case["pixel_values"]["sha256_f32le"].as_str().unwrap()
    );
    assert_eq!(p.encode(&text, &[out.grid()]).unwrap(), ids(&case["prompt_ids"]));
    let generated = ids(&case["generated_ids"]);
    assert_eq!(p.decode(&generated, false).unwrap(), case["generated_text"].as_str().unwrap());
}

#[wasm_bindgen_test]
fn tokenizer_strings_match_in_wasm() {
    let t: Value = serde_json::from_str(TOKENIZE).unwrap();
    let p = prompt();
    for c in t["cases"].as_array().unwrap() {
        assert_eq!(p.tokenize(c["text"].as_str().unwrap(), false).unwrap(), ids(&c["ids"]));
    }
}

#[wasm_bindgen_test]
fn lanczos_is_bit_exact_in_wasm() {
    let r: Value = serde_json::from_str(REFERENCE).unwrap();
    for case in r["resize"].as_array().unwrap() {
        let dim = |k: &str, i: usize| case[k][i].as_u64().unwrap() as usize;
        let (iw, ih, ow, oh) = (dim("in", 0), dim("in", 1), dim("out", 0), dim("out", 1));
        let out = resize_lanczos(&pattern(iw, ih, case["seed"].as_u64().unwrap()), iw, ih, 3, ow, oh);
        assert_eq!(sha256_hex(&out), case["sha256"].as_str().unwrap(), "{iw}x{ih} -> {ow}x{oh}");
    }
}
