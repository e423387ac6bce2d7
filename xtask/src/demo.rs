//! `cargo xtask demo`: obtain a SmolVLM checkpoint (a local directory, or a hub repo id through
//! `hf-hub`), convert it when it changed, build the web package and demo site, and serve the
//! demo with the model on `127.0.0.1`.
//!
//! The model is converted with the dense recipe. The runtime now runs every compressed format
//! (low-rank, quantized, the latent KV cache), but the compressed default recipe is still to be
//! chosen by measurement on real weights (see BENCHMARKS.md); until then the demo stays dense. The
//! converted model lives in `target/demo/models/<name>-<hash of the source path>` beside a stamp
//! (`source.json`: recipe, format version, name, size and modification time of every source file);
//! a later run with the same stamp and an intact model directory skips the conversion.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pocketvlm_compress::{ConvertOptions, convert};
use pocketvlm_format::{VERSION, dir};

use crate::serve::{Mount, Server};
use crate::util::root;
use crate::{build_web, hub};

#[derive(clap::Args)]
pub struct Args {
    /// A local Hugging Face SmolVLM checkpoint directory, or a hub repo id (downloaded from
    /// `HF_ENDPOINT`, default https://huggingface.co, into the Hugging Face cache).
    #[arg(long, default_value = hub::DEFAULT_REPO)]
    model: String,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

const STAMP_FILE: &str = "source.json";

/// What the converted model was made from: changes to any of it mean converting again.
fn stamp(source: &Path) -> Result<serde_json::Value> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(source).with_context(|| format!("reading {}", source.display()))?;
    for entry in entries {
        let entry = entry?;
        // `metadata` follows symlinks (the hub cache links snapshot files to blobs).
        let meta = std::fs::metadata(entry.path())?;
        if meta.is_file() {
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            files.push(serde_json::json!([
                entry.file_name().to_string_lossy(),
                meta.len(),
                modified.map(|d| d.as_nanos().to_string()),
            ]));
        }
    }
    files.sort_by_key(|f| f[0].as_str().map(str::to_string));
    Ok(serde_json::json!({
        "recipe": "dense",
        "format_version": VERSION,
        "converter": env!("CARGO_PKG_VERSION"),
        "files": files,
    }))
}

/// Whether `out` holds a complete model converted from exactly `want`.
fn up_to_date(out: &Path, want: &serde_json::Value) -> bool {
    let Ok(text) = std::fs::read_to_string(out.join(STAMP_FILE)) else { return false };
    let same = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|have| &have == want);
    same && dir::read_manifest(out).is_ok_and(|m| {
        out.join(&m.tokenizer.file).is_file()
            && m.shards.iter().all(|s| std::fs::metadata(out.join(&s.file)).is_ok_and(|f| f.len() == s.bytes))
    })
}

/// The directory for the model converted from `source`.
fn model_dir(source: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let canonical = source.canonicalize().unwrap_or_else(|_| source.to_path_buf());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    canonical.hash(&mut h);
    // The hub cache's snapshot directory is a commit hash: name the model after the repo.
    let name = canonical
        .ancestors()
        .filter_map(|p| p.file_name()?.to_str())
        .find_map(|n| n.strip_prefix("models--").map(|r| r.replace("--", "-")))
        .or_else(|| canonical.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    root().join("target/demo/models").join(format!("{name}-{:08x}", h.finish() as u32))
}

/// Convert `source` into its demo model directory unless that is already up to date.
pub fn prepare_model(source: &Path) -> Result<PathBuf> {
    let out = model_dir(source);
    let want = stamp(source)?;
    if up_to_date(&out, &want) {
        eprintln!("demo: {} is up to date (converted from {})", out.display(), source.display());
        return Ok(out);
    }
    eprintln!("demo: converting {} into {} (dense recipe)", source.display(), out.display());
    // A half-written directory must not pass for a converted model: the stamp goes last.
    let _ = std::fs::remove_file(out.join(STAMP_FILE));
    convert(source, &out, &ConvertOptions::default())
        .with_context(|| format!("converting {} into {}", source.display(), out.display()))?;
    std::fs::write(out.join(STAMP_FILE), serde_json::to_vec_pretty(&want)?)?;
    Ok(out)
}

pub fn run(args: Args) -> Result<()> {
    let source = hub::obtain(&args.model)?;
    let model = prepare_model(&source)?;
    let site = build_web::run_build()?;
    let server = Server::start_on(args.port, vec![Mount::new("", &site), Mount::new("model", &model)])?;
    // Tools (and the tests) read this line to find the server.
    println!("PocketVLM demo: {}/", server.url());
    println!("  model: {} (from {})", model.display(), source.display());
    println!("  serving {} and the model under /model/; press Ctrl-C to stop", site.display());
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_changes_with_the_source_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let a = stamp(dir.path()).unwrap();
        assert_eq!(a, stamp(dir.path()).unwrap());
        std::fs::write(dir.path().join("config.json"), b"{ }").unwrap();
        assert_ne!(a, stamp(dir.path()).unwrap());
    }

    #[test]
    fn hub_snapshots_are_named_after_their_repo() {
        let snapshot = Path::new("/cache/hub/models--HuggingFaceTB--SmolVLM-256M-Instruct/snapshots/abc123");
        let name = model_dir(snapshot).file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("HuggingFaceTB-SmolVLM-256M-Instruct-"), "{name}");
        let local = model_dir(Path::new("/some/where/my ckpt"));
        assert!(local.file_name().unwrap().to_string_lossy().starts_with("my_ckpt-"));
    }
}
