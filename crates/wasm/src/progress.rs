//! Download progress: one event when the manifest is known, one per file as it arrives (from the
//! network or the browser cache), one before the GPU upload, one before compiling a caption's
//! kernels (when the load prepares them) and one when the model is ready.

use pocketvlm_format::Manifest;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// The manifest was read: the totals are known.
    Manifest,
    /// One file (the tokenizer or a shard) arrived and passed its check.
    File,
    /// All files are here; the weights are being uploaded to the GPU.
    Upload,
    /// The weights are on the GPU; the kernels a caption uses are being compiled.
    Prepare,
    Ready,
    /// Something the load worked around (`warning` says what): the browser cache is unavailable
    /// or refused a file, so the model loads from the network without it.
    Warning,
}

/// One progress event as JavaScript's `onProgress` receives it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub phase: Phase,
    /// The file this event is about (`File` events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Whether that file came from the browser cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_cache: Option<bool>,
    pub loaded_bytes: u64,
    pub total_bytes: u64,
    pub files_done: usize,
    pub files_total: usize,
    /// Files that came from the browser cache so far.
    pub cache_hits: usize,
    /// What a `Warning` event warns of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Running totals of a load.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    loaded_bytes: u64,
    total_bytes: u64,
    files_done: usize,
    files_total: usize,
    cache_hits: usize,
}

impl Tally {
    /// Totals for the shards of `manifest` and one more file (the tokenizer), whose size the
    /// manifest does not record: its bytes join the total when it arrives.
    pub fn new(manifest: &Manifest) -> Self {
        Self {
            total_bytes: manifest.shards.iter().map(|s| s.bytes).sum(),
            files_total: 1 + manifest.shards.len(),
            ..Self::default()
        }
    }

    fn event(&self, phase: Phase, file: Option<String>, from_cache: Option<bool>) -> Progress {
        Progress {
            phase,
            file,
            from_cache,
            loaded_bytes: self.loaded_bytes,
            total_bytes: self.total_bytes,
            files_done: self.files_done,
            files_total: self.files_total,
            cache_hits: self.cache_hits,
            warning: None,
        }
    }

    /// A `Warning` event saying `message`.
    pub fn warning(&self, message: impl Into<String>) -> Progress {
        Progress { warning: Some(message.into()), ..self.event(Phase::Warning, None, None) }
    }

    pub fn started(&self) -> Progress {
        self.event(Phase::Manifest, None, None)
    }

    /// Count a verified file.
    pub fn file_done(&mut self, file: &str, bytes: u64, from_cache: bool) -> Progress {
        self.loaded_bytes += bytes;
        self.files_done += 1;
        self.cache_hits += usize::from(from_cache);
        self.event(Phase::File, Some(file.to_owned()), Some(from_cache))
    }

    /// Count a verified file whose size was not in the total.
    pub fn extra_file_done(&mut self, file: &str, bytes: u64, from_cache: bool) -> Progress {
        self.total_bytes += bytes;
        self.file_done(file, bytes, from_cache)
    }

    pub fn uploading(&self) -> Progress {
        self.event(Phase::Upload, None, None)
    }

    pub fn preparing(&self) -> Progress {
        self.event(Phase::Prepare, None, None)
    }

    pub fn ready(&self) -> Progress {
        self.event(Phase::Ready, None, None)
    }

    /// Whether every file came from the browser cache.
    pub fn all_cached(&self) -> bool {
        self.files_total > 0 && self.cache_hits == self.files_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_accumulate_bytes_files_and_cache_hits() {
        let mut t = Tally { total_bytes: 20, files_total: 2, ..Tally::default() };
        let e = t.extra_file_done("tokenizer.json", 10, true);
        assert_eq!((e.loaded_bytes, e.total_bytes, e.files_done), (10, 30, 1));
        assert_eq!((e.cache_hits, e.from_cache), (1, Some(true)));
        assert!(!t.all_cached());
        let e = t.file_done("shard-00000.bin", 20, true);
        assert_eq!((e.loaded_bytes, e.total_bytes, e.files_done), (30, 30, 2));
        assert!(t.all_cached());
        let json = serde_json::to_value(t.ready()).unwrap();
        assert_eq!(json["phase"], "ready");
        assert_eq!(json["loadedBytes"], 30);
        assert!(json.get("file").is_none());
    }
}
