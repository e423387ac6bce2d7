//! Model directories on a file system: `manifest.json`, `tokenizer.json` and the shards.

use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::shards::{ModelData, ShardSink, verify_tokenizer};

/// Writes shards as files into a directory.
pub struct DirSink {
    pub dir: PathBuf,
}

impl ShardSink for DirSink {
    fn write_shard(&mut self, file: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, bytes).map_err(|e| FormatError::io(&path, e))
    }
}

/// Read and validate `dir/manifest.json` (no shard is read).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| FormatError::io(&path, e))?;
    Manifest::from_json(&text)
}

/// Read the manifest and every shard, verifying sizes and checksums.
pub fn open(dir: &Path) -> Result<ModelData> {
    let manifest = read_manifest(dir)?;
    let shards = manifest
        .shards
        .iter()
        .map(|s| {
            let path = dir.join(&s.file);
            std::fs::read(&path).map_err(|e| FormatError::io(&path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    ModelData::new(manifest, shards)
}

/// Read `tokenizer.json` and check it against the manifest's checksum.
pub fn read_tokenizer(dir: &Path, manifest: &Manifest) -> Result<Vec<u8>> {
    let path = dir.join(&manifest.tokenizer.file);
    let bytes = std::fs::read(&path).map_err(|e| FormatError::io(&path, e))?;
    verify_tokenizer(manifest, &bytes)?;
    Ok(bytes)
}

/// Write `manifest.json` into `dir`.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&path, manifest.to_json()).map_err(|e| FormatError::io(&path, e))
}
