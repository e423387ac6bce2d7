//! `cargo xtask test`: fmt check, clippy (native and wasm32) with warnings as errors, native tests
//! (GPU kernels on Vulkan, e.g. lavapipe), then the browser tests in headless Chromium.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pocketvlm_compress::model::reference::{
    LOW_RANK_TEST_RECIPES, Reference, TEST_CASES, TEST_RECIPES, TestRecipe,
};
use pocketvlm_format::{MANIFEST_FILE, dir};
use pocketvlm_processor::decode_image;

use crate::serve::{Mount, Server};
use crate::setup::{self, CHROMEDRIVER};
use crate::util::{cargo, convert_tiny, root, run as sh};
use crate::{build_web, e2e, hub_mimic};

/// Crates with wasm-bindgen tests, run from their directory: in headless Chromium where the tests
/// say `run_in_browser` (those crates have a `webdriver.json`), else in Node.
const WASM_TEST_CRATES: [(&str, &str); 3] = [
    ("pocketvlm-runtime", "crates/runtime"),
    ("pocketvlm-processor", "crates/processor"),
    ("pocketvlm-wasm", "crates/wasm"),
];
/// Crates that must build for wasm32.
const WASM_CRATES: [&str; 4] =
    ["pocketvlm-format", "pocketvlm-processor", "pocketvlm-runtime", "pocketvlm-wasm"];

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
/// (`tests/fixtures`), `/corrupt/` (the converted fixture with one byte of its first shard
/// flipped) and `/quant/` (the quantized variants of the tiny fixture with the CPU reference's
/// expectations, see [`quantized_tiny`]). Then the demo page end to end (`web/tests/e2e.mjs`, playwright-core) and
/// `cargo xtask demo` against a local mimic of the Hugging Face hub.
pub fn run_browser_tests() -> Result<()> {
    let tiny = convert_tiny()?;
    let corrupt = corrupt_copy(&tiny)?;
    let quant = quantized_tiny()?;
    let server = Server::start(vec![
        Mount::new("model/tiny", &tiny),
        Mount::new("fixtures", root().join("tests/fixtures")),
        Mount::new("corrupt", &corrupt),
        Mount::new("quant", &quant),
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
    e2e::run_demo_e2e(&site)?;
    hub_mimic::check_demo_with_hub_mimic()?;
    Ok(())
}

/// The tiny fixture written by every recipe of [`TEST_RECIPES`] (quantized, dense) and
/// [`LOW_RANK_TEST_RECIPES`] (`svd` factors, float or quantized, whose decoder caches its
/// latents), in `target/xtask/quant`: `<recipe>/model/` (the model directory) and
/// `<recipe>/expected/<case>.json` for each of [`TEST_CASES`] (the transformers case with the CPU
/// reference's prompt ids, top logits and greedy ids, [`Reference::expectation`], latent K/V
/// cache; its image and tiles paths lead to `/fixtures/` on the test server), and `index.json`
/// listing the `recipes` (dense, what the GPU runs today), the `low_rank_recipes` and the
/// `cases`.
fn quantized_tiny() -> Result<PathBuf> {
    let out = root().join("target/xtask/quant");
    for recipe in TEST_RECIPES.iter().chain(&LOW_RANK_TEST_RECIPES) {
        write_test_model(recipe, &out.join(recipe.name))?;
    }
    let names = |recipes: &[TestRecipe]| recipes.iter().map(|r| r.name).collect::<Vec<_>>();
    let index = serde_json::json!({
        "recipes": names(&TEST_RECIPES),
        "low_rank_recipes": names(&LOW_RANK_TEST_RECIPES),
        "cases": TEST_CASES,
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(out)
}

/// One recipe's model and expectations in `dir` (see [`quantized_tiny`]).
fn write_test_model(recipe: &TestRecipe, dir: &Path) -> Result<()> {
    let expected_dir = root().join("tests/fixtures/tiny/expected");
    let model = dir.join("model");
    if model.exists() {
        std::fs::remove_dir_all(&model).with_context(|| format!("removing {}", model.display()))?;
    }
    recipe
        .build(&root().join("tests/fixtures/tiny"), &model)
        .with_context(|| format!("writing the tiny fixture's {} variant", recipe.name))?;
    let reference = Reference::open(&model)?;
    std::fs::create_dir_all(dir.join("expected"))?;
    for case in TEST_CASES {
        let file = expected_dir.join(format!("{case}.json"));
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        let image = match json["image"].as_str() {
            Some(rel) => Some(decode_image(&std::fs::read(expected_dir.join(rel))?)?),
            None => None,
        };
        json = reference.expectation(&json, image.as_ref())?;
        // from /quant/<recipe>/expected/ to /fixtures/tiny/expected/ on the server
        let to_fixtures = |rel: &str| format!("../../../fixtures/tiny/expected/{rel}");
        if let Some(rel) = json["image"].as_str() {
            json["image"] = to_fixtures(rel).into();
        }
        if let Some(rel) = json["tiles_u8"]["file"].as_str() {
            json["tiles_u8"]["file"] = to_fixtures(rel).into();
        }
        std::fs::write(dir.join("expected").join(format!("{case}.json")), serde_json::to_vec(&json)?)?;
    }
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
