//! `cargo xtask test`: fmt check, clippy (native and wasm32) with warnings as errors, native tests
//! (GPU kernels on Vulkan, e.g. lavapipe), then the browser tests in headless Chromium.

use anyhow::Result;

use crate::setup::{self, CHROMEDRIVER};
use crate::util::{cargo, root, run as sh};

/// Crates with wasm-bindgen tests, run from their directory: in headless Chromium where the tests
/// say `run_in_browser` (those crates have a `webdriver.json`), else in Node.
const WASM_TEST_CRATES: [(&str, &str); 2] =
    [("pocketvlm-runtime", "crates/runtime"), ("pocketvlm-processor", "crates/processor")];
/// Crates that must build for wasm32.
const WASM_CRATES: [&str; 3] = ["pocketvlm-format", "pocketvlm-processor", "pocketvlm-runtime"];

#[derive(clap::Args)]
pub struct Args {
    /// Skip installing prerequisites.
    #[arg(long)]
    no_install: bool,
    /// Skip the browser tests.
    #[arg(long)]
    native_only: bool,
}

pub fn run_browser_tests() -> Result<()> {
    for (package, dir) in WASM_TEST_CRATES {
        sh(cargo()
            .current_dir(root().join(dir))
            .env("CHROMEDRIVER", CHROMEDRIVER)
            .env("WASM_BINDGEN_TEST_TIMEOUT", "600")
            .args(["test", "-p", package, "--target", "wasm32-unknown-unknown"]))?;
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if !args.no_install {
        setup::ensure_all()?;
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
