//! The test of `cargo xtask demo` without the network: a local server that mimics the Hugging
//! Face hub's file layout (`/api/models/<repo>/revision/main` with the file list and commit,
//! `/<repo>/resolve/main/<file>` with `ETag`, `X-Repo-Commit` and ranges) serves the tiny
//! fixture; the demo, pointed at it with `HF_ENDPOINT` and an empty `HF_HOME`, must download the
//! checkpoint, compress it with the default recipe, build the site and serve the page, the
//! package and the model — the same model (shard for shard) that the demo's recipe makes from the
//! fixture directory directly. With an unreachable endpoint and nothing cached it must fail with a
//! message that says how to pass a local checkpoint.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use pocketvlm_format::{MANIFEST_FILE, Manifest, dir};

use crate::demo::{self, DemoRecipe};
use crate::serve::{Mount, Server, http_get};
use crate::util::root;

const REPO: &str = "pocketvlm-test/tiny";
const REPO_SHARDED: &str = "pocketvlm-test/tiny-2b-sharded";
/// Shards of [`REPO_SHARDED`]'s weights.
const SHARDS: usize = 2;
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Kills the demo when the check ends, however it ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo_command(repo: &str, endpoint: &str, hf_home: &Path) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("locating the xtask binary")?);
    cmd.args(["demo", "--model", repo, "--port", "0"])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_OFFLINE")
        .current_dir(root());
    Ok(cmd)
}

/// The hub's API answer for `repo` holding `fixture`: its top-level files and a commit.
fn write_api_answer(hub: &Path, repo: &str, fixture: &Path) -> Result<()> {
    let mut siblings = Vec::new();
    for entry in std::fs::read_dir(fixture)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            siblings.push(serde_json::json!({ "rfilename": entry.file_name().to_string_lossy() }));
        }
    }
    let api = hub.join(format!("api/models/{repo}/revision"));
    std::fs::create_dir_all(&api)?;
    std::fs::write(
        api.join("main"),
        serde_json::to_vec(&serde_json::json!({ "sha": COMMIT, "siblings": siblings }))?,
    )?;
    Ok(())
}

/// The demo against the hub mimic, twice: the tiny fixture as a repo with one
/// `model.safetensors` (the 256M's and 500M's layout), and `tiny-2b` (SmolVLM-Instruct's traits)
/// with its weights split into shards listed by `model.safetensors.index.json` (the 2.2B's
/// layout). Each must serve the model [`demo::prepare_model`] makes with [`DemoRecipe::default`]
/// from the fixture directory directly.
pub fn check_demo_with_hub_mimic() -> Result<()> {
    let work = root().join("target/xtask/hub-mimic");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    // Nothing cached and nothing reachable: a clear message, not a hang.
    let out = demo_command(REPO, "http://127.0.0.1:9", &work.join("hf-home-empty"))?
        .output()
        .context("running cargo xtask demo offline")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the demo succeeded without a checkpoint or network: {stderr}");
    ensure!(
        stderr.contains("--model <dir>"),
        "the offline message does not say how to pass a checkpoint: {stderr}"
    );
    eprintln!("xtask test: demo offline without a checkpoint fails clearly");

    let fixtures = root().join("tests/fixtures");
    check_repo(&work, REPO, &fixtures.join("tiny"), &fixtures.join("tiny"))?;
    let sharded = work.join("tiny-2b-sharded");
    write_sharded(&fixtures.join("tiny-2b"), &sharded)?;
    check_repo(&work, REPO_SHARDED, &sharded, &fixtures.join("tiny-2b"))
}

/// The demo downloads `repo` (the files of `served`) from the mimic and serves what
/// `demo::prepare_model` makes of `fixture`.
fn check_repo(work: &Path, repo: &str, served: &Path, fixture: &Path) -> Result<()> {
    let expected_model = demo::prepare_model(fixture, &DemoRecipe::default())?;
    let hub = work.join("hub").join(repo);
    write_api_answer(&hub, repo, served)?;
    let server = Server::start(vec![
        Mount::new("", &hub),
        Mount::new(&format!("{repo}/resolve/main"), served).with_header("X-Repo-Commit", COMMIT),
    ])?;
    let mut child = demo_command(repo, &server.url(), &work.join("hf-home"))?
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo xtask demo")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let demo = Demo(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("demo> {line}");
            let _ = tx.send(line);
        }
    });
    let url = loop {
        match rx.recv_timeout(Duration::from_secs(1800)) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("PocketVLM demo: ") {
                    break url.to_string();
                }
            }
            Err(_) => bail!("cargo xtask demo exited or did not print its URL"),
        }
    };
    let (status, page) = http_get(&url)?;
    ensure!(status == 200 && String::from_utf8_lossy(&page).contains("PocketVLM"), "GET {url}: {status}");
    let (status, wasm) = http_get(&format!("{url}pocketvlm/pkg/pocketvlm_wasm_bg.wasm"))?;
    ensure!(status == 200 && wasm.starts_with(b"\0asm"), "the demo does not serve the wasm ({status})");
    let (status, manifest) = http_get(&format!("{url}model/{MANIFEST_FILE}"))?;
    ensure!(status == 200, "the demo does not serve the model ({status})");
    let served = Manifest::from_json(std::str::from_utf8(&manifest)?)?;
    let direct = dir::read_manifest(&expected_model)?;
    let hashes = |m: &Manifest| m.shards.iter().map(|s| s.sha256.clone()).collect::<Vec<_>>();
    ensure!(
        hashes(&served) == hashes(&direct) && served.tokenizer.sha256 == direct.tokenizer.sha256,
        "the model the demo compressed from the hub differs from the fixture compressed directly"
    );
    let recipe = DemoRecipe::default();
    ensure!(
        served.compression.as_ref().map(|c| c.recipe.as_str()) == recipe.method.map(|m| m.name())
            && served.quantization.as_ref().map(|q| q.scheme.as_str()) == recipe.bits.map(|b| b.name()),
        "the demo did not serve its default recipe ({})",
        recipe.label()
    );
    drop(demo);
    eprintln!(
        "xtask test: cargo xtask demo downloaded {repo}, compressed it ({}) and served it via HF_ENDPOINT",
        recipe.label()
    );
    Ok(())
}

/// `fixture` laid out as a sharded hub repo in `out`: its `model.safetensors` split into
/// [`SHARDS`] files `model-0000k-of-0000n.safetensors` (tensors in name order, an even share of
/// them each), the `model.safetensors.index.json` that maps every tensor to its shard, and the
/// other top-level files as they are.
fn write_sharded(fixture: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    for entry in std::fs::read_dir(fixture)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), out.join(entry.file_name()))?;
        }
    }
    let bytes = std::fs::read(fixture.join("model.safetensors"))?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + header_len])?;
    let data = &bytes[8 + header_len..];
    let names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    let mut weight_map = serde_json::Map::new();
    for (k, part) in names.chunks(names.len().div_ceil(SHARDS)).enumerate() {
        let file = format!("model-{:05}-of-{SHARDS:05}.safetensors", k + 1);
        let mut entries = serde_json::Map::new();
        let mut body = Vec::new();
        for name in part {
            let mut info = header[name.as_str()].clone();
            let offsets = info["data_offsets"].as_array().context("a tensor without data_offsets")?;
            let (begin, end) =
                (offsets[0].as_u64().context("offset")?, offsets[1].as_u64().context("offset")?);
            let start = body.len() as u64;
            body.extend_from_slice(&data[begin as usize..end as usize]);
            info["data_offsets"] = serde_json::json!([start, start + end - begin]);
            entries.insert(name.to_string(), info);
            weight_map.insert(name.to_string(), file.clone().into());
        }
        if let Some(meta) = header.get("__metadata__") {
            entries.insert("__metadata__".into(), meta.clone());
        }
        let mut json = serde_json::to_vec(&entries)?;
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut shard = (json.len() as u64).to_le_bytes().to_vec();
        shard.extend_from_slice(&json);
        shard.extend_from_slice(&body);
        std::fs::write(out.join(&file), shard)?;
    }
    let index = serde_json::json!({ "metadata": { "total_size": data.len() }, "weight_map": weight_map });
    std::fs::write(out.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(())
}
