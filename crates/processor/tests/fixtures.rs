//! End-to-end checks against the transformers fixtures in the repository's `tests/fixtures/tiny`
//! (written by `tests/fixtures/generate.py`): rendered prompt, token ids, resized tiles, pixel
//! values, tile grid, and detokenization; prompt ids, tiles and pixel values also for the
//! fixtures with the other SmolVLM sizes' traits (`tiny-2b`: 132-px tiles with patch 14, 9 image
//! tokens per tile; `tiny-500m`: 4 per tile).

mod common;

use std::path::Path;

use common::*;
use pocketvlm_format::config::{ProcessorConfig, TokenizerInfo};
use pocketvlm_processor::{ImageGrid, Message, Preprocessor, Prompt, decode_image};
use pocketvlm_test_support::ids;
use serde_json::Value;

const CASES: [&str; 5] = ["chelsea_split", "rocket_split", "coffee_nosplit", "text_chat", "text_multiturn"];

/// The fixtures with the 2.2B's and the 500M's traits (same cases as `tiny`).
const SIZE_FIXTURES: [&str; 2] = ["tiny-2b", "tiny-500m"];

fn tiny_dir() -> std::path::PathBuf {
    fixtures_dir().join("tiny")
}

/// The chat template from whichever file the checkpoint stores it in.
fn chat_template(dir: &Path) -> String {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return t;
    }
    for file in ["chat_template.json", "processor_config.json", "tokenizer_config.json"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            let v: Value = serde_json::from_str(&text).unwrap();
            if let Some(t) = v["chat_template"].as_str() {
                return t.to_owned();
            }
        }
    }
    panic!("no chat template in {}", dir.display());
}

fn tokenizer_info(dir: &Path) -> TokenizerInfo {
    let cfg = read_json(&dir.join("tokenizer_config.json"));
    let token = |key: &str| cfg[key].as_str().map(str::to_owned);
    TokenizerInfo {
        file: "tokenizer.json".into(),
        sha256: sha256_hex(&std::fs::read(dir.join("tokenizer.json")).unwrap()),
        chat_template: chat_template(dir),
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
        pad_token: token("pad_token"),
        image_token: "<image>".into(),
        fake_image_token: "<fake_token_around_image>".into(),
        global_image_token: "<global-img>".into(),
        end_of_utterance_token: "<end_of_utterance>".into(),
    }
}

fn processor_config(dir: &Path) -> ProcessorConfig {
    let ip = read_json(&dir.join("preprocessor_config.json"));
    let seq = read_json(&dir.join("processor_config.json"))["image_seq_len"].as_u64().unwrap() as usize;
    let triple = |key: &str| -> [f64; 3] {
        let a = ip[key].as_array().unwrap();
        [a[0].as_f64().unwrap(), a[1].as_f64().unwrap(), a[2].as_f64().unwrap()]
    };
    assert_eq!(ip["resample"].as_u64(), Some(1), "PIL LANCZOS");
    ProcessorConfig {
        do_convert_rgb: ip["do_convert_rgb"].as_bool().unwrap(),
        do_resize: ip["do_resize"].as_bool().unwrap(),
        longest_edge: ip["size"]["longest_edge"].as_u64().unwrap() as usize,
        max_image_size: ip["max_image_size"]["longest_edge"].as_u64().unwrap() as usize,
        do_image_splitting: ip["do_image_splitting"].as_bool().unwrap(),
        resample: "lanczos".into(),
        do_rescale: ip["do_rescale"].as_bool().unwrap(),
        rescale_factor: ip["rescale_factor"].as_f64().unwrap(),
        do_normalize: ip["do_normalize"].as_bool().unwrap(),
        image_mean: triple("image_mean"),
        image_std: triple("image_std"),
        do_pad: ip["do_pad"].as_bool().unwrap(),
        image_seq_len: seq,
    }
}

fn prompt() -> Prompt {
    prompt_in(&tiny_dir())
}

fn prompt_in(dir: &Path) -> Prompt {
    let info = tokenizer_info(dir);
    let cfg = processor_config(dir);
    Prompt::new(&std::fs::read(dir.join("tokenizer.json")).unwrap(), &info, cfg.image_seq_len).unwrap()
}

fn case(name: &str) -> Value {
    case_in(&tiny_dir(), name)
}

fn case_in(dir: &Path, name: &str) -> Value {
    read_json(&dir.join("expected").join(format!("{name}.json")))
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-6 * want.abs().max(1e-3);
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
}

#[test]
fn special_token_ids() {
    let p = prompt();
    let s = p.special_tokens();
    assert_eq!(s.image, 49190);
    assert_eq!(s.fake_image, 49189);
    assert_eq!(s.global_image, 49152);
    assert_eq!(s.end_of_utterance, 49279);
    assert_eq!((s.bos, s.eos, s.pad), (Some(1), Some(49279), Some(2)));
    assert_eq!(p.eos_token_id(), Some(49279));
    assert_eq!(p.token_id("<row_6_col_6>"), Some(49153 + 35));
}

#[test]
fn rendered_prompts_match_transformers() {
    let p = prompt();
    for name in CASES {
        let c = case(name);
        let add_generation_prompt = c["add_generation_prompt"].as_bool().unwrap();
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        let want = c["prompt_text"].as_str().unwrap();
        assert_eq!(p.render(&messages, add_generation_prompt).unwrap(), want, "{name}");
        assert_eq!(
            p.render_serialized(&c["messages"], add_generation_prompt).unwrap(),
            want,
            "{name} (raw json)"
        );
    }
}

#[test]
fn prompt_ids_match_transformers() {
    check_prompt_ids(&tiny_dir());
}

/// The image-token counts follow transformers' floored patch grid (`tiny-2b`: ⌊132/14⌋ = 9
/// patches per side, 9 tokens per tile after the scale-3 pixel shuffle).
#[test]
fn prompt_ids_match_transformers_for_every_size() {
    for (fixture, seq) in SIZE_FIXTURES.into_iter().zip([9, 4]) {
        let dir = fixtures_dir().join(fixture);
        assert_eq!(processor_config(&dir).image_seq_len, seq, "{fixture}");
        check_prompt_ids(&dir);
    }
}

fn check_prompt_ids(dir: &Path) {
    let cfg = processor_config(dir);
    let pre = Preprocessor::new(&cfg).unwrap();
    let p = prompt_in(dir);
    for name in CASES {
        let c = case_in(dir, name);
        let grids = if c["image"].is_null() {
            vec![]
        } else {
            let path = dir.join("expected").join(c["image"].as_str().unwrap());
            let img = decode_image(&std::fs::read(path).unwrap()).unwrap();
            vec![pre.grid_for(img.width(), img.height(), c["do_image_splitting"].as_bool().unwrap()).unwrap()]
        };
        let got = p.encode(c["prompt_text"].as_str().unwrap(), &grids).unwrap();
        assert_eq!(got, ids(&c["prompt_ids"]), "{name}");
        assert_eq!(got.len() as u64, c["num_prompt_tokens"].as_u64().unwrap(), "{name}");
        let n_image = got.iter().filter(|&&t| t == p.image_token_id()).count() as u64;
        assert_eq!(n_image, c["num_image_tokens"].as_u64().unwrap(), "{name}");
    }
}

#[test]
fn tiles_and_pixel_values_match_transformers() {
    check_tiles_and_pixel_values(&tiny_dir());
}

#[test]
fn tiles_and_pixel_values_match_transformers_for_every_size() {
    for fixture in SIZE_FIXTURES {
        check_tiles_and_pixel_values(&fixtures_dir().join(fixture));
    }
}

fn check_tiles_and_pixel_values(dir: &Path) {
    let cfg = processor_config(dir);
    let pre = Preprocessor::new(&cfg).unwrap();
    let mut checked = 0;
    for name in CASES {
        let c = case_in(dir, name);
        if c["image"].is_null() {
            continue;
        }
        let path = dir.join("expected").join(c["image"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(sha256_hex(&bytes), c["image_sha256"].as_str().unwrap(), "{name}: image file");
        let img = decode_image(&bytes).unwrap();
        assert_eq!(
            sha256_hex(img.as_bytes()),
            c["image_info"]["rgb_sha256"].as_str().unwrap(),
            "{name}: RGB"
        );

        let out = pre.preprocess(&img, c["do_image_splitting"].as_bool().unwrap()).unwrap();
        assert_eq!(out.rows as u64, c["image_rows"].as_u64().unwrap(), "{name}: rows");
        assert_eq!(out.cols as u64, c["image_cols"].as_u64().unwrap(), "{name}: cols");

        let tiles = &c["tiles_u8"];
        let shape: Vec<u64> =
            tiles["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(shape, [out.n_tiles as u64, out.tile_size as u64, out.tile_size as u64, 3], "{name}");
        let want_tiles = std::fs::read(dir.join("expected").join(tiles["file"].as_str().unwrap())).unwrap();
        if out.tiles_u8 != want_tiles {
            let first = out.tiles_u8.iter().zip(&want_tiles).position(|(a, b)| a != b);
            panic!("{name}: tiles differ from transformers (first difference at byte {first:?})");
        }
        assert_eq!(sha256_hex(&out.tiles_u8), tiles["sha256"].as_str().unwrap(), "{name}");

        let pv = &c["pixel_values"];
        let pshape: Vec<u64> = pv["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(pshape, [1, out.n_tiles as u64, 3, out.tile_size as u64, out.tile_size as u64], "{name}");
        let vals: Vec<f64> = out.pixel_values.iter().map(|&v| v as f64).collect();
        let n = vals.len() as f64;
        let sum: f64 = vals.iter().sum();
        let mean = sum / n;
        let std = (vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
        let min = vals.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        close(sum, pv["sum"].as_f64().unwrap(), &format!("{name}: sum"));
        close(mean, pv["mean"].as_f64().unwrap(), &format!("{name}: mean"));
        close(std, pv["std"].as_f64().unwrap(), &format!("{name}: std"));
        assert_eq!(min, pv["min"].as_f64().unwrap(), "{name}: min");
        assert_eq!(max, pv["max"].as_f64().unwrap(), "{name}: max");
        // Stronger than the stats: the f32 tensor is bit-identical.
        assert_eq!(
            sha256_hex(&f32_le_bytes(&out.pixel_values)),
            pv["sha256_f32le"].as_str().unwrap(),
            "{name}"
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn tokenizer_strings_match_transformers() {
    let p = prompt();
    let t = read_json(&tiny_dir().join("expected/tokenize.json"));
    assert_eq!(t["add_special_tokens"], Value::Bool(false));
    for c in t["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let got = p.tokenize(text, false).unwrap();
        assert_eq!(got, ids(&c["ids"]), "{text:?}");
        assert_eq!(p.decode(&got, false).unwrap(), c["decoded"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn decoding_generated_ids_matches_transformers() {
    let p = prompt();
    for name in CASES {
        let c = case(name);
        let generated = ids(&c["generated_ids"]);
        let want = c["generated_text"].as_str().unwrap();
        assert_eq!(p.decode(&generated, false).unwrap(), want, "{name}");
        assert_eq!(
            p.decode(&generated, true).unwrap(),
            c["generated_text_skip_special"].as_str().unwrap(),
            "{name}"
        );

        let mut stream = p.stream_decoder(false);
        let mut streamed = String::new();
        for &id in &generated {
            if let Some(piece) = stream.step(&p, id).unwrap() {
                streamed.push_str(&piece);
            }
        }
        streamed.extend(stream.finish(&p).unwrap());
        assert_eq!(streamed, want, "{name}: streamed");
    }
}

#[test]
fn streaming_never_splits_a_character() {
    let p = prompt();
    let text = "Ünïcödé café naïve — 東京 🚀 emoji, and <end_of_utterance> too";
    let ids = p.tokenize(text, false).unwrap();
    for skip in [false, true] {
        let mut stream = p.stream_decoder(skip);
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(piece) = stream.step(&p, id).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                pieces.push(piece);
            }
        }
        assert!(stream.finish(&p).unwrap().is_none());
        assert_eq!(pieces.concat(), p.decode(&ids, skip).unwrap());
        assert!(pieces.len() > 10);
    }
}

#[test]
fn image_expansion_strings() {
    let p = prompt();
    let seq = "<image>".repeat(16);
    let single = p.expand_images("a<image>b", &[ImageGrid::default()]).unwrap();
    assert_eq!(single, format!("a<fake_token_around_image><global-img>{seq}<fake_token_around_image>b"));
    let split = p.expand_images("<image>", &[ImageGrid { rows: 2, cols: 1 }]).unwrap();
    assert_eq!(
        split,
        format!(
            "<fake_token_around_image><row_1_col_1>{seq}\n<fake_token_around_image><row_2_col_1>{seq}\n\
             \n<fake_token_around_image><global-img>{seq}<fake_token_around_image>"
        )
    );
    // Two images in one prompt, in order.
    let two = p
        .expand_images("x<image>y<image>z", &[ImageGrid { rows: 1, cols: 2 }, ImageGrid::default()])
        .unwrap();
    assert!(two.starts_with("x<fake_token_around_image><row_1_col_1>"));
    assert!(two.contains(&format!("<fake_token_around_image>y<fake_token_around_image><global-img>{seq}")));
    assert!(two.ends_with("<fake_token_around_image>z"));
}

#[test]
fn typed_errors() {
    use pocketvlm_processor::ProcessorError as E;
    let p = prompt();
    assert!(matches!(
        p.encode("no images", &[ImageGrid::default()]),
        Err(E::ImageCountMismatch { placeholders: 0, images: 1 })
    ));
    assert!(matches!(
        p.encode("<image><image>", &[ImageGrid::default()]),
        Err(E::ImageCountMismatch { placeholders: 2, images: 1 })
    ));
    assert!(
        matches!(p.encode("<image>", &[ImageGrid { rows: 7, cols: 1 }]), Err(E::UnknownSpecialToken(t)) if t == "<row_1_col_1>" || t == "<row_7_col_1>")
    );

    let dir = tiny_dir();
    let tok = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let mut info = tokenizer_info(&dir);
    info.image_token = "<no_such_token>".into();
    assert!(matches!(Prompt::new(&tok, &info, 16), Err(E::UnknownSpecialToken(_))));
    let mut info = tokenizer_info(&dir);
    info.chat_template = "{% for %}".into();
    assert!(matches!(Prompt::new(&tok, &info, 16), Err(E::Template(_))));
    info.chat_template = "{{ raise_exception('bad role') }}".into();
    let p2 = Prompt::new(&tok, &info, 16).unwrap();
    assert!(matches!(p2.render(&[], true), Err(E::Template(m)) if m.contains("bad role")));
    assert!(matches!(Prompt::new(b"{}", &tokenizer_info(&dir), 16), Err(E::Tokenizer(_))));

    let mut cfg = processor_config(&dir);
    cfg.resample = "bicubic".into();
    assert!(matches!(Preprocessor::new(&cfg), Err(E::UnsupportedConfig(_))));
}
