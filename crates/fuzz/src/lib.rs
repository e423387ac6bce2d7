//! Fuzz targets for every parser of bytes that come from outside: model manifests, shard sets
//! against their tensor tables, Hugging Face checkpoint directories, image files, and chat
//! messages rendered through the checkpoint's template.
//!
//! Each target is a plain function of one input. Its contract: whatever the bytes, it returns
//! (the code under test answered with a value or a typed error) — a panic, an abort, a hang or
//! an allocation beyond the fuzzer's limit is a finding. Where the code accepts an input, the
//! target also checks what must then hold (a manifest re-reads to itself, a decoded image has
//! `w · h · 3` bytes, streamed text equals the whole decode, …).
//!
//! The same functions run under libFuzzer (`crates/fuzz/libfuzzer`, driven by
//! `cargo xtask fuzz`) and, over the committed corpora, as ordinary tests (`tests/replay.rs`).

pub mod chat;
pub mod checkpoint;
pub mod image;
pub mod manifest;
pub mod seeds;
pub mod segments;
pub mod shards;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pocketvlm_compress::checkpoint::SourceMeta;
use pocketvlm_processor::{Preprocessor, Prompt};

/// One fuzz target: its name (the libFuzzer binary and corpus folder) and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target { name: "manifest", run: manifest::run },
    Target { name: "shards", run: shards::run },
    Target { name: "checkpoint", run: checkpoint::run },
    Target { name: "image", run: image::run },
    Target { name: "chat", run: chat::run },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The repository root (this crate lives in `crates/fuzz`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A target's corpus folder (committed; replayed by the tests).
pub fn corpus_dir(target: &str) -> PathBuf {
    repo_root().join("crates/fuzz/corpus").join(target)
}

/// Inputs that once failed a target (each kept as a regression test).
pub fn regressions_dir(target: &str) -> PathBuf {
    repo_root().join("crates/fuzz/regressions").join(target)
}

/// The tiny fixture checkpoint's processor and prompt, read once per process: the settings
/// the image and chat targets run under.
pub struct Fixture {
    pub preprocessor: Preprocessor,
    pub prompt: Prompt,
}

/// [`Fixture`] from `tests/fixtures/tiny`.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = repo_root().join("tests/fixtures/tiny");
        let meta = SourceMeta::read(&dir).expect("the tiny fixture checkpoint reads");
        Fixture {
            preprocessor: Preprocessor::new(&meta.processor).expect("the fixture's processor settings"),
            prompt: Prompt::new(&meta.tokenizer_bytes, &meta.tokenizer, meta.processor.image_seq_len)
                .expect("the fixture's tokenizer"),
        }
    })
}
