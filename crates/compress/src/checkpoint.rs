//! Hugging Face safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pocketvlm_format::{Encoding, FormatError};
use safetensors::{Dtype, SafeTensors};

use crate::error::{CompressError, Result};
use crate::hf_config::read_json;

/// The raw bytes of every safetensors file of a checkpoint.
pub struct Checkpoint {
    files: Vec<(String, Vec<u8>)>,
}

/// One tensor, borrowed from its file.
pub struct RawTensor<'a> {
    pub encoding: Encoding,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl Checkpoint {
    /// Read the safetensors file(s) of the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index.exists() {
            let json = read_json(&index)?;
            let map =
                json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| CompressError::BadJson {
                    path: index.display().to_string(),
                    reason: "no \"weight_map\" object".into(),
                })?;
            let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            files.sort_unstable();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(CompressError::NotACheckpoint {
                path: dir.display().to_string(),
                reason: "neither model.safetensors nor model.safetensors.index.json".into(),
            });
        };
        let files = paths
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p)
                    .map_err(|e| FormatError::Io { path: p.display().to_string(), source: e })?;
                Ok((p.display().to_string(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { files })
    }

    /// Every tensor by name, with its encoding and shape.
    pub fn tensors(&self) -> Result<BTreeMap<String, RawTensor<'_>>> {
        let mut out = BTreeMap::new();
        for (file, bytes) in &self.files {
            let st = SafeTensors::deserialize(bytes)
                .map_err(|e| CompressError::BadSafetensors { file: file.clone(), reason: e.to_string() })?;
            for (name, view) in st.tensors() {
                let encoding = match view.dtype() {
                    Dtype::F32 => Encoding::F32,
                    Dtype::F16 => Encoding::F16,
                    Dtype::BF16 => Encoding::BF16,
                    other => {
                        return Err(CompressError::UnsupportedDtype { name, dtype: format!("{other:?}") });
                    }
                };
                let tensor = RawTensor { encoding, shape: view.shape().to_vec(), bytes: view.data() };
                if out.insert(name.clone(), tensor).is_some() {
                    return Err(CompressError::DuplicateTensor { name });
                }
            }
        }
        Ok(out)
    }
}
