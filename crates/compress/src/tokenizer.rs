//! The tokenizer and chat template of a checkpoint.

use std::path::Path;

use pocketvlm_format::{FormatError, TokenizerInfo, sha256_hex};
use serde_json::Value;

use crate::error::{CompressError, Result};
use crate::hf_config::read_json;

/// File name the tokenizer is stored under, in the checkpoint and in a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The chat template: `chat_template.jinja`, `chat_template.json`, or the `chat_template` entry of
/// `processor_config.json` / `tokenizer_config.json`, in that order.
fn chat_template(dir: &Path, tokenizer_config: Option<&Value>, processor: Option<&Value>) -> Result<String> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map_err(|e| FormatError::Io { path: jinja.display().to_string(), source: e }.into());
    }
    let json = dir.join("chat_template.json");
    let from_json = if json.exists() { Some(read_json(&json)?) } else { None };
    [from_json.as_ref(), processor, tokenizer_config]
        .into_iter()
        .flatten()
        .find_map(|v| v.get("chat_template").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| FormatError::MissingConfigKey { key: "chat_template".into() }.into())
}

/// A special token from `tokenizer_config.json`: a string or `{"content": …}`.
fn special(config: Option<&Value>, key: &str) -> Option<String> {
    let v = config?.get(key)?;
    v.as_str().or_else(|| v.get("content").and_then(Value::as_str)).map(str::to_string)
}

/// Read the tokenizer bytes and describe them for the manifest.
pub fn read(dir: &Path, processor: Option<&Value>) -> Result<(Vec<u8>, TokenizerInfo)> {
    let path = dir.join(TOKENIZER_FILE);
    let bytes = std::fs::read(&path).map_err(|_| CompressError::NotACheckpoint {
        path: dir.display().to_string(),
        reason: format!("no {TOKENIZER_FILE} (a fast tokenizer is required)"),
    })?;
    serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| CompressError::BadJson { path: path.display().to_string(), reason: e.to_string() })?;
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.exists() { Some(read_json(&config_path)?) } else { None };
    let info = TokenizerInfo {
        file: TOKENIZER_FILE.to_string(),
        sha256: sha256_hex(&bytes),
        chat_template: chat_template(dir, config.as_ref(), processor)?,
        bos_token: special(config.as_ref(), "bos_token"),
        eos_token: special(config.as_ref(), "eos_token"),
        pad_token: special(config.as_ref(), "pad_token"),
        image_token: "<image>".into(),
        fake_image_token: "<fake_token_around_image>".into(),
        global_image_token: "<global-img>".into(),
        end_of_utterance_token: "<end_of_utterance>".into(),
    };
    Ok((bytes, info))
}
