//! `cargo xtask test`: fmt check, clippy (native and wasm32) with warnings as errors, native tests
//! (GPU kernels on Vulkan, e.g. lavapipe), then the browser tests in headless Chromium.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pocketvlm_format::{MANIFEST_FILE, dir};

use crate::serve::{Mount, Server};
use crate::setup::{self, CHROMEDRIVER};
use crate::util::{cargo, convert_tiny, root, run as sh};
use crate::{build_web, e2e, hub_mimic};

/// Crates with wasm-bindgen tests, run from their directory: in headless Chromium where the tests
/// say `run_in_browser` (those crates have a `webdriver.json`), else in Node.
const WASM_TEST_CRATES: [(&str, &str); 3] = [
    ("pocketvlm-runtime", "crates/runtime"),
    ("pocketvlm-processor", "crates/processor"),
    ("pocketvlm-web", "crates/web"),
];
/// Crates that must build for wasm32.
const WASM_CRATES: [&str; 4] =
    ["pocketvlm-format", "pocketvlm-processor", "pocketvlm-runtime", "pocketvlm-web"];

#[derive(clap::Args)]
pub struct Args {
    /// Skip installing prerequisites.
    #[arg(long)]
    no_install: bool,
    /// Skip the browser tests.
    #[arg(long, conflicts_with = "browser_only")]
    native_only: bool,
    /// Run the browser tests only (no fmt, clippy or native tests).
    #[arg(long)]
    browser_only: bool,
}

/// The browser tests. The whole-model test (`crates/runtime/tests/model_web.rs`) and the worker
/// fetch test (`fetch_worker.rs`) fetch the converted tiny fixture and the transformers
/// expectations from a local server, whose URL they get at build time from
/// `POCKETVLM_TEST_SERVER`: `/model/tiny/` (the converted fixture), `/fixtures/`
/// (`tests/fixtures`) and `/corrupt/` (the converted fixture with one byte of its first shard
/// flipped). Then the demo page end to end (`web/tests/e2e.mjs`, playwright-core) and
/// `cargo xtask demo` against a local mimic of the Hugging Face hub.
pub fn run_browser_tests() -> Result<()> {
    let tiny = convert_tiny()?;
    let corrupt = corrupt_copy(&tiny)?;
    let server = Server::start(vec![
        Mount::new("model/tiny", &tiny),
        Mount::new("fixtures", root().join("tests/fixtures")),
        Mount::new("corrupt", &corrupt),
    ])?;
    eprintln!("xtask test: serving the tiny model and fixtures at {}", server.url());
    for (package, dir) in WASM_TEST_CRATES {
        sh(cargo()
            .current_dir(root().join(dir))
            .env("CHROMEDRIVER", CHROMEDRIVER)
            .env("WASM_BINDGEN_TEST_TIMEOUT", "600")
            .env("POCKETVLM_TEST_SERVER", server.url())
            .args(["test", "-p", package, "--target", "wasm32-unknown-unknown"]))?;
    }
    let site = build_web::run_build()?;
    e2e::run_demo_e2e(&site, &tiny)?;
    hub_mimic::check_demo_with_hub_mimic(&tiny)?;
    Ok(())
}

/// A copy of the model directory `model` whose first shard has one byte flipped (its manifest
/// still lists the original checksum), in `target/xtask/corrupt-model`.
fn corrupt_copy(model: &Path) -> Result<PathBuf> {
    let manifest = dir::read_manifest(model)?;
    let out = root().join("target/xtask/corrupt-model");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let files = [MANIFEST_FILE, manifest.tokenizer.file.as_str()].into_iter();
    for file in files.chain(manifest.shards.iter().map(|s| s.file.as_str())) {
        std::fs::copy(model.join(file), out.join(file)).with_context(|| format!("copying {file}"))?;
    }
    let first = out.join(&manifest.shards.first().context("the model has no shards")?.file);
    let mut bytes = std::fs::read(&first)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&first, bytes)?;
    Ok(out)
}

pub fn run(args: Args) -> Result<()> {
    if !args.no_install {
        setup::ensure_all()?;
    }
    if args.browser_only {
        return run_browser_tests();
    }
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let mut wasm_clippy = cargo();
    wasm_clippy.args(["clippy", "--target", "wasm32-unknown-unknown", "--all-targets"]);
    for p in WASM_CRATES {
        wasm_clippy.args(["-p", p]);
    }
    sh(wasm_clippy.args(["--", "-D", "warnings"]))?;
    sh(cargo().args(["test", "--workspace"]))?;
    if !args.native_only {
        run_browser_tests()?;
    }
    eprintln!("xtask test: all checks passed");
    Ok(())
}
