//! Chat templates exercising transformers' Jinja setup (trim/lstrip blocks, loop controls,
//! namespace, `tojson`, Python string methods, special-token variables), rendered by
//! transformers' own `render_jinja_template` in `reference.py`.

mod common;

use common::*;
use pocketvlm_format::config::TokenizerInfo;
use pocketvlm_processor::{Message, Prompt};

#[test]
fn templates_render_like_transformers() {
    let reference = read_json(&data_dir().join("reference.json"));
    let tokenizer = std::fs::read(fixtures_dir().join("tiny/tokenizer.json")).unwrap();
    let cases = reference["templates"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let special = &case["special_tokens"];
        let token = |k: &str| special[k].as_str().map(str::to_owned);
        let info = TokenizerInfo {
            file: "tokenizer.json".into(),
            sha256: String::new(),
            chat_template: case["template"].as_str().unwrap().into(),
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            pad_token: token("pad_token"),
            image_token: "<image>".into(),
            fake_image_token: "<fake_token_around_image>".into(),
            global_image_token: "<global-img>".into(),
            end_of_utterance_token: "<end_of_utterance>".into(),
        };
        let prompt = Prompt::new(&tokenizer, &info, 16).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let want = case["expected"].as_str().unwrap();
        let name = format!("{} (add_generation_prompt={agp})", case["name"]);
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        assert_eq!(prompt.render(&messages, agp).unwrap(), want, "{name}");
        // (`render_serialized(&serde_json::Value)` would see the objects' keys sorted, since the
        // workspace's serde_json does not preserve order; only `tojson` output shows that.)
    }
}
