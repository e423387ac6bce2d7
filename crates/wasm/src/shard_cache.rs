//! Model files kept in the browser's Cache API between page loads.
//!
//! Each file is stored under its URL with the manifest's sha256 as a query (`…/shard-00003.bin
//! ?sha256=<hex>`), so a changed manifest asks for different keys and never reads a stale file;
//! after a load, entries under the same base URL that the current manifest no longer names are
//! deleted. Bytes read from the cache are still verified by the caller. The cache is an
//! optimisation: where it is missing (an insecure origin) or fails (quota), loading goes on
//! from the network.

use std::collections::HashSet;

use js_sys::{Array, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// The Cache API cache PocketVLM stores model files in.
pub const CACHE_NAME: &str = "pocketvlm-models-v1";

/// The cache key of a file whose manifest hash is `sha256`.
pub fn key(url: &str, sha256: &str) -> String {
    format!("{url}?sha256={sha256}")
}

/// An open Cache API cache.
pub struct ShardCache {
    cache: web_sys::Cache,
}

async fn resolve(promise: js_sys::Promise) -> Option<JsValue> {
    JsFuture::from(promise).await.ok()
}

/// `url` made absolute against the current location (as the Cache API stores it).
fn absolute(url: &str) -> Option<String> {
    web_sys::Request::new_with_str(url).ok().map(|r| r.url())
}

impl ShardCache {
    /// The cache, or `None` where the Cache API is unavailable.
    pub async fn open() -> Option<Self> {
        let caches = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("caches")).ok()?;
        let caches: web_sys::CacheStorage = caches.dyn_into().ok()?;
        let cache = resolve(caches.open(CACHE_NAME)).await?.dyn_into().ok()?;
        Some(Self { cache })
    }

    /// The stored bytes under `key`, if any.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let found = resolve(self.cache.match_with_str(key)).await?;
        let response: web_sys::Response = found.dyn_into().ok()?;
        let body = resolve(response.array_buffer().ok()?).await?;
        Some(Uint8Array::new(&body).to_vec())
    }

    /// Store `bytes` under `key`; `false` when the cache refused (e.g. over quota).
    pub async fn put(&self, key: &str, bytes: &[u8]) -> bool {
        let body = Uint8Array::from(bytes);
        let Ok(response) = web_sys::Response::new_with_opt_buffer_source(Some(&body)) else {
            return false;
        };
        resolve(self.cache.put_with_str(key, &response)).await.is_some()
    }

    pub async fn delete(&self, key: &str) {
        resolve(self.cache.delete_with_str(key)).await;
    }

    /// Delete the entries under `base` (a model directory URL) other than `keep` (keys as made by
    /// [`key`]); returns how many were deleted.
    pub async fn prune(&self, base: &str, keep: &[String]) -> usize {
        let Some(prefix) = absolute(&format!("{}/", base.trim_end_matches('/'))) else { return 0 };
        let keep: HashSet<String> = keep.iter().filter_map(|k| absolute(k)).collect();
        let Some(requests) = resolve(self.cache.keys()).await else { return 0 };
        let mut deleted = 0;
        for request in requests.unchecked_into::<Array>().iter() {
            let Ok(request) = request.dyn_into::<web_sys::Request>() else { continue };
            let url = request.url();
            if url.starts_with(&prefix) && !keep.contains(&url) {
                self.delete(&url).await;
                deleted += 1;
            }
        }
        deleted
    }
}
