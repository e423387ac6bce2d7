//! A manifest's tensor table against shard bytes, as a model loads: the shard set collects the
//! shards in any order, each verified, then every tensor is read, and the integer contract's
//! CPU reference builds the model (packed weights, scales, online rotations, tables).
//!
//! Input: `manifest.json` and a payload, joined by [`segments::SEPARATOR`]. Shard `i` is the
//! payload repeated to the size the manifest declares for it (zeros for an empty payload), and
//! its checksum in the manifest is replaced by the true one: a checksum guards against
//! corruption in transit, and with it in place the fuzzer could not get past it to the table.

use pocketvlm_compress::model::CpuModel;
use pocketvlm_format::{Manifest, ShardSet, sha256_hex};

use crate::segments;

/// Manifests declaring more shard bytes than this are only validated (the fuzzer's memory).
const MAX_SHARD_BYTES: u64 = 16 << 20;

pub fn run(data: &[u8]) {
    let [manifest, payload] = segments::split(data);
    let Ok(text) = std::str::from_utf8(manifest) else { return };
    let Ok(mut manifest) = serde_json::from_str::<Manifest>(text) else {
        let _ = Manifest::from_json(text);
        return;
    };
    let total = manifest.shards.iter().try_fold(0u64, |sum, s| sum.checked_add(s.bytes));
    if total.is_none_or(|t| t > MAX_SHARD_BYTES) {
        let _ = manifest.validate();
        return;
    }
    let shards: Vec<Vec<u8>> = manifest.shards.iter().map(|s| fill(payload, s.bytes as usize)).collect();
    for (entry, bytes) in manifest.shards.iter_mut().zip(&shards) {
        entry.sha256 = sha256_hex(bytes);
    }
    if manifest.validate().is_err() {
        return;
    }
    // downloads finish in any order: add the last shard first
    let mut set = ShardSet::new(manifest);
    for (index, bytes) in shards.into_iter().enumerate().rev() {
        set.add(index, bytes).expect("a shard of the declared size and checksum is accepted");
    }
    let data = set.finish().expect("every shard was added");
    for t in &data.manifest.tensors {
        let bytes = data.tensor_bytes(&t.name).expect("a listed tensor reads");
        assert_eq!(bytes.len() as u64, t.bytes, "{}: bytes read differ from the table", t.name);
        let encoding = t.encoding().expect("a validated encoding");
        if encoding.packed_bits().is_none() {
            let values = data.tensor_f32(&t.name).expect("a float tensor widens");
            assert_eq!(values.len(), t.numel(), "{}: values differ from the shape", t.name);
        }
    }
    let _ = CpuModel::from_model_data(&data);
}

/// `len` bytes of `payload` repeated (zeros when it is empty).
fn fill(payload: &[u8], len: usize) -> Vec<u8> {
    if payload.is_empty() {
        return vec![0; len];
    }
    payload.iter().copied().cycle().take(len).collect()
}
