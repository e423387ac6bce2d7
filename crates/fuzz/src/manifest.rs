//! `manifest.json` as the browser loader and `format::dir` read it: UTF-8, then
//! [`Manifest::from_json`] (parse and validate).

use pocketvlm_format::Manifest;

/// Parse and validate; an accepted manifest must write out and read back to itself, and the
/// sizes the loader derives from it must not overflow.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(manifest) = Manifest::from_json(text) else { return };
    let again = Manifest::from_json(&manifest.to_json()).expect("an accepted manifest re-reads");
    assert_eq!(again, manifest, "a manifest changed on its way through to_json");
    let shard_bytes = manifest.shards.iter().try_fold(0u64, |sum, s| sum.checked_add(s.bytes));
    assert!(shard_bytes.is_some(), "an accepted manifest's shard sizes overflow u64");
    let _ = manifest.total_shard_bytes();
    let _ = manifest.component_sizes();
}
