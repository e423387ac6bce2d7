//! Packing tensors into shards (writing) and checking shards against the manifest (reading).

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::encoding::Encoding;
use crate::error::{FormatError, Result};
use crate::manifest::{ALIGNMENT, Manifest, ShardEntry, TensorEntry, TensorPart};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// File name of shard `index`.
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.bin")
}

/// Where finished shards go (a directory natively, memory in tests, …).
pub trait ShardSink {
    fn write_shard(&mut self, file: &str, bytes: &[u8]) -> Result<()>;
}

/// Keeps shards in memory.
#[derive(Default)]
pub struct MemorySink {
    pub shards: Vec<(String, Vec<u8>)>,
}

impl ShardSink for MemorySink {
    fn write_shard(&mut self, file: &str, bytes: &[u8]) -> Result<()> {
        self.shards.push((file.to_string(), bytes.to_vec()));
        Ok(())
    }
}

/// Packs tensors into shards of at most `max_shard_bytes`, every part aligned to [`ALIGNMENT`].
///
/// A tensor that fits in one shard is never split (it opens a new shard when the current one
/// has no room); a larger tensor is cut into pieces of the largest aligned size that fits,
/// each starting a new shard.
pub struct ShardPacker<S: ShardSink> {
    sink: S,
    max_shard_bytes: u64,
    current: Vec<u8>,
    shards: Vec<ShardEntry>,
    tensors: Vec<TensorEntry>,
}

impl<S: ShardSink> ShardPacker<S> {
    pub fn new(sink: S, max_shard_bytes: u64) -> Result<Self> {
        if max_shard_bytes < ALIGNMENT {
            return Err(FormatError::invalid(
                "max_shard_bytes",
                format!("{max_shard_bytes} is smaller than the {ALIGNMENT}-byte alignment"),
            ));
        }
        Ok(Self { sink, max_shard_bytes, current: Vec::new(), shards: Vec::new(), tensors: Vec::new() })
    }

    /// Append a tensor whose `bytes` are already in `encoding`, row-major, little-endian.
    pub fn add(&mut self, name: &str, shape: &[usize], encoding: Encoding, bytes: &[u8]) -> Result<()> {
        if bytes.len() != encoding.byte_len(shape) {
            return Err(FormatError::BadTensorEntry {
                name: name.to_string(),
                reason: format!(
                    "{} bytes given, shape {shape:?} in {encoding} needs {}",
                    bytes.len(),
                    encoding.byte_len(shape)
                ),
            });
        }
        let piece = if bytes.len() as u64 <= self.max_shard_bytes {
            bytes.len().max(1)
        } else {
            (self.max_shard_bytes - self.max_shard_bytes % ALIGNMENT) as usize
        };
        let mut parts = Vec::new();
        for chunk in bytes.chunks(piece) {
            let offset = self.current.len().next_multiple_of(ALIGNMENT as usize);
            if !self.current.is_empty() && (offset + chunk.len()) as u64 > self.max_shard_bytes {
                self.flush()?;
            }
            let offset = self.current.len().next_multiple_of(ALIGNMENT as usize);
            self.current.resize(offset, 0);
            self.current.extend_from_slice(chunk);
            parts.push(TensorPart {
                shard: self.shards.len(),
                offset: offset as u64,
                bytes: chunk.len() as u64,
            });
        }
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            encoding: encoding.tag().to_string(),
            bytes: bytes.len() as u64,
            parts,
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let file = shard_file_name(self.shards.len());
        self.sink.write_shard(&file, &self.current)?;
        self.shards.push(ShardEntry {
            file,
            bytes: self.current.len() as u64,
            sha256: sha256_hex(&self.current),
        });
        self.current.clear();
        Ok(())
    }

    /// Write the last shard and return the sink with the shard and tensor tables.
    pub fn finish(mut self) -> Result<(S, Vec<ShardEntry>, Vec<TensorEntry>)> {
        if !self.current.is_empty() {
            self.flush()?;
        }
        Ok((self.sink, self.shards, self.tensors))
    }
}

/// Check one shard's bytes against its manifest entry: length first, then sha256.
pub fn verify_shard(entry: &ShardEntry, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != entry.bytes {
        return Err(FormatError::ShardSizeMismatch {
            shard: entry.file.clone(),
            expected: entry.bytes,
            found: bytes.len() as u64,
        });
    }
    let found = sha256_hex(bytes);
    if found != entry.sha256 {
        return Err(FormatError::ChecksumMismatch {
            shard: entry.file.clone(),
            expected: entry.sha256.clone(),
            found,
        });
    }
    Ok(())
}

/// Check `tokenizer.json`'s bytes against the manifest's tokenizer checksum.
pub fn verify_tokenizer(manifest: &Manifest, bytes: &[u8]) -> Result<()> {
    let found = sha256_hex(bytes);
    if found != manifest.tokenizer.sha256 {
        return Err(FormatError::ChecksumMismatch {
            shard: manifest.tokenizer.file.clone(),
            expected: manifest.tokenizer.sha256.clone(),
            found,
        });
    }
    Ok(())
}

/// A model's shards collected one at a time, in any order (as downloads finish), each verified
/// against the manifest when it is added; [`ShardSet::finish`] gives the [`ModelData`].
pub struct ShardSet {
    manifest: Manifest,
    shards: Vec<Option<Vec<u8>>>,
}

impl ShardSet {
    pub fn new(manifest: Manifest) -> Self {
        let shards = vec![None; manifest.shards.len()];
        Self { manifest, shards }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Verify shard `index` (size, then sha256) and keep its bytes.
    pub fn add(&mut self, index: usize, bytes: Vec<u8>) -> Result<()> {
        let count = self.shards.len();
        let entry = self.manifest.shards.get(index).ok_or(FormatError::NoSuchShard { index, count })?;
        verify_shard(entry, &bytes)?;
        self.shards[index] = Some(bytes);
        Ok(())
    }

    /// The model, once every shard has been added.
    pub fn finish(self) -> Result<ModelData> {
        let mut shards = Vec::with_capacity(self.shards.len());
        for (entry, bytes) in self.manifest.shards.iter().zip(self.shards) {
            shards.push(bytes.ok_or_else(|| FormatError::MissingShard { shard: entry.file.clone() })?);
        }
        Ok(ModelData { manifest: self.manifest, shards })
    }
}

/// A validated manifest together with its verified shard bytes.
pub struct ModelData {
    pub manifest: Manifest,
    shards: Vec<Vec<u8>>,
}

impl ModelData {
    /// Verify every shard against the manifest and keep them.
    pub fn new(manifest: Manifest, shards: Vec<Vec<u8>>) -> Result<Self> {
        if shards.len() != manifest.shards.len() {
            return Err(FormatError::NoSuchShard {
                index: shards.len().min(manifest.shards.len()),
                count: manifest.shards.len(),
            });
        }
        let mut set = ShardSet::new(manifest);
        for (index, bytes) in shards.into_iter().enumerate() {
            set.add(index, bytes)?;
        }
        set.finish()
    }

    /// The bytes of a tensor's parts, concatenated (borrowed when it has a single part).
    pub fn tensor_bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let entry = self.manifest.tensor(name)?;
        let slice = |p: &TensorPart| &self.shards[p.shard][p.offset as usize..(p.offset + p.bytes) as usize];
        Ok(match entry.parts.as_slice() {
            [one] => Cow::Borrowed(slice(one)),
            parts => Cow::Owned(parts.iter().flat_map(|p| slice(p).iter().copied()).collect()),
        })
    }

    /// A tensor's values widened to f32.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let entry = self.manifest.tensor(name)?;
        Ok(entry.encoding()?.decode_f32(&self.tensor_bytes(name)?, &entry.shape))
    }

    pub fn shard(&self, index: usize) -> &[u8] {
        &self.shards[index]
    }
}
