//! Loading a model by URL with progress events and the browser cache: the manifest from the
//! network, then the tokenizer and each shard from the cache when it holds the manifest's
//! version of the file, else from the network. Every file is verified (size and sha256) before
//! it is used; a cached file that fails its check is dropped and fetched again, and a fetched
//! file that fails is removed from the cache again. Where the Cache API is unavailable or refuses a
//! file (over quota), the model loads from the network all the same, with a `Warning` progress
//! event saying so. An `AbortSignal` stops the load between files and cancels the request in
//! flight ([`RuntimeError::Aborted`]).

use crate::fetch::{FetchedModel, check_signal, fetch_bytes_abortable, file_url, parse_manifest};
use pocketvlm_format::{MANIFEST_FILE, Manifest, ShardSet, verify_tokenizer};
use pocketvlm_runtime::RuntimeError;
use web_sys::AbortSignal;

use crate::integrity::Pin;
use crate::progress::{Progress, Tally};
use crate::shard_cache::{ShardCache, key};

/// What a load did besides producing the model.
pub struct LoadReport {
    pub tally: Tally,
    /// Whether the Cache API was used.
    pub cache_available: bool,
    /// The verified `manifest.json`.
    pub manifest: Vec<u8>,
}

/// Where [`obtain`] found a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Cache,
    Network,
    /// The network, and the open cache refused to store it (e.g. over quota).
    NetworkNotCached,
}

/// Give `accept` the bytes of the file at `url` (cache key `key`): the cached copy if there is
/// one and `accept` takes it, else the network's (stored in the cache).
async fn obtain(
    cache: Option<&ShardCache>,
    signal: Option<&AbortSignal>,
    url: &str,
    key: &str,
    accept: &mut dyn FnMut(Vec<u8>) -> pocketvlm_format::Result<()>,
) -> Result<Origin, RuntimeError> {
    check_signal(signal, url)?;
    if let Some(cache) = cache
        && let Some(bytes) = cache.get(key).await
    {
        if accept(bytes).is_ok() {
            return Ok(Origin::Cache);
        }
        cache.delete(key).await;
    }
    let bytes = fetch_bytes_abortable(url, signal).await?;
    let stored = match cache {
        Some(cache) => cache.put(key, &bytes).await,
        None => false,
    };
    if let Err(e) = accept(bytes) {
        if let (Some(cache), true) = (cache, stored) {
            cache.delete(key).await;
        }
        return Err(e.into());
    }
    Ok(if cache.is_some() && !stored { Origin::NetworkNotCached } else { Origin::Network })
}

/// Fetch and verify the model at `base` (its manifest against `pin` when given; `manifest`: the
/// bytes of its `manifest.json`, already fetched), reporting each step to `on_progress`.
pub async fn load(
    base: &str,
    use_cache: bool,
    pin: Option<&Pin>,
    manifest: Option<&[u8]>,
    signal: Option<&AbortSignal>,
    on_progress: &dyn Fn(&Progress),
) -> Result<(FetchedModel, LoadReport), RuntimeError> {
    let manifest_bytes = match manifest {
        Some(bytes) => bytes.to_vec(),
        None => fetch_bytes_abortable(&file_url(base, MANIFEST_FILE), signal).await?,
    };
    if let Some(pin) = pin {
        pin.check(MANIFEST_FILE, &manifest_bytes)?;
    }
    let manifest: Manifest = parse_manifest(&manifest_bytes)?;
    // a model the runtime cannot run is refused before its shards are downloaded
    pocketvlm_runtime::model::check_supported(&manifest)?;
    let cache = if use_cache { ShardCache::open().await } else { None };
    let mut tally = Tally::new(&manifest);
    on_progress(&tally.started());
    if use_cache && cache.is_none() {
        on_progress(&tally.warning("the browser cache (Cache API) is unavailable: loading without it"));
    }
    // One warning for the first file the cache refuses to store (the later ones likely follow).
    let mut warned = false;
    let mut warn_if_refused = |origin: Origin, file: &str, tally: &Tally| {
        if origin == Origin::NetworkNotCached && !std::mem::replace(&mut warned, true) {
            let message =
                format!("the browser cache refused to store {file} (full?): the model is not cached");
            on_progress(&tally.warning(message));
        }
    };
    let mut keys = Vec::with_capacity(1 + manifest.shards.len());

    let info = &manifest.tokenizer;
    let (url, tokenizer_key) = (file_url(base, &info.file), key(&file_url(base, &info.file), &info.sha256));
    let mut tokenizer = Vec::new();
    let origin = obtain(cache.as_ref(), signal, &url, &tokenizer_key, &mut |bytes| {
        verify_tokenizer(&manifest, &bytes)?;
        tokenizer = bytes;
        Ok(())
    })
    .await?;
    warn_if_refused(origin, &info.file, &tally);
    on_progress(&tally.extra_file_done(&info.file, tokenizer.len() as u64, origin == Origin::Cache));
    keys.push(tokenizer_key);

    let mut shards = ShardSet::new(manifest.clone());
    for (index, entry) in manifest.shards.iter().enumerate() {
        let url = file_url(base, &entry.file);
        let shard_key = key(&url, &entry.sha256);
        let origin =
            obtain(cache.as_ref(), signal, &url, &shard_key, &mut |bytes| shards.add(index, bytes)).await?;
        warn_if_refused(origin, &entry.file, &tally);
        on_progress(&tally.file_done(&entry.file, entry.bytes, origin == Origin::Cache));
        keys.push(shard_key);
    }
    if let Some(cache) = &cache {
        cache.prune(base, &keys).await;
    }
    let report = LoadReport { tally, cache_available: cache.is_some(), manifest: manifest_bytes };
    Ok((FetchedModel { data: shards.finish()?, tokenizer }, report))
}

/// The model directory at `base`, without the cache and without progress events: the loader
/// as tests and benchmarks use it.
pub async fn fetch_model(base: &str) -> Result<FetchedModel, RuntimeError> {
    load(base, false, None, None, None, &|_| ()).await.map(|(model, _)| model)
}
