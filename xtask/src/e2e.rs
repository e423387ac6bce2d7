//! The demo page end to end in Debian's Chromium: `web/tests/e2e.mjs` (playwright-core) against
//! the built site with a model at `/model/`. It uploads the fixture's photo, compares the streamed
//! caption with transformers' text (`tests/fixtures/tiny/expected/chelsea_split.json`), reloads
//! (cache hits), stops a caption mid-stream and checks the no-WebGPU explanation. The screenshot
//! of the finished caption goes to `target/e2e/caption.png` (a CI artifact).

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::serve::{Mount, Server};
use crate::util::{root, run};

/// The transformers expectations the demo's caption must equal (image, prompt, token count, text).
const EXPECTED: &str = "tests/fixtures/tiny/expected/chelsea_split.json";

/// Serve `site` (from `build_web::run_build`) at `/` and `model` (the converted tiny fixture) at
/// `/model/`, and run the playwright script against it with Node.
pub fn run_demo_e2e(site: &Path, model: &Path) -> Result<()> {
    let web = root().join("web");
    if !web.join("node_modules/playwright-core").is_dir() {
        bail!(
            "web/node_modules/playwright-core is missing: run `cargo xtask setup` (or `npm install` in web/)"
        );
    }
    let server = Server::start(vec![Mount::new("", site), Mount::new("model", model)])?;
    let screenshot = root().join("target/e2e/caption.png");
    eprintln!("xtask test: demo end to end at {}/", server.url());
    run(Command::new("node")
        .current_dir(root())
        .arg(web.join("tests/e2e.mjs"))
        .args(["--url", &format!("{}/", server.url()), "--expected", EXPECTED, "--screenshot"])
        .arg(&screenshot))
}
