//! `cargo xtask demo`: obtain a SmolVLM checkpoint (a local directory, or a hub repo id through
//! `hf-hub`), compress it when it or the recipe changed, build the web package and demo site, and
//! serve the demo with the model on `127.0.0.1`.
//!
//! The default recipe is the one chosen by measurement on real weights (BENCHMARKS.md, "The
//! demo's default recipe"): laser with a latent for K and V only (`q_proj` dense) caching 47.4 %
//! of the dense f16 K and V bytes, W8A8, calibrated on the 8 images shipped in `xtask/calib` (the
//! uncompressed model's answers of up to 256 tokens as targets) — among the recipes that download
//! about what a plain W8A8 conversion does and cache at most half of dense K and V, the one with
//! the least loss on three held-out texts. `--recipe`, `--bits`, the budgets, `--latent` and
//! `--calib` override it; `--recipe dense` is the plain conversion.
//!
//! The model lives in `target/demo/models/<name>-<recipe>-<hash of the source path and recipe>`
//! beside a stamp (`source.json`: the recipe, its budgets, bits and calibration images (sha256),
//! the format version, and the name, size and modification time of every source file); a later
//! run with the same stamp and an intact model directory skips the compression. Prepared
//! calibration samples (the uncompressed model's answers and image features: most of the work)
//! are kept in `target/demo/calib/`, so another recipe of the same checkpoint and images skips
//! preparing them again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use pocketvlm_compress::calib::{CalibOptions, CalibSource};
use pocketvlm_compress::quant::QuantOptions;
use pocketvlm_compress::{Budgets, DenseOptions, LowRankOptions, Method, Plan, compress, latent_named};
use pocketvlm_format::compression::Latent;
use pocketvlm_format::quant::{Bits, Scheme};
use pocketvlm_format::shards::sha256_hex;
use pocketvlm_format::{VERSION, dir};

use crate::compress::GPTQ_DAMP;
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
    /// Compression recipe: a low-rank method (laser, svd, asvd, svd-llm, qsvd) or `dense` (the
    /// plain conversion, float unless --bits says).
    #[arg(long, default_value = DEFAULT_METHOD)]
    recipe: String,
    /// Low-bit scheme: w8a8, w4a8 or w4a4 (INT4 weights get GPTQ from the calibration images), or
    /// `none` for a float model. Default: w8a8 with a low-rank recipe, none with `dense`.
    #[arg(long)]
    bits: Option<String>,
    /// Budget: text QKV factor parameters as a fraction of the dense Q, K and V weights.
    #[arg(long)]
    qkv_params: Option<f64>,
    /// Budget: KV-cache bytes per token as a fraction of dense f16 K and V (values when float;
    /// default 0.474 when no budget is given).
    #[arg(long)]
    kv_cache: Option<f64>,
    /// Budget: text MLP parameters as a fraction of the dense gate/up/down weights.
    #[arg(long)]
    ffn_params: Option<f64>,
    /// Budget: vision-tower QKV factor parameters as a fraction of dense.
    #[arg(long)]
    vision_qkv_params: Option<f64>,
    /// What the text latent is shared by: kv (default: K and V only, q_proj dense) or qkv (one
    /// latent for Q, K and V: `--latent qkv --qkv-params 1.0` is the recipe the demo used before,
    /// with the same cache and 8× the KL on text, BENCHMARKS.md "A latent for K and V only").
    #[arg(long)]
    latent: Option<String>,
    /// Calibration images folder (default: the photos shipped in `xtask/calib`).
    #[arg(long)]
    calib: Option<PathBuf>,
}

/// The default recipe's low-rank method.
const DEFAULT_METHOD: &str = "laser";
/// The default recipe's budget when none is given: the K/V cache at 47.4 % of dense f16 K and V
/// bytes (10 920 B per token on SmolVLM-256M, what the joint QKV latent at a 100 % parameter
/// budget caches).
const DEFAULT_KV_CACHE: f64 = 0.474;
/// The default recipe's latent (low-rank recipes).
const DEFAULT_LATENT: Latent = Latent::Kv;
/// The default recipe's low-bit scheme (low-rank recipes).
const DEFAULT_BITS: Scheme = Scheme::W8A8;
/// The calibration images that ship with the project, relative to the repository root.
pub const CALIB_DIR: &str = "xtask/calib";
/// Longest self-distilled calibration answer, in tokens. Eight images with `compress`'s default of
/// 32 give the decoder too few tokens: text perplexity +15.4 % on real weights against +5.4 % with
/// 256 (BENCHMARKS.md, "The demo's default recipe").
const CALIB_MAX_TOKENS: usize = 256;

/// How the demo compresses the checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoRecipe {
    /// The low-rank method; `None`: the dense conversion.
    pub method: Option<Method>,
    pub budgets: Budgets,
    /// What the text latent is shared by.
    pub latent: Latent,
    /// `None`: float.
    pub bits: Option<Scheme>,
    /// Calibration images (used when the method or GPTQ needs them, see [`Self::calibrated`]).
    pub calib: PathBuf,
}

impl Default for DemoRecipe {
    /// Laser, a K/V latent caching 47.4 % of dense, W8A8, calibrated on [`CALIB_DIR`].
    fn default() -> Self {
        Self {
            method: Method::parse(DEFAULT_METHOD),
            budgets: Budgets { kv_cache: Some(DEFAULT_KV_CACHE), ..Budgets::default() },
            latent: DEFAULT_LATENT,
            bits: Some(DEFAULT_BITS),
            calib: root().join(CALIB_DIR),
        }
    }
}

impl DemoRecipe {
    /// The recipe the command line asks for: the default, with what it overrides.
    fn from_args(args: &Args) -> Result<Self> {
        let given = Budgets {
            qkv_params: args.qkv_params,
            kv_cache: args.kv_cache,
            ffn_params: args.ffn_params,
            vision_qkv_params: args.vision_qkv_params,
        };
        let any_budget = given != Budgets::default();
        let method = match args.recipe.as_str() {
            "dense" if any_budget => bail!("--recipe dense takes no low-rank budget"),
            "dense" => None,
            name => Some(Method::parse(name).with_context(|| {
                format!("unknown --recipe {name:?}: dense, svd, asvd, svd-llm, qsvd or laser")
            })?),
        };
        let budgets = match method {
            Some(_) if !any_budget => Budgets { kv_cache: Some(DEFAULT_KV_CACHE), ..given },
            _ => given,
        };
        if method.is_some() {
            budgets.validate()?;
        }
        let latent = match (args.latent.as_deref(), method) {
            // the default latent where the text decoder has one; none to share otherwise
            (None, Some(_)) if budgets.text_latent() => DEFAULT_LATENT,
            (None, _) => Latent::Qkv,
            (Some(_), None) => bail!("--recipe dense has no latent"),
            (Some(name), Some(_)) => latent_named(name)?,
        };
        let bits = match args.bits.as_deref() {
            None => method.map(|_| DEFAULT_BITS),
            Some("none") => None,
            Some(b) => Some(Scheme::parse(b)?),
        };
        let calib = args.calib.clone().unwrap_or_else(|| root().join(CALIB_DIR));
        Ok(Self { method, budgets, latent, bits, calib })
    }

    /// GPTQ (as `compress --gptq auto`): INT4 weights, with the calibration images.
    fn gptq(&self) -> bool {
        self.bits.is_some_and(|s| s.weight_bits() == Bits::Int4)
    }

    /// Whether the calibration images are used: every low-rank method but plain SVD, and GPTQ.
    pub fn calibrated(&self) -> bool {
        self.method.is_some_and(|m| m != Method::Svd) || self.gptq()
    }

    /// A short name: the method (or `dense`; `-kv` with a K/V latent) and the bits.
    pub fn label(&self) -> String {
        let method = match (self.method, self.latent) {
            (Some(m), Latent::Kv) => format!("{}-kv", m.name()),
            (m, _) => m.map_or("dense", Method::name).to_string(),
        };
        match self.bits {
            Some(b) => format!("{method}-{}", b.name()),
            None => method.to_string(),
        }
    }

    fn calib_options(&self) -> CalibOptions {
        let mut c = CalibOptions::new(CalibSource::Images(self.calib.clone()));
        c.max_tokens = CALIB_MAX_TOKENS;
        c
    }

    fn quant_options(&self) -> Result<Option<QuantOptions>> {
        let Some(scheme) = self.bits else { return Ok(None) };
        let mut q = QuantOptions::with_group(scheme, None)?;
        q.gptq = self.gptq().then_some(GPTQ_DAMP);
        Ok(Some(q))
    }

    /// Everything about the recipe a model depends on (part of the stamp).
    fn describe(&self) -> Result<serde_json::Value> {
        let b = &self.budgets;
        let calibration = if self.calibrated() {
            let c = self.calib_options();
            serde_json::json!({
                "images": calib_files(&self.calib)?,
                "samples": c.samples,
                "seed": c.seed,
                "max_tokens": c.max_tokens,
                "tiling": c.tiling,
                "instruction": c.instruction,
            })
        } else {
            serde_json::Value::Null
        };
        let mut describe = serde_json::json!({
            "recipe": self.method.map_or("dense", Method::name),
            "budgets": {
                "qkv_params": b.qkv_params,
                "kv_cache": b.kv_cache,
                "ffn_params": b.ffn_params,
                "vision_qkv_params": b.vision_qkv_params,
            },
            "bits": self.bits.map(Scheme::name),
            "gptq": self.gptq(),
            "calibration": calibration,
        });
        // named only when not the default, so models stamped before the option keep their stamp
        if self.latent != Latent::Qkv {
            describe["latent"] = self.latent.name().into();
        }
        Ok(describe)
    }

    /// One line for the log.
    fn summary(&self) -> String {
        let mut parts = vec![self.method.map_or("dense", Method::name).to_string()];
        if self.latent == Latent::Kv {
            parts.push("K/V latent (Q dense)".into());
        }
        let b = &self.budgets;
        for (name, value) in [
            ("QKV params", b.qkv_params),
            ("KV cache", b.kv_cache),
            ("MLP params", b.ffn_params),
            ("vision QKV params", b.vision_qkv_params),
        ] {
            if let Some(v) = value {
                parts.push(format!("{name} {:.0} %", 100.0 * v));
            }
        }
        parts.push(self.bits.map_or("float".into(), |s| s.name().to_uppercase()));
        if self.gptq() {
            parts.push("GPTQ".into());
        }
        if self.calibrated() {
            parts.push(format!("calibrated on {}", self.calib.display()));
        }
        parts.join(", ")
    }
}

/// The calibration images of `folder` (what compress reads: `.jpg`, `.jpeg`, `.png`, and a
/// `.txt` caption beside one) as sorted `[name, sha256]` pairs.
fn calib_files(folder: &Path) -> Result<Vec<serde_json::Value>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(folder)
        .with_context(|| format!("reading the calibration images in {}", folder.display()))?;
    for entry in entries {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png" | "txt")) && path.is_file() {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            files.push((name, sha256_hex(&bytes)));
        }
    }
    if files.is_empty() {
        bail!("no calibration images (.jpg, .jpeg, .png) in {}", folder.display());
    }
    files.sort();
    Ok(files.into_iter().map(|(n, h)| serde_json::json!([n, h])).collect())
}

const STAMP_FILE: &str = "source.json";

/// The source files of a checkpoint: name, size and modification time of each.
fn source_files(source: &Path) -> Result<Vec<serde_json::Value>> {
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
    Ok(files)
}

/// What the model was made from and how: changes to any of it mean compressing again.
fn stamp(source: &Path, recipe: &DemoRecipe) -> Result<serde_json::Value> {
    let mut stamp = recipe.describe()?;
    stamp["format_version"] = VERSION.into();
    stamp["converter"] = env!("CARGO_PKG_VERSION").into();
    stamp["files"] = source_files(source)?.into();
    Ok(stamp)
}

/// Whether `out` holds a complete model made from exactly `want`.
fn up_to_date(out: &Path, want: &serde_json::Value) -> bool {
    let Ok(text) = std::fs::read_to_string(out.join(STAMP_FILE)) else { return false };
    let same = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|have| &have == want);
    same && dir::read_manifest(out).is_ok_and(|m| {
        out.join(&m.tokenizer.file).is_file()
            && m.shards.iter().all(|s| std::fs::metadata(out.join(&s.file)).is_ok_and(|f| f.len() == s.bytes))
    })
}

fn hash_of(value: impl std::hash::Hash) -> u32 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish() as u32
}

/// A file-name-safe name for the checkpoint at `canonical`: the hub repo for a hub snapshot
/// (its directory is a commit hash), else the directory's name.
fn source_name(canonical: &Path) -> String {
    let name = canonical
        .ancestors()
        .filter_map(|p| p.file_name()?.to_str())
        .find_map(|n| n.strip_prefix("models--").map(|r| r.replace("--", "-")))
        .or_else(|| canonical.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect()
}

/// The directory for the model made from `source` by `recipe`: one per checkpoint and recipe,
/// so switching recipes back and forth reuses each.
fn model_dir(source: &Path, recipe: &DemoRecipe) -> PathBuf {
    let canonical = source.canonicalize().unwrap_or_else(|_| source.to_path_buf());
    let calib = recipe.calib.canonicalize().unwrap_or_else(|_| recipe.calib.clone());
    let key = format!("{}\n{:?}\n{}", canonical.display(), recipe.budgets, calib.display());
    let hash = hash_of((key, recipe.label()));
    root().join("target/demo/models").join(format!(
        "{}-{}-{hash:08x}",
        source_name(&canonical),
        recipe.label()
    ))
}

/// Where the prepared calibration samples of `source` with `recipe`'s images are kept (they do not
/// depend on the rest of the recipe): one file per checkpoint directory and calibration, emptied
/// when the checkpoint's files change (`<file>.files.json` records them).
fn calib_cache(source: &Path, stamp: &serde_json::Value) -> Result<PathBuf> {
    let canonical = source.canonicalize().unwrap_or_else(|_| source.to_path_buf());
    let key = format!("{}\n{}", canonical.display(), stamp["calibration"]);
    let dir = root().join("target/demo/calib");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{}-{:08x}.safetensors", source_name(&canonical), hash_of(key)));
    let files = file.with_extension("files.json");
    let want = stamp["files"].to_string();
    if std::fs::read_to_string(&files).ok().as_deref() != Some(want.as_str()) {
        let _ = std::fs::remove_file(&file);
        std::fs::write(&files, want)?;
    }
    Ok(file)
}

/// Compress `source` with `recipe` into its demo model directory unless that is already up to
/// date; returns the directory.
pub fn prepare_model(source: &Path, recipe: &DemoRecipe) -> Result<PathBuf> {
    // One at a time in a process (the tests prepare the tiny fixture's model from several threads).
    static PREPARING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PREPARING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = model_dir(source, recipe);
    let want = stamp(source, recipe)?;
    if up_to_date(&out, &want) {
        eprintln!("demo: {} is up to date (from {}; {})", out.display(), source.display(), recipe.summary());
        return Ok(out);
    }
    eprintln!("demo: compressing {} into {}", source.display(), out.display());
    eprintln!(
        "demo: recipe {} (done once: reused while the checkpoint and recipe stay the same)",
        recipe.summary()
    );
    // A half-written directory must not pass for a model: the stamp goes last.
    let _ = std::fs::remove_file(out.join(STAMP_FILE));
    let start = Instant::now();
    let calib = recipe.calibrated().then(|| recipe.calib_options());
    let cache = calib.as_ref().map(|_| calib_cache(source, &want)).transpose()?;
    let quant = recipe.quant_options()?;
    let progress = crate::progress::bars();
    let plan = match recipe.method {
        Some(method) => Plan::LowRank(LowRankOptions {
            calib_cache: cache,
            quant,
            progress,
            latent: recipe.latent,
            ..LowRankOptions::new(method, recipe.budgets, calib)
        }),
        None => Plan::Dense(DenseOptions {
            quant,
            calib,
            calib_cache: cache,
            progress,
            ..DenseOptions::default()
        }),
    };
    compress(source, &out, &plan)
        .with_context(|| format!("compressing {} into {}", source.display(), out.display()))?;
    std::fs::write(out.join(STAMP_FILE), serde_json::to_vec_pretty(&want)?)?;
    eprintln!("demo: {} written in {:.1} s", out.display(), start.elapsed().as_secs_f64());
    Ok(out)
}

pub fn run(args: Args) -> Result<()> {
    let recipe = DemoRecipe::from_args(&args)?;
    let source = hub::obtain(&args.model)?;
    let model = prepare_model(&source, &recipe)?;
    let site = build_web::run_build()?;
    let server = Server::start_on(args.port, vec![Mount::new("", &site), Mount::new("model", &model)])?;
    // Tools (and the tests) read this line to find the server.
    println!("PocketVLM demo: {}/", server.url());
    println!("  model: {} (from {}; {})", model.display(), source.display(), recipe.summary());
    println!("  serving {} and the model under /model/; press Ctrl-C to stop", site.display());
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn recipe(extra: &[&str]) -> Result<DemoRecipe> {
        DemoRecipe::from_args(&Cli::try_parse_from(["demo"].iter().chain(extra))?.args)
    }

    /// A checkpoint-like directory and a calibration folder with one image.
    fn fixture() -> (tempfile::TempDir, DemoRecipe) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ckpt")).unwrap();
        std::fs::write(dir.path().join("ckpt/config.json"), b"{}").unwrap();
        std::fs::create_dir(dir.path().join("calib")).unwrap();
        std::fs::write(dir.path().join("calib/a.jpg"), b"jpeg").unwrap();
        let recipe = DemoRecipe { calib: dir.path().join("calib"), ..DemoRecipe::default() };
        (dir, recipe)
    }

    #[test]
    fn the_default_is_laser_kv_latent_w8a8_calibrated_on_the_shipped_images() {
        let r = recipe(&[]).unwrap();
        assert_eq!(r, DemoRecipe::default());
        assert_eq!(r.method, Some(Method::Laser));
        assert_eq!(
            (r.latent, r.budgets),
            (Latent::Kv, Budgets { kv_cache: Some(0.474), ..Budgets::default() })
        );
        assert_eq!(r.bits, Some(Scheme::W8A8));
        assert!(r.calibrated() && !r.gptq());
        assert_eq!(r.label(), "laser-kv-w8a8");
        assert_eq!(r.quant_options().unwrap().unwrap().gptq, None);
        let c = r.calib_options();
        assert_eq!((c.samples, c.max_tokens, c.tiling), (32, CALIB_MAX_TOKENS, false));
        // the shipped images exist and are few and small
        let images = calib_files(&root().join(CALIB_DIR)).unwrap();
        assert!((1..=8).contains(&images.len()), "{} calibration images", images.len());
        let bytes: u64 = std::fs::read_dir(root().join(CALIB_DIR))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(bytes <= 2 << 20, "{bytes} bytes of calibration images");
    }

    #[test]
    fn recipe_bits_and_budgets_override_the_default() {
        let r = recipe(&["--recipe", "dense"]).unwrap();
        assert_eq!((r.method, r.bits, r.budgets), (None, None, Budgets::default()));
        assert!(!r.calibrated());
        assert_eq!(r.label(), "dense");
        let r = recipe(&["--recipe", "dense", "--bits", "w4a8"]).unwrap();
        assert_eq!(r.bits, Some(Scheme::W4A8));
        assert!(r.gptq() && r.calibrated(), "INT4 weights get GPTQ from the calibration images");
        assert_eq!(r.quant_options().unwrap().unwrap().gptq, Some(GPTQ_DAMP));
        let r = recipe(&["--kv-cache", "0.25"]).unwrap();
        assert_eq!(r.budgets, Budgets { kv_cache: Some(0.25), ..Budgets::default() });
        assert_eq!((r.method, r.bits, r.latent), (Some(Method::Laser), Some(Scheme::W8A8), Latent::Kv));
        // no text latent budget: nothing for K and V to share (the vision tower's is joint)
        let r = recipe(&["--vision-qkv-params", "0.5"]).unwrap();
        assert_eq!((r.latent, r.budgets.vision_qkv_params), (Latent::Qkv, Some(0.5)));
        let r = recipe(&["--recipe", "svd", "--bits", "none", "--qkv-params", "0.5"]).unwrap();
        assert_eq!((r.method, r.bits), (Some(Method::Svd), None));
        assert_eq!(r.budgets.qkv_params, Some(0.5));
        assert!(!r.calibrated(), "plain SVD needs no calibration");
        assert_eq!(recipe(&["--calib", "/x"]).unwrap().calib, Path::new("/x"));
        assert!(recipe(&["--recipe", "dense", "--qkv-params", "0.5"]).is_err());
        assert!(recipe(&["--recipe", "nope"]).is_err());
        assert!(recipe(&["--bits", "w3a8"]).is_err());
        assert!(recipe(&["--qkv-params", "1.5"]).is_err());
        assert_eq!(recipe(&["--latent", "kv", "--kv-cache", "0.474"]).unwrap(), DemoRecipe::default());
        // the recipe the demo served before: a joint QKV latent at a 100 % parameter budget
        let r = recipe(&["--latent", "qkv", "--qkv-params", "1.0"]).unwrap();
        assert_eq!(
            (r.latent, r.budgets),
            (Latent::Qkv, Budgets { qkv_params: Some(1.0), ..Budgets::default() })
        );
        assert_eq!(r.label(), "laser-w8a8", "a model directory apart from the default's");
        assert!(recipe(&["--latent", "q"]).is_err());
        assert!(recipe(&["--recipe", "dense", "--latent", "kv"]).is_err());
    }

    #[test]
    fn the_stamp_changes_with_the_source_files() {
        let (dir, r) = fixture();
        let ckpt = dir.path().join("ckpt");
        let a = stamp(&ckpt, &r).unwrap();
        assert_eq!(a, stamp(&ckpt, &r).unwrap());
        std::fs::write(ckpt.join("config.json"), b"{ }").unwrap();
        assert_ne!(a, stamp(&ckpt, &r).unwrap());
    }

    #[test]
    fn the_stamp_includes_recipe_bits_budgets_and_calibration_images() {
        let (dir, r) = fixture();
        let ckpt = dir.path().join("ckpt");
        let a = stamp(&ckpt, &r).unwrap();
        assert_eq!(a["recipe"], "laser");
        assert_eq!(a["bits"], "w8a8");
        assert_eq!(a["budgets"]["kv_cache"], 0.474);
        assert_eq!(a["latent"], "kv");
        assert_eq!(a["calibration"]["images"][0][0], "a.jpg");
        assert_eq!(a["calibration"]["max_tokens"], CALIB_MAX_TOKENS);
        let changed = [
            DemoRecipe { method: Some(Method::Qsvd), ..r.clone() },
            DemoRecipe { bits: Some(Scheme::W4A8), ..r.clone() },
            DemoRecipe { bits: None, ..r.clone() },
            DemoRecipe { budgets: Budgets { kv_cache: Some(0.25), ..r.budgets }, ..r.clone() },
            DemoRecipe { latent: Latent::Qkv, ..r.clone() },
        ];
        // the joint latent is named by its absence, so models stamped before --latent keep theirs
        let joint = DemoRecipe { latent: Latent::Qkv, ..r.clone() };
        assert!(stamp(&ckpt, &joint).unwrap().get("latent").is_none());
        for other in &changed {
            assert_ne!(a, stamp(&ckpt, other).unwrap(), "{other:?}");
        }
        // the images' contents, and a new image, count; other files in the folder do not
        std::fs::write(dir.path().join("calib/README.md"), b"about the images").unwrap();
        assert_eq!(a, stamp(&ckpt, &r).unwrap());
        std::fs::write(dir.path().join("calib/a.jpg"), b"other jpeg").unwrap();
        let b = stamp(&ckpt, &r).unwrap();
        assert_ne!(a, b);
        std::fs::write(dir.path().join("calib/b.png"), b"png").unwrap();
        assert_ne!(b, stamp(&ckpt, &r).unwrap());
        // the dense recipe reads no images
        let dense = DemoRecipe { method: None, bits: None, budgets: Budgets::default(), ..r };
        assert_eq!(stamp(&ckpt, &dense).unwrap()["calibration"], serde_json::Value::Null);
    }

    #[test]
    fn a_model_is_up_to_date_only_with_its_stamp() {
        let (dir, r) = fixture();
        let out = dir.path().join("out");
        compress(&root().join("tests/fixtures/tiny"), &out, &Plan::Dense(DenseOptions::default())).unwrap();
        let want = stamp(&dir.path().join("ckpt"), &r).unwrap();
        assert!(!up_to_date(&out, &want), "no stamp yet");
        std::fs::write(out.join(STAMP_FILE), serde_json::to_vec_pretty(&want).unwrap()).unwrap();
        assert!(up_to_date(&out, &want));
        let other = stamp(&dir.path().join("ckpt"), &DemoRecipe { bits: None, ..r }).unwrap();
        assert!(!up_to_date(&out, &other), "another recipe");
        let shard = dir::read_manifest(&out).unwrap().shards[0].file.clone();
        std::fs::write(out.join(shard), b"truncated").unwrap();
        assert!(!up_to_date(&out, &want), "a damaged shard");
    }

    #[test]
    fn model_dirs_are_named_after_the_checkpoint_and_recipe() {
        let r = DemoRecipe::default();
        let snapshot = Path::new("/cache/hub/models--HuggingFaceTB--SmolVLM-256M-Instruct/snapshots/abc123");
        let name = model_dir(snapshot, &r).file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("HuggingFaceTB-SmolVLM-256M-Instruct-laser-kv-w8a8-"), "{name}");
        let local = model_dir(Path::new("/some/where/my ckpt"), &r);
        assert!(local.file_name().unwrap().to_string_lossy().starts_with("my_ckpt-laser-kv-w8a8-"));
        // recipes get their own directories
        let dense = DemoRecipe { method: None, bits: None, budgets: Budgets::default(), ..r.clone() };
        assert!(model_dir(snapshot, &dense).file_name().unwrap().to_string_lossy().contains("-dense-"));
        let kv = DemoRecipe { budgets: Budgets { kv_cache: Some(0.25), ..Budgets::default() }, ..r.clone() };
        assert_ne!(model_dir(snapshot, &kv), model_dir(snapshot, &r));
    }

    /// The default recipe on the tiny fixture takes seconds, writes a laser W8A8 model with a K/V
    /// latent and is done once.
    #[test]
    fn the_tiny_fixture_is_compressed_once_with_the_default_recipe() {
        let tiny = root().join("tests/fixtures/tiny");
        let r = DemoRecipe::default();
        let out = prepare_model(&tiny, &r).unwrap();
        let m = dir::read_manifest(&out).unwrap();
        assert_eq!(m.compression.as_ref().map(|c| c.recipe.as_str()), Some("laser"));
        assert_eq!(m.quantization.as_ref().map(|q| q.scheme.as_str()), Some("w8a8"));
        let c = m.compression.as_ref().unwrap();
        assert!(c.text_layers.iter().all(|l| l.kv.is_some() && l.qkv.is_none()), "{:?}", c.text_layers);
        assert!(c.achieved.kv_cache.unwrap() <= 0.474);
        let written = std::fs::metadata(out.join(STAMP_FILE)).unwrap().modified().unwrap();
        assert_eq!(prepare_model(&tiny, &r).unwrap(), out);
        let again = std::fs::metadata(out.join(STAMP_FILE)).unwrap().modified().unwrap();
        assert_eq!(written, again, "an up-to-date model is not written again");
    }
}
