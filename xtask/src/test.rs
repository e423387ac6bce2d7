//! `cargo xtask test`: fmt check, clippy (native and wasm32) with warnings as errors, native tests
//! (GPU kernels on Vulkan, e.g. lavapipe), then the browser tests in headless Chromium.

use anyhow::Result;

use crate::setup::{self, CHROMEDRIVER};
use crate::util::{cargo, root, run as sh};

/// Crates whose wasm-bindgen tests run in the browser; each has a `webdriver.json`.
const BROWSER_CRATES: [(&str, &str); 1] = [("pocketvlm-runtime", "crates/runtime")];
/// Crates that must build for wasm32.
const WASM_CRATES: [&str; 2] = ["pocketvlm-format", "pocketvlm-runtime"];

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
    for (package, dir) in BROWSER_CRATES {
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
