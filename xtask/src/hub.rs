//! Obtaining a Hugging Face SmolVLM checkpoint for `cargo xtask demo`: a local directory as it
//! is, or a repo id (`owner/name`) through the `hf-hub` crate, which downloads into the Hugging
//! Face cache (`HF_HOME`, default `~/.cache/huggingface`) from `HF_ENDPOINT` (default
//! `https://huggingface.co`). Only the files the converter reads are downloaded; a repo whose
//! files are all in the cache is used without the network.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

/// The checkpoint `cargo xtask demo` uses when no `--model` is given.
pub const DEFAULT_REPO: &str = "HuggingFaceTB/SmolVLM-256M-Instruct";

/// Files of a checkpoint the converter reads besides the weights (the first two are required).
const CONFIG_FILES: [&str; 8] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
    "generation_config.json",
];
const SINGLE_WEIGHTS: &str = "model.safetensors";
const WEIGHT_INDEX: &str = "model.safetensors.index.json";

/// Whether `spec` has the shape of a hub repo id: `owner/name` of `[A-Za-z0-9._-]`.
pub fn is_repo_id(spec: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['.', '-'])
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    matches!(spec.split_once('/'), Some((owner, name)) if ok(owner) && ok(name) && !name.contains('/'))
}

/// The shard files listed by a `model.safetensors.index.json`.
fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
    let map = json["weight_map"]
        .as_object()
        .with_context(|| format!("{} has no weight_map object", index.display()))?;
    let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
    shards.sort();
    shards.dedup();
    if shards.iter().any(|s| s.contains(['/', '\\']) || s.starts_with('.')) {
        bail!("{} names a shard outside the checkpoint directory", index.display());
    }
    Ok(shards)
}

/// A local checkpoint directory, or `spec` downloaded from the hub (or found in its cache).
pub fn obtain(spec: &str) -> Result<PathBuf> {
    let local = Path::new(spec);
    if local.is_dir() {
        if !local.join("config.json").is_file() {
            bail!("{} is not a Hugging Face checkpoint directory: it has no config.json", local.display());
        }
        return Ok(local.to_path_buf());
    }
    if !is_repo_id(spec) {
        bail!(
            "--model {spec}: no such directory, and not a Hugging Face repo id (owner/name). Pass a \
             local SmolVLM checkpoint directory (config.json, model.safetensors, tokenizer.json, …) or a \
             repo id such as {DEFAULT_REPO}"
        );
    }
    match download(spec) {
        Ok(dir) => Ok(dir),
        Err(e) => match cached(spec) {
            Some(dir) => {
                eprintln!(
                    "demo: the hub is not reachable ({e:#}); using the cached copy in {}",
                    dir.display()
                );
                Ok(dir)
            }
            None => {
                let endpoint =
                    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
                bail!(
                    "could not download {spec} from {endpoint} ({e:#}), and it is not in the Hugging Face \
                     cache. Without network access, pass a local checkpoint: `cargo xtask demo --model \
                     <dir>` where <dir> holds the repo's files (config.json, model.safetensors, \
                     tokenizer.json, …); or set HF_ENDPOINT to a reachable mirror"
                )
            }
        },
    }
}

/// The weight files of a checkpoint: the single [`SINGLE_WEIGHTS`], or the shards listed by
/// its [`WEIGHT_INDEX`] (`has` says whether a file exists, `index` obtains the index file).
fn weight_files(has: impl Fn(&str) -> bool, index: impl FnOnce() -> Result<PathBuf>) -> Result<Vec<String>> {
    if has(SINGLE_WEIGHTS) {
        return Ok(vec![SINGLE_WEIGHTS.to_string()]);
    }
    if has(WEIGHT_INDEX) {
        return index_shards(&index()?);
    }
    bail!("neither {SINGLE_WEIGHTS} nor {WEIGHT_INDEX}")
}

/// Download the files the converter needs; returns the snapshot directory.
fn download(repo_id: &str) -> Result<PathBuf> {
    let api = ApiBuilder::from_env().with_progress(true).build().context("setting up the hub client")?;
    let repo = api.model(repo_id.to_string());
    let info = repo.info().with_context(|| format!("listing the files of {repo_id}"))?;
    let has = |file: &str| info.siblings.iter().any(|s| s.rfilename == file);
    for required in &CONFIG_FILES[..2] {
        if !has(required) {
            bail!("{repo_id} has no {required}: it is not a SmolVLM checkpoint");
        }
    }
    let mut snapshot = None;
    for file in CONFIG_FILES.iter().copied().filter(|f| has(f)) {
        let path = repo.get(file).with_context(|| format!("downloading {repo_id}/{file}"))?;
        snapshot.get_or_insert(path.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    let index = || repo.get(WEIGHT_INDEX).with_context(|| format!("downloading {repo_id}/{WEIGHT_INDEX}"));
    let weights = weight_files(has, index).with_context(|| format!("{repo_id} has no usable weights"))?;
    for file in &weights {
        repo.get(file).with_context(|| format!("downloading {repo_id}/{file}"))?;
    }
    snapshot.context("no files downloaded")
}

/// The cached snapshot of `repo_id` when it holds a complete checkpoint.
fn cached(repo_id: &str) -> Option<PathBuf> {
    let repo = Cache::from_env().repo(Repo::model(repo_id.to_string()));
    let config = repo.get("config.json")?;
    repo.get("tokenizer.json")?;
    let dir = config.parent()?.to_path_buf();
    let index = || repo.get(WEIGHT_INDEX).context("no cached index");
    let weights = weight_files(|f| repo.get(f).is_some(), index).ok()?;
    let complete = weights.iter().all(|s| repo.get(s).is_some());
    complete.then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_recognized() {
        for ok in ["HuggingFaceTB/SmolVLM-256M-Instruct", "a/b", "org_x/model.v2"] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in ["", "a", "a/", "/b", "a/b/c", "../x", "a/..", "a b/c", "./m"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn shard_lists_come_from_the_index_and_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(WEIGHT_INDEX);
        std::fs::write(
            &index,
            r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(index_shards(&index).unwrap(), ["m-1.safetensors", "m-2.safetensors"]);
        std::fs::write(&index, r#"{"weight_map": {"a": "../evil.safetensors"}}"#).unwrap();
        assert!(index_shards(&index).is_err());
        std::fs::write(&index, r#"{"metadata": {}}"#).unwrap();
        assert!(index_shards(&index).is_err());
    }

    #[test]
    fn a_path_that_is_neither_a_directory_nor_a_repo_id_is_refused() {
        let e = obtain("/no/such/dir").unwrap_err().to_string();
        assert!(e.contains("no such directory") && e.contains("repo id"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = obtain(dir.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("no config.json"), "{e}");
    }
}
