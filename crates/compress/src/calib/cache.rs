//! A file that keeps prepared calibration samples (token ids with their targets, tiles and image
//! features), so repeated compressions of one checkpoint with the same calibration options skip
//! the vision tower and the greedy answers. A safetensors file; its metadata holds the key
//! (checkpoint, data and options) and per-sample bookkeeping. A file whose key differs is
//! rebuilt.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::calib::data::{CalibOptions, CalibSource, Sample, Samples};
use crate::checkpoint::Source;
use crate::error::{CompressError, Result};
use crate::model::CpuModel;
use crate::progress::Stage;

/// The key a cache file must match.
pub fn cache_key(model_dir: &Path, opts: &CalibOptions) -> String {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let source = match &opts.source {
        CalibSource::Images(d) => format!("images:{}", canon(d)),
        CalibSource::Text(f) => format!("text:{}", canon(f)),
        CalibSource::Both { images, text } => format!("images:{};text:{}", canon(images), canon(text)),
    };
    serde_json::json!({
        "model": canon(model_dir),
        "source": source,
        "samples": opts.samples,
        "seed": opts.seed,
        "max_tokens": opts.max_tokens,
        "tiling": opts.tiling,
        "instruction": opts.instruction,
    })
    .to_string()
}

fn bad(path: &Path, reason: impl ToString) -> CompressError {
    CompressError::BadSafetensors { file: path.display().to_string(), reason: reason.to_string() }
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Load the samples if `path` holds a cache with this key.
pub fn load(path: &Path, key: &str) -> Result<Option<Samples>> {
    let Ok(bytes) = std::fs::read(path) else { return Ok(None) };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, e))?;
    let info = meta.metadata().clone().unwrap_or_default();
    if info.get("key").map(String::as_str) != Some(key) {
        return Ok(None);
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e))?;
    let field = |k: &str| info.get(k).cloned().ok_or_else(|| bad(path, format!("no {k}")));
    let names: Vec<String> = serde_json::from_str(&field("names")?).map_err(|e| bad(path, e))?;
    let starts: Vec<usize> = serde_json::from_str(&field("answer_starts")?).map_err(|e| bad(path, e))?;
    let tensor = |name: &str| -> Result<Option<Tensor>> {
        match st.tensor(name) {
            Ok(v) => {
                let values: Vec<f32> =
                    v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Ok(Some(Tensor::from_vec(values, v.shape().to_vec(), &Device::Cpu)?))
            }
            Err(_) => Ok(None),
        }
    };
    let mut samples = Vec::new();
    for (i, (name, start)) in names.into_iter().zip(starts).enumerate() {
        let ids = st.tensor(&format!("{i}.ids")).map_err(|e| bad(path, e))?;
        let ids = ids.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        samples.push(Sample {
            name,
            ids,
            answer_start: start,
            pixels: tensor(&format!("{i}.pixels"))?,
            features: tensor(&format!("{i}.features"))?,
        });
    }
    let mode = match field("mode")?.as_str() {
        "text" => "text",
        "images+text" => "images+text",
        _ => "images",
    };
    Ok(Some(Samples { samples, mode, targets: field("targets")? }))
}

/// Write the samples with their key.
pub fn save(path: &Path, key: &str, s: &Samples) -> Result<()> {
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, x) in s.samples.iter().enumerate() {
        let ids: Vec<u8> = x.ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        blobs.push((format!("{i}.ids"), Dtype::U32, vec![x.ids.len()], ids));
        for (what, t) in [("pixels", &x.pixels), ("features", &x.features)] {
            if let Some(t) = t {
                blobs.push((format!("{i}.{what}"), Dtype::F32, t.dims().to_vec(), f32_bytes(t)?));
            }
        }
    }
    let views = blobs
        .iter()
        .map(|(n, d, shape, b)| {
            Ok((n.clone(), TensorView::new(*d, shape.clone(), b).map_err(|e| bad(path, e))?))
        })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<&str> = s.samples.iter().map(|x| x.name.as_str()).collect();
    let starts: Vec<usize> = s.samples.iter().map(|x| x.answer_start).collect();
    let info: HashMap<String, String> = [
        ("key".to_string(), key.to_string()),
        ("names".to_string(), serde_json::to_string(&names).expect("json")),
        ("answer_starts".to_string(), serde_json::to_string(&starts).expect("json")),
        ("mode".to_string(), s.mode.to_string()),
        ("targets".to_string(), s.targets.clone()),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| bad(path, e))?;
    std::fs::write(path, bytes)
        .map_err(|e| pocketvlm_format::FormatError::Io { path: path.display().to_string(), source: e }.into())
}

/// The calibration samples of `source`: read from `cache` when it holds this checkpoint's samples
/// for `opts`, prepared otherwise with `model` (the checkpoint's CPU model, built here when not
/// given) and then written to `cache`.
pub fn load_or_prepare(
    source: &Source,
    model: Option<&CpuModel>,
    opts: &CalibOptions,
    cache: Option<&Path>,
    stage: &Stage,
) -> Result<Samples> {
    let key = cache_key(&source.dir, opts);
    if let Some(path) = cache
        && let Some(s) = load(path, &key)?
    {
        return Ok(s);
    }
    let built;
    let model = match model {
        Some(model) => model,
        None => {
            built = CpuModel::from_source(source)?;
            &built
        }
    };
    let s = crate::calib::data::prepare(model, &source.meta, opts, stage)?;
    if let Some(path) = cache {
        save(path, &key, &s)?;
    }
    Ok(s)
}
