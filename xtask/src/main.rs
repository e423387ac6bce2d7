//! `cargo xtask <command>`: the one entry point for building, converting, testing and serving.

mod bench;
mod build_web;
mod caption;
mod compress;
mod demo;
mod e2e;
mod eval;
mod fuzz;
mod hub;
mod hub_mimic;
mod peer;
mod progress;
mod serve;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "PocketVLM developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face SmolVLM checkpoint into a PocketVLM model directory.
    Compress(Box<compress::Args>),
    /// Caption an image (or answer a text prompt) with a converted model on the native GPU (or, with
    /// `--cpu`, the compressor's CPU reference model).
    Caption(caption::Args),
    /// Fidelity of compressed models against the uncompressed checkpoint (perplexity, KL, top-1).
    Eval(eval::Args),
    /// Time the dense path natively and in headless Chromium: time to first token, prefill and
    /// decode rates, GPU memory.
    Bench(bench::Args),
    /// Validate a model directory (manifest, shard checksums) and print its summary.
    Inspect(compress::InspectArgs),
    /// Rotate and quantize a float model directory (dense or low-rank) without recompressing it.
    Quantize(compress::QuantizeArgs),
    /// Install what the tests need (when missing), then run fmt, clippy, native and browser tests.
    Test(test::Args),
    /// Fuzz the parsers of outside bytes with libFuzzer (nightly toolchain and cargo-fuzz,
    /// installed when missing) and merge new coverage into the committed corpora.
    Fuzz(fuzz::Args),
    /// Install the test prerequisites only.
    Setup,
    /// Build the wasm engine (release, wasm-bindgen, wasm-opt when available), the npm package
    /// (web/dist/pocketvlm) and the demo site (web/dist/site).
    BuildWeb,
    /// The demo: obtain a SmolVLM checkpoint (local directory or hub repo id), compress it (by
    /// default laser with a K/V latent caching 47.4 % of dense, W8A8) when it or the recipe changed, build the web
    /// package and serve the demo page with the model on 127.0.0.1.
    Demo(demo::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compress(args) => compress::run(*args),
        Command::Caption(args) => caption::run(args),
        Command::Inspect(args) => compress::inspect(args),
        Command::Quantize(args) => compress::quantize(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Test(args) => test::run(args),
        Command::Fuzz(args) => fuzz::run_fuzz(args),
        Command::Setup => setup::ensure_all(),
        Command::BuildWeb => build_web::run_build().map(drop),
        Command::Demo(args) => demo::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
