//! `cargo xtask build-web`: the wasm engine in release mode, its JavaScript bindings
//! (`wasm-bindgen --target web`), `wasm-opt -Oz` when binaryen is installed, then the npm package
//! (`web/dist/pocketvlm`) and the demo site (`web/dist/site`, the demo with the package beside it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::setup;
use crate::util::{cargo, human_bytes, output, root, run};

/// `wasm-opt` from the npm package `binaryen` (`npm install` in `web/`) or from `PATH`.
fn find_wasm_opt() -> Option<PathBuf> {
    let local = root().join("web/node_modules/.bin/wasm-opt");
    if local.is_file() {
        return Some(local);
    }
    output(Command::new("wasm-opt").arg("--version")).map(|_| PathBuf::from("wasm-opt"))
}

/// Copy the files of `from` (recursively) into `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len())
}

/// Build everything; returns the demo site's directory (`index.html`, the package under
/// `pocketvlm/`).
pub fn run_build() -> Result<PathBuf> {
    setup::ensure_rust_parts()?;
    setup::ensure_wasm_bindgen_cli()?;
    run(cargo().args(["build", "-p", "pocketvlm-wasm", "--release", "--target", "wasm32-unknown-unknown"]))?;
    let web = root().join("web");
    let pkg = web.join("pkg");
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let raw = target_dir.join("wasm32-unknown-unknown/release/pocketvlm_wasm.wasm");
    run(Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(&pkg)
        .arg(&raw))?;
    let wasm = pkg.join("pocketvlm_wasm_bg.wasm");
    let bound = file_size(&wasm)?;
    match find_wasm_opt() {
        Some(wasm_opt) => {
            let optimized = pkg.join("pocketvlm_wasm_bg.opt.wasm");
            run(Command::new(&wasm_opt)
                .arg("-Oz")
                .args([
                    "--enable-bulk-memory",
                    "--enable-nontrapping-float-to-int",
                    "--enable-sign-ext",
                    "--enable-mutable-globals",
                    "--enable-reference-types",
                    "--enable-multivalue",
                ])
                .arg(&wasm)
                .arg("-o")
                .arg(&optimized))?;
            std::fs::rename(&optimized, &wasm)?;
            eprintln!("build-web: wasm-opt -Oz: {} → {}", human_bytes(bound), human_bytes(file_size(&wasm)?));
        }
        None => eprintln!(
            "build-web: wasm-opt not found (neither web/node_modules/.bin/wasm-opt nor on PATH): the .wasm \
             is not size-optimized; `npm install` in web/ installs binaryen"
        ),
    }

    let dist = web.join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    let package = dist.join("pocketvlm");
    copy_dir(&web.join("src"), &package.join("src"))?;
    std::fs::create_dir_all(package.join("pkg"))?;
    for file in ["pocketvlm_wasm.js", "pocketvlm_wasm_bg.wasm"] {
        std::fs::copy(pkg.join(file), package.join("pkg").join(file))?;
    }
    std::fs::copy(web.join("package.json"), package.join("package.json"))?;
    let site = dist.join("site");
    copy_dir(&web.join("demo"), &site)?;
    copy_dir(&package, &site.join("pocketvlm"))?;

    let wasm_bytes = file_size(&package.join("pkg/pocketvlm_wasm_bg.wasm"))?;
    println!("pocketvlm_wasm_bg.wasm: {} ({wasm_bytes} bytes)", human_bytes(wasm_bytes));
    println!("npm package: {}", package.display());
    println!("demo site:   {}", site.display());
    Ok(site)
}
