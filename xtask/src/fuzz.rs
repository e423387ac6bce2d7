//! `cargo xtask fuzz`: coverage-guided fuzzing of every parser of outside bytes with libFuzzer
//! (`cargo fuzz` on a nightly toolchain, installed when missing), the targets of
//! `crates/fuzz`.
//!
//! Each target runs until it has executed `--runs` inputs or `--max-seconds` have passed,
//! starting from its committed corpus (`crates/fuzz/corpus/<target>`) and the scratch corpus of
//! earlier runs (`target/fuzz/corpus/<target>`, where new inputs go). Then libFuzzer's minimal
//! set covering both (`-merge=1`) is computed, and its smallest inputs replace the fuzzer-found
//! part of the committed corpus, which the ordinary tests replay ([`keep_coverage`]). A
//! crash, a timeout or an allocation past libFuzzer's limit stops that target, leaves the input
//! in `crates/fuzz/libfuzzer/artifacts/<target>/` and fails the command: make it a regression
//! input (`crates/fuzz/regressions/<target>/`) and fix the code.
//!
//! Instrumentation: sanitizer coverage without AddressSanitizer (the code under test is safe
//! Rust; libFuzzer's own memory limits catch unbounded allocation), with debug assertions, so
//! integer overflow is a finding too.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::util::{output, root, run};

#[derive(Parser)]
pub struct Args {
    /// Targets to fuzz (all when none is named).
    targets: Vec<String>,
    /// Inputs to execute per target.
    #[arg(long, default_value_t = 1_000_000)]
    runs: u64,
    /// Seconds per target at most (libFuzzer's `-max_total_time`).
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
    /// Only write the seed inputs (from the fixtures and the built tiny models) into the
    /// committed corpora; fuzz nothing.
    #[arg(long)]
    seeds: bool,
}

const FUZZ_DIR: &str = "crates/fuzz/libfuzzer";
const TOOLCHAIN: &str = "+nightly";

/// What one target's run did (libFuzzer's final statistics).
struct Outcome {
    target: String,
    executions: u64,
    seconds: u64,
    corpus_before: usize,
    corpus_after: usize,
    failed: bool,
}

pub fn run_fuzz(args: Args) -> Result<()> {
    let names: Vec<String> = if args.targets.is_empty() {
        pocketvlm_fuzz::TARGETS.iter().map(|t| t.name.to_string()).collect()
    } else {
        args.targets.clone()
    };
    for name in &names {
        if pocketvlm_fuzz::target(name).is_none() {
            bail!("no fuzz target {name:?} (targets: {})", target_names());
        }
    }
    if args.seeds {
        return write_seeds(&names);
    }
    ensure_cargo_fuzz()?;
    run(&mut cargo_fuzz("build"))?;
    let mut outcomes = Vec::new();
    for name in &names {
        outcomes.push(fuzz_one(name, &args)?);
    }
    println!(
        "\n{:<12} {:>12} {:>8} {:>10} {:>16}  result",
        "target", "executions", "seconds", "exec/s", "corpus"
    );
    for o in &outcomes {
        println!(
            "{:<12} {:>12} {:>8} {:>10} {:>7} → {:>6}  {}",
            o.target,
            o.executions,
            o.seconds,
            o.executions / o.seconds.max(1),
            o.corpus_before,
            o.corpus_after,
            if o.failed { "FAILED (see the artifacts folder)" } else { "no finding" }
        );
    }
    if outcomes.iter().any(|o| o.failed) {
        bail!("a fuzz target found an input it fails on");
    }
    Ok(())
}

fn target_names() -> String {
    pocketvlm_fuzz::TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

fn fuzz_one(name: &str, args: &Args) -> Result<Outcome> {
    let committed = pocketvlm_fuzz::corpus_dir(name);
    let scratch = root().join("target/fuzz/corpus").join(name);
    std::fs::create_dir_all(&scratch)?;
    let corpus_before = count_files(&committed);
    let log = root().join(format!("target/fuzz/{name}.log"));
    eprintln!("fuzzing {name}: {} runs or {} s; log {}", args.runs, args.max_seconds, log.display());
    let status = cargo_fuzz("run")
        .arg(name)
        .arg(&scratch)
        .arg(&committed)
        .arg("--")
        .arg(format!("-runs={}", args.runs))
        .arg(format!("-max_total_time={}", args.max_seconds))
        .args(["-timeout=10", "-print_final_stats=1"])
        .stderr(std::fs::File::create(&log)?)
        .status()
        .context("starting cargo fuzz run")?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // libFuzzer's last words: "Done 155491 runs in 21 second(s)"
    let done = text.lines().filter_map(|l| l.strip_prefix("Done ")).next_back().unwrap_or_default();
    let number = |i: usize| done.split_whitespace().nth(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (executions, seconds) = (number(0), number(3));
    if status.success() {
        keep_coverage(name, &committed, &scratch)?;
    } else {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        eprintln!("{name} failed:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(Outcome {
        target: name.to_string(),
        executions,
        seconds,
        corpus_before,
        corpus_after: count_files(&committed),
        failed: !status.success(),
    })
}

/// The committed corpus: its seeds (`seed-*`), then the smallest inputs of libFuzzer's minimal
/// set covering it and the scratch corpus, up to [`COMMITTED_BYTES`] — the whole corpus of a long
/// run is tens of megabytes; it stays in the scratch folder for the next run.
fn keep_coverage(name: &str, committed: &Path, scratch: &Path) -> Result<()> {
    let minimal = root().join("target/fuzz/minimal").join(name);
    if minimal.exists() {
        std::fs::remove_dir_all(&minimal)?;
    }
    std::fs::create_dir_all(&minimal)?;
    let mut merge = cargo_fuzz("run");
    merge.arg(name).arg(&minimal).arg(committed).arg(scratch).args(["--", "-merge=1"]);
    let merged = merge.output().context("starting the corpus merge")?;
    if !merged.status.success() {
        bail!("merging the {name} corpus failed:\n{}", String::from_utf8_lossy(&merged.stderr));
    }
    let files = |dir: &Path| -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            out.push((std::fs::metadata(&path)?.len(), path));
        }
        out.sort();
        Ok(out)
    };
    let is_seed = |p: &Path| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
    let mut seeds = Vec::new();
    for (_, path) in files(committed)? {
        if is_seed(&path) {
            seeds.push(std::fs::read(&path)?);
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    let mut budget = COMMITTED_BYTES;
    for (len, path) in files(&minimal)? {
        if len > budget {
            break;
        }
        let bytes = std::fs::read(&path)?;
        if !seeds.contains(&bytes) {
            std::fs::write(committed.join(path.file_name().expect("a file name")), bytes)?;
            budget -= len;
        }
    }
    Ok(())
}

/// Bytes of fuzzer-found inputs kept in each committed corpus (besides its seeds).
const COMMITTED_BYTES: u64 = 256 << 10;

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file())).count())
        .unwrap_or(0)
}

/// `cargo +nightly fuzz <verb>` with the project's harness and instrumentation.
fn cargo_fuzz(verb: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root()).env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO").args([
        TOOLCHAIN,
        "fuzz",
        verb,
        "--fuzz-dir",
        FUZZ_DIR,
        "--sanitizer",
        "none",
        "--debug-assertions",
    ]);
    c
}

fn ensure_cargo_fuzz() -> Result<()> {
    if output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])).is_none() {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        run(Command::new("cargo").args(["install", "cargo-fuzz"]))?;
    }
    Ok(())
}

/// The seeds of each target, written into its committed corpus.
fn write_seeds(names: &[String]) -> Result<()> {
    let models = seed_models()?;
    let models: Vec<&Path> = models.iter().map(PathBuf::as_path).collect();
    for name in names {
        let dir = pocketvlm_fuzz::corpus_dir(name);
        std::fs::create_dir_all(&dir)?;
        let seeds = pocketvlm_fuzz::seeds::seeds(name, &root(), &models).map_err(anyhow::Error::msg)?;
        for (file, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{file}")), bytes)?;
        }
    }
    Ok(())
}

/// The tiny fixture converted dense and in every test recipe (built when missing).
fn seed_models() -> Result<Vec<PathBuf>> {
    let mut dirs = vec![crate::util::convert_tiny()?];
    let quant = root().join("target/xtask/quant");
    if !quant.join("index.json").exists() {
        bail!("the quantized test models are missing: run `cargo xtask test --native-only` once first");
    }
    let mut recipes: Vec<PathBuf> = std::fs::read_dir(&quant)?
        .filter_map(|e| e.ok().map(|e| e.path().join("model")))
        .filter(|p| p.join("manifest.json").exists())
        .collect();
    recipes.sort();
    dirs.extend(recipes);
    Ok(dirs)
}
