//! HTTP in the browser, from a page or a worker: fetching a file (cancellable by an
//! `AbortSignal`), the URL of a model directory's file, `manifest.json` fetched and validated.
//! The model loader ([`crate::loader`]) is built on these.
//!
//! Failures are typed: a request that fails or answers with a non-2xx status is
//! [`RuntimeError::Fetch`] (with the URL and the status), a file whose bytes differ from the
//! manifest is [`RuntimeError::Integrity`] (naming the file and the expected size or hash), a
//! request cancelled through its `AbortSignal` is [`RuntimeError::Aborted`].

use js_sys::{Promise, Uint8Array};
use pocketvlm_format::{MANIFEST_FILE, Manifest, ModelData};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortSignal, RequestInit};

use pocketvlm_runtime::{Result, RuntimeError};

/// A fetched and verified model: the same data the native loader reads from a directory.
pub struct FetchedModel {
    pub data: ModelData,
    /// `tokenizer.json`, checked against the manifest.
    pub tokenizer: Vec<u8>,
}

/// The URL of `file` inside the model directory at `base` (with or without a trailing `/`).
pub fn file_url(base: &str, file: &str) -> String {
    format!("{}/{file}", base.trim_end_matches('/'))
}

fn js_message(value: &JsValue) -> String {
    value
        .as_string()
        .or_else(|| value.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())))
        .unwrap_or_else(|| format!("{value:?}"))
}

/// `fetch(url, { signal })` in whichever global scope this code runs in (a window or a worker).
fn start_fetch(url: &str, signal: Option<&AbortSignal>) -> Result<Promise> {
    let init = RequestInit::new();
    if let Some(signal) = signal {
        init.set_signal(Some(signal));
    }
    let global = js_sys::global();
    if let Some(window) = global.dyn_ref::<web_sys::Window>() {
        Ok(window.fetch_with_str_and_init(url, &init))
    } else if let Some(worker) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        Ok(worker.fetch_with_str_and_init(url, &init))
    } else {
        Err(RuntimeError::Fetch {
            url: url.to_string(),
            status: None,
            message: "neither a window nor a worker: there is no fetch()".into(),
        })
    }
}

/// [`RuntimeError::Aborted`] when `signal` has fired.
pub fn check_signal(signal: Option<&AbortSignal>, what: &str) -> Result<()> {
    match signal {
        Some(s) if s.aborted() => Err(RuntimeError::Aborted(what.to_string())),
        _ => Ok(()),
    }
}

/// The body of `url`; a network error or a non-2xx status is [`RuntimeError::Fetch`].
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>> {
    fetch_bytes_abortable(url, None).await
}

/// [`fetch_bytes`] that `signal` can cancel, also while the body streams in.
pub async fn fetch_bytes_abortable(url: &str, signal: Option<&AbortSignal>) -> Result<Vec<u8>> {
    check_signal(signal, url)?;
    let failed = |status: Option<u16>, message: String| match signal {
        Some(s) if s.aborted() => RuntimeError::Aborted(format!("fetching {url}")),
        _ => RuntimeError::Fetch { url: url.to_string(), status, message },
    };
    let response =
        JsFuture::from(start_fetch(url, signal)?).await.map_err(|e| failed(None, js_message(&e)))?;
    let response: web_sys::Response =
        response.dyn_into().map_err(|v| failed(None, format!("fetch gave {v:?}, not a Response")))?;
    if !response.ok() {
        let status = response.status();
        return Err(failed(Some(status), format!("HTTP {status} {}", response.status_text())));
    }
    let body = response.array_buffer().map_err(|e| failed(Some(response.status()), js_message(&e)))?;
    let body = JsFuture::from(body).await.map_err(|e| failed(Some(response.status()), js_message(&e)))?;
    Ok(Uint8Array::new(&body).to_vec())
}

/// Fetch and validate `manifest.json` (`signal` can cancel it).
pub async fn fetch_manifest(base: &str, signal: Option<&AbortSignal>) -> Result<Manifest> {
    parse_manifest(&fetch_bytes_abortable(&file_url(base, MANIFEST_FILE), signal).await?)
}

/// Validate the bytes of a `manifest.json`.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        RuntimeError::Format(pocketvlm_format::FormatError::InvalidManifest(format!("not UTF-8: {e}")))
    })?;
    Ok(Manifest::from_json(text)?)
}
