//! A Hugging Face checkpoint directory: its settings ([`SourceMeta`]: `config.json`, the
//! processor, generation and tokenizer settings, the tokenizer) and its safetensors weights
//! ([`Checkpoint`]: one `model.safetensors`, or shards listed by `model.safetensors.index.json`),
//! checked against the architecture ([`check_checkpoint_tensors`]); [`Source`] is all three,
//! the way every command that reads a checkpoint opens one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pocketvlm_format::architecture::dense_tensors;
use pocketvlm_format::{
    Encoding, FormatError, GenerationConfig, ModelConfig, ProcessorConfig, TokenizerInfo,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::error::{CompressError, Result};
use crate::hf_config::{generation_config, model_config, processor_config, read_json};
use crate::tokenizer;

/// The raw bytes of every safetensors file of a checkpoint, and where each tensor lies in them
/// (the headers parsed once, at [`Checkpoint::open`]).
pub struct Checkpoint {
    files: Vec<Vec<u8>>,
    index: BTreeMap<String, Located>,
}

/// A tensor's encoding, shape, file and byte range in it.
struct Located {
    encoding: Encoding,
    shape: Vec<usize>,
    file: usize,
    bytes: std::ops::Range<usize>,
}

/// One tensor, borrowed from its file.
pub struct RawTensor<'a> {
    pub encoding: Encoding,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl Checkpoint {
    /// Read the safetensors file(s) of the checkpoint in `dir` and index their tensors (typed
    /// errors for a malformed file, an unsupported dtype or a tensor in two files).
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
        let mut files = Vec::with_capacity(paths.len());
        let mut index = BTreeMap::new();
        for (file, path) in paths.iter().enumerate() {
            let bytes = std::fs::read(path)
                .map_err(|e| FormatError::Io { path: path.display().to_string(), source: e })?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| CompressError::BadSafetensors {
                file: path.display().to_string(),
                reason: e.to_string(),
            })?;
            for (name, view) in st.tensors() {
                let encoding = match view.dtype() {
                    Dtype::F32 => Encoding::F32,
                    Dtype::F16 => Encoding::F16,
                    Dtype::BF16 => Encoding::BF16,
                    other => {
                        return Err(CompressError::UnsupportedDtype { name, dtype: format!("{other:?}") });
                    }
                };
                let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
                let bytes = start..start + view.data().len();
                let located = Located { encoding, shape: view.shape().to_vec(), file, bytes };
                if index.insert(name.clone(), located).is_some() {
                    return Err(CompressError::DuplicateTensor { name });
                }
            }
            files.push(bytes);
        }
        Ok(Self { files, index })
    }

    /// Every tensor by name, with its encoding and shape.
    pub fn tensors(&self) -> BTreeMap<String, RawTensor<'_>> {
        self.index
            .iter()
            .map(|(name, t)| {
                let bytes = &self.files[t.file][t.bytes.clone()];
                (name.clone(), RawTensor { encoding: t.encoding, shape: t.shape.clone(), bytes })
            })
            .collect()
    }
}

/// A checkpoint directory opened for compression: its settings, and its weights checked
/// against the architecture those settings describe.
pub struct Source {
    pub dir: PathBuf,
    pub meta: SourceMeta,
    checkpoint: Checkpoint,
}

impl Source {
    /// Read the settings ([`SourceMeta::read`]) and the weights ([`Checkpoint::open`]) of the
    /// checkpoint in `dir`, and check that it holds exactly its architecture's tensors.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = SourceMeta::read(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        check_checkpoint_tensors(&meta.model, &checkpoint.tensors())?;
        Ok(Self { dir: dir.to_path_buf(), meta, checkpoint })
    }

    /// Every tensor by name (the set [`Source::open`] checked).
    pub fn tensors(&self) -> BTreeMap<String, RawTensor<'_>> {
        self.checkpoint.tensors()
    }
}

fn optional_json(path: PathBuf) -> Result<Option<Value>> {
    if path.exists() { read_json(&path).map(Some) } else { Ok(None) }
}

/// Everything of a checkpoint directory except the weights, resolved into manifest sections.
#[derive(Clone)]
pub struct SourceMeta {
    pub model: ModelConfig,
    pub processor: ProcessorConfig,
    pub generation: GenerationConfig,
    pub tokenizer_bytes: Vec<u8>,
    pub tokenizer: TokenizerInfo,
    pub defaulted: Vec<String>,
}

impl SourceMeta {
    /// Read `config.json`, the processor settings, the generation config and the tokenizer.
    pub fn read(hf_dir: &Path) -> Result<Self> {
        let config_path = hf_dir.join("config.json");
        if !config_path.exists() {
            return Err(CompressError::NotACheckpoint {
                path: hf_dir.display().to_string(),
                reason: "no config.json".into(),
            });
        }
        let config = read_json(&config_path)?;
        let mut defaulted = Vec::new();
        let model = model_config(&config, &mut defaulted)?;

        let processor = optional_json(hf_dir.join("processor_config.json"))?;
        let image_processor = match optional_json(hf_dir.join("preprocessor_config.json"))? {
            Some(v) => v,
            None => processor.as_ref().and_then(|p| p.get("image_processor")).cloned().ok_or_else(|| {
                CompressError::NotACheckpoint {
                    path: hf_dir.display().to_string(),
                    reason: "no image processor settings (preprocessor_config.json)".into(),
                }
            })?,
        };
        let processor_cfg = processor_config(&image_processor, processor.as_ref(), &model, &mut defaulted)?;
        let generation =
            generation_config(optional_json(hf_dir.join("generation_config.json"))?.as_ref(), &config)?;
        let (tokenizer_bytes, tokenizer) = tokenizer::read(hf_dir, processor.as_ref())?;
        Ok(Self { model, processor: processor_cfg, generation, tokenizer_bytes, tokenizer, defaulted })
    }
}

/// Check that a checkpoint holds exactly the tensors of its architecture (a stored `lm_head`
/// is tolerated, and skipped, when embeddings are tied).
pub fn check_checkpoint_tensors(
    model: &ModelConfig,
    tensors: &BTreeMap<String, RawTensor<'_>>,
) -> Result<()> {
    let expected = dense_tensors(model);
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let skipped = |n: &str| model.text.tie_word_embeddings && n == "lm_head.weight";
    if let Some(extra) = tensors.keys().find(|n| !known.contains(n.as_str()) && !skipped(n)) {
        return Err(FormatError::UnexpectedTensor { name: extra.clone() }.into());
    }
    for (name, shape) in &expected {
        let t = tensors.get(name).ok_or_else(|| FormatError::MissingTensor { name: name.clone() })?;
        if &t.shape != shape {
            return Err(FormatError::ShapeMismatch {
                name: name.clone(),
                expected: shape.clone(),
                found: t.shape.clone(),
            }
            .into());
        }
    }
    Ok(())
}
