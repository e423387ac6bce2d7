//! Installing what the tests need, only where it is missing: Debian packages (when root), the
//! wasm32 target, rustfmt/clippy, `wasm-bindgen-cli` at exactly the `wasm-bindgen` version in
//! `Cargo.lock`, and the npm dev dependencies of `web/` (playwright-core, binaryen).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{output, root, run};

/// Debian packages: Vulkan lavapipe for native GPU tests, Chromium + ChromeDriver for browser
/// tests, Node and npm for the demo's end-to-end test (playwright-core) and `wasm-opt` (binaryen).
pub const APT_PACKAGES: [&str; 6] =
    ["mesa-vulkan-drivers", "libvulkan1", "chromium", "chromium-driver", "nodejs", "npm"];
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub fn ensure_all() -> Result<()> {
    ensure_apt_packages()?;
    ensure_rust_parts()?;
    ensure_wasm_bindgen_cli()?;
    ensure_npm_deps()?;
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// Whether `package`'s command already runs although Debian's package is not installed:
/// NodeSource's `nodejs` bundles npm and conflicts with Debian's `npm`.
fn provided_otherwise(package: &str) -> bool {
    match package {
        "nodejs" => output(Command::new("node").arg("--version")).is_some(),
        "npm" => output(Command::new("npm").arg("--version")).is_some(),
        _ => false,
    }
}

fn apt_missing() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
                && !provided_otherwise(p)
        })
        .collect()
}

pub fn ensure_apt_packages() -> Result<()> {
    let missing = apt_missing();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}: run `sudo apt-get install -y {}`", missing.join(" "));
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

pub fn ensure_rust_parts() -> Result<()> {
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|l| l.trim() == "wasm32-unknown-unknown") {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed"])).unwrap_or_default();
    for c in ["rustfmt", "clippy"] {
        if !components.lines().any(|l| l.starts_with(c)) {
            run(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    Ok(())
}

/// The `wasm-bindgen` version pinned in `Cargo.lock`.
pub fn wasm_bindgen_version() -> Result<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\""
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_string());
        }
    }
    bail!("wasm-bindgen is not in Cargo.lock")
}

pub fn ensure_wasm_bindgen_cli() -> Result<()> {
    let want = wasm_bindgen_version()?;
    let have = output(Command::new("wasm-bindgen-test-runner").arg("--version")).unwrap_or_default();
    if have.split_whitespace().last() == Some(want.as_str()) {
        return Ok(());
    }
    // Not --locked: one of the CLI's locked dependencies is missing from the registry.
    run(Command::new("cargo").args(["install", "wasm-bindgen-cli", "--version", &want]))
}

/// `npm install` in `web/` (the versions in `web/package-lock.json`) when playwright-core is missing.
pub fn ensure_npm_deps() -> Result<()> {
    let web = root().join("web");
    if web.join("node_modules/playwright-core").is_dir() {
        return Ok(());
    }
    run(Command::new("npm").current_dir(&web).args(["install", "--no-audit", "--no-fund"]))
}
