//! The manifest: `manifest.json` at the root of a model directory.
//!
//! ```text
//! {
//!   "format": "pocketvlm", "version": 2,
//!   "model": ModelConfig, "processor": ProcessorConfig,
//!   "tokenizer": TokenizerInfo, "generation": GenerationConfig,
//!   "source": SourceInfo,
//!   "compression": Compression,          (v2, optional: low-rank factors; see crate::compression)
//!   "quantization": Quantization,        (v3, optional: packed integer weights; see crate::quant)
//!   "shards":  [{"file": "shard-00000.bin", "bytes": N, "sha256": "…"}],
//!   "tensors": [{"name": "…", "shape": [..], "encoding": "bf16", "bytes": N,
//!                "parts": [{"shard": 0, "offset": 0, "bytes": N}]}]
//! }
//! ```
//!
//! A tensor's bytes are the concatenation of its parts. A tensor that fits in one shard has one
//! part; one larger than the shard size limit is split over consecutive shards, so every shard
//! stays small enough for a browser to fetch and cache on its own. Every part starts at a
//! multiple of [`ALIGNMENT`] bytes in its shard (WebGPU's storage-buffer offset alignment), so a
//! shard can be bound or copied to the GPU without repacking.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::architecture::expected_tensors;
use crate::compression::Compression;
use crate::config::{GenerationConfig, ModelConfig, ProcessorConfig, TokenizerInfo};
use crate::encoding::Encoding;
use crate::error::{FormatError, Result};
use crate::quant::{Quantization, scale_name};

/// The format tag every manifest carries.
pub const FORMAT_TAG: &str = "pocketvlm";
/// Oldest manifest version this reader accepts.
pub const MIN_VERSION: u32 = 1;
/// Newest manifest version this reader accepts (and the one the writer produces).
///
/// Version 2 adds the optional `compression` section and the low-rank factor tensors it implies;
/// a manifest without that section means the same in both versions, so every v1 model loads.
/// Version 3 adds the optional `quantization` section, the packed `i8` / `i4` encodings and the
/// scale tensors; without that section a v3 manifest means what a v2 one does.
pub const VERSION: u32 = 3;
/// First version that may carry a `compression` section.
pub const COMPRESSION_VERSION: u32 = 2;
/// First version that may carry a `quantization` section.
pub const QUANTIZATION_VERSION: u32 = 3;
/// Byte alignment of every tensor part inside a shard.
pub const ALIGNMENT: u64 = 256;
/// Default upper bound on a shard's size: 32 MiB.
pub const DEFAULT_SHARD_BYTES: u64 = 32 << 20;
/// File name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub model: ModelConfig,
    pub processor: ProcessorConfig,
    pub tokenizer: TokenizerInfo,
    pub generation: GenerationConfig,
    pub source: SourceInfo,
    /// Low-rank factorisation (v2); absent for dense models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Low-bit weights and their arithmetic (v3); absent for float models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
    pub shards: Vec<ShardEntry>,
    pub tensors: Vec<TensorEntry>,
}

/// Where the model came from and how it was converted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// The conversion recipe (`"dense"` in v1).
    pub recipe: String,
    /// Config keys that were absent from the checkpoint and resolved to the reference
    /// implementation's documented defaults, as `"key=value"`.
    pub defaulted_keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub file: String,
    pub bytes: u64,
    /// Lower-case hex sha256 of the whole shard file.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// Encoding tag; see [`Encoding`]. Kept as text so an unknown tag is reported by name.
    pub encoding: String,
    /// Total byte length (sum of the parts).
    pub bytes: u64,
    pub parts: Vec<TensorPart>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorPart {
    pub shard: usize,
    pub offset: u64,
    pub bytes: u64,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn encoding(&self) -> Result<Encoding> {
        Encoding::parse(&self.encoding, &self.name)
    }
}

/// Just enough of a manifest to check the tag and version before parsing the rest, so a newer
/// manifest is reported as an unsupported version rather than as a field error.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<u32>,
}

impl Manifest {
    /// Parse and fully validate a manifest (structure, encodings, layout and config shapes).
    pub fn from_json(text: &str) -> Result<Self> {
        let header: Header =
            serde_json::from_str(text).map_err(|e| FormatError::InvalidManifest(e.to_string()))?;
        let tag = header.format.unwrap_or_default();
        if tag != FORMAT_TAG {
            return Err(FormatError::NotAPocketVlmManifest { found: tag, expected: FORMAT_TAG });
        }
        let version =
            header.version.ok_or_else(|| FormatError::InvalidManifest("missing \"version\"".into()))?;
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion { found: version, min: MIN_VERSION, max: VERSION });
        }
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| FormatError::InvalidManifest(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serializes")
    }

    /// Look a tensor up by name.
    pub fn tensor(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| FormatError::NoSuchTensor { name: name.to_string() })
    }

    /// Total bytes of all shards (what a client downloads besides the manifest and tokenizer).
    pub fn total_shard_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// Check everything that can be checked without reading the shards.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        if let Some(c) = &self.compression {
            if self.version < COMPRESSION_VERSION {
                return Err(FormatError::InvalidManifest(format!(
                    "a \"compression\" section needs format version {COMPRESSION_VERSION} or later, found {}",
                    self.version
                )));
            }
            c.validate(&self.model)?;
        }
        self.validate_layout()?;
        self.validate_against_config()?;
        self.validate_quantization()
    }

    /// A quantized layer's weight must be a listed 2-D tensor in the packed encoding of its
    /// bits, with a scale tensor of the implied shape in f32 or f16; float models have no
    /// packed tensors.
    fn validate_quantization(&self) -> Result<()> {
        let Some(q) = &self.quantization else {
            if let Some(t) =
                self.tensors.iter().find(|t| t.encoding().is_ok_and(|e| e.packed_bits().is_some()))
            {
                return Err(FormatError::BadTensorEntry {
                    name: t.name.clone(),
                    reason: "packed integer tensor in a manifest without a quantization section".into(),
                });
            }
            return Ok(());
        };
        if self.version < QUANTIZATION_VERSION {
            return Err(FormatError::InvalidManifest(format!(
                "a \"quantization\" section needs format version {QUANTIZATION_VERSION} or later, found {}",
                self.version
            )));
        }
        if let Some(r) = &q.residual_rotation {
            r.build()?;
        }
        let mut seen = HashMap::new();
        for layer in &q.layers {
            let bad = |reason: String| FormatError::BadTensorEntry { name: layer.weight.clone(), reason };
            if seen.insert(layer.weight.as_str(), ()).is_some() {
                return Err(bad("quantized twice".into()));
            }
            let w = self.tensor(&layer.weight)?;
            let [out, cols] = w.shape[..] else {
                return Err(bad(format!("a quantized weight is 2-D, shape {:?}", w.shape)));
            };
            let want = if layer.weight_bits == 4 { Encoding::I4 } else { Encoding::I8 };
            if w.encoding()? != want {
                return Err(bad(format!(
                    "{}-bit weights are stored as {want}, found {}",
                    layer.weight_bits, w.encoding
                )));
            }
            layer.validate(cols)?;
            let s = self.tensor(&scale_name(&layer.weight))?;
            let shape = layer.scale_shape(out, cols);
            if s.shape != shape {
                return Err(FormatError::ShapeMismatch {
                    name: s.name.clone(),
                    expected: shape,
                    found: s.shape.clone(),
                });
            }
            if !matches!(s.encoding()?, Encoding::F32 | Encoding::F16) {
                return Err(FormatError::BadTensorEntry {
                    name: s.name.clone(),
                    reason: format!("scales are f32 or f16, found {}", s.encoding),
                });
            }
        }
        let mut tables = HashMap::new();
        for table in &q.tables {
            let bad = |reason: String| FormatError::BadTensorEntry { name: table.tensor.clone(), reason };
            if tables.insert(table.tensor.as_str(), ()).is_some() {
                return Err(bad("listed twice as a table".into()));
            }
            let bits = crate::quant::Bits::from_bits(table.bits)?;
            let t = self.tensor(&table.tensor)?;
            let [rows, cols] = t.shape[..] else {
                return Err(bad(format!("a quantized table is 2-D, shape {:?}", t.shape)));
            };
            bits.check_row(cols)?;
            let want = if bits == crate::quant::Bits::Int4 { Encoding::I4 } else { Encoding::I8 };
            if t.encoding()? != want {
                return Err(bad(format!(
                    "{}-bit tables are stored as {want}, found {}",
                    table.bits, t.encoding
                )));
            }
            if let Some(layer) = q.layers.iter().find(|l| l.weight == table.tensor)
                && (layer.weight_bits != table.bits || layer.group.is_some())
            {
                return Err(bad(
                    "a table that is also a layer has that layer's bits and one scale per row".into()
                ));
            }
            let s = self.tensor(&scale_name(&table.tensor))?;
            if s.shape != [rows] {
                return Err(FormatError::ShapeMismatch {
                    name: s.name.clone(),
                    expected: vec![rows],
                    found: s.shape.clone(),
                });
            }
            if !matches!(s.encoding()?, Encoding::F32 | Encoding::F16) {
                return Err(FormatError::BadTensorEntry {
                    name: s.name.clone(),
                    reason: format!("scales are f32 or f16, found {}", s.encoding),
                });
            }
        }
        if let Some(t) = self.tensors.iter().find(|t| {
            t.encoding().is_ok_and(|e| e.packed_bits().is_some())
                && !seen.contains_key(t.name.as_str())
                && !tables.contains_key(t.name.as_str())
        }) {
            return Err(FormatError::BadTensorEntry {
                name: t.name.clone(),
                reason: "packed integer tensor not listed in the quantization section".into(),
            });
        }
        Ok(())
    }

    fn validate_layout(&self) -> Result<()> {
        for file in self.shards.iter().map(|s| s.file.as_str()).chain([self.tokenizer.file.as_str()]) {
            check_file_name(file)?;
        }
        let mut seen = HashMap::new();
        for t in &self.tensors {
            if seen.insert(t.name.as_str(), ()).is_some() {
                return Err(FormatError::DuplicateTensor { name: t.name.clone() });
            }
            let bad = |reason: String| FormatError::BadTensorEntry { name: t.name.clone(), reason };
            let encoding = t.encoding()?;
            encoding.check_shape(&t.shape).map_err(|e| bad(e.to_string()))?;
            let want = encoding.byte_len(&t.shape) as u64;
            if t.bytes != want {
                return Err(bad(format!(
                    "{} bytes listed, shape {:?} in {} needs {}",
                    t.bytes, t.shape, encoding, want
                )));
            }
            let parts_total: u64 = t.parts.iter().map(|p| p.bytes).sum();
            if parts_total != t.bytes || t.parts.is_empty() {
                return Err(bad(format!("parts hold {parts_total} bytes, tensor has {}", t.bytes)));
            }
            for p in &t.parts {
                let shard = self
                    .shards
                    .get(p.shard)
                    .ok_or(FormatError::NoSuchShard { index: p.shard, count: self.shards.len() })?;
                if p.offset % ALIGNMENT != 0 {
                    return Err(bad(format!("offset {} is not {ALIGNMENT}-byte aligned", p.offset)));
                }
                if p.offset.checked_add(p.bytes).is_none_or(|end| end > shard.bytes) {
                    return Err(bad(format!(
                        "part [{}, +{}) runs past the end of shard {:?} ({} bytes)",
                        p.offset, p.bytes, shard.file, shard.bytes
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_against_config(&self) -> Result<()> {
        let mut expected = expected_tensors(&self.model, self.compression.as_ref());
        if let Some(q) = &self.quantization {
            // scale shapes are checked with the rest of the section
            let quantized = q.layers.iter().map(|l| &l.weight).chain(q.tables.iter().map(|t| &t.tensor));
            let mut names: Vec<String> = quantized.map(|w| scale_name(w)).collect();
            names.sort();
            names.dedup();
            for name in names {
                if let Some(t) = self.tensors.iter().find(|t| t.name == name) {
                    expected.push((name, t.shape.clone()));
                }
            }
        }
        let listed: HashMap<&str, &TensorEntry> = self.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        for (name, shape) in &expected {
            let entry =
                listed.get(name.as_str()).ok_or_else(|| FormatError::MissingTensor { name: name.clone() })?;
            if &entry.shape != shape {
                return Err(FormatError::ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: entry.shape.clone(),
                });
            }
        }
        if self.tensors.len() != expected.len() {
            let known: HashMap<&str, ()> = expected.iter().map(|(n, _)| (n.as_str(), ())).collect();
            if let Some(extra) = self.tensors.iter().find(|t| !known.contains_key(t.name.as_str())) {
                return Err(FormatError::UnexpectedTensor { name: extra.name.clone() });
            }
        }
        Ok(())
    }
}

/// Shard and tokenizer files are plain names inside the model directory (or under the model's
/// base URL): no path separators, no `.`/`..`, nothing a URL would read as a scheme, query,
/// fragment or escape.
fn check_file_name(file: &str) -> Result<()> {
    let plain = !matches!(file, "" | "." | "..")
        && !file.chars().any(|c| c.is_control() || matches!(c, '/' | '\\' | ':' | '?' | '#' | '%'));
    if !plain {
        return Err(FormatError::InvalidManifest(format!("{file:?} is not a plain file name")));
    }
    Ok(())
}
