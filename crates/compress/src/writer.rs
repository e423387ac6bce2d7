//! Writing a model directory: the tensors packed into shards, the tokenizer, the manifest, and
//! the width allocation's report when one chose the widths.

use std::path::Path;

use pocketvlm_format::dir::{DirSink, write_manifest};
use pocketvlm_format::manifest::{COMPRESSION_VERSION, FORMAT_TAG, QUANTIZATION_VERSION};
use pocketvlm_format::quant::Quantization;
use pocketvlm_format::shards::shard_file_name;
use pocketvlm_format::{Compression, Encoding, FormatError, Manifest, ShardPacker, SourceInfo};

use crate::checkpoint::SourceMeta;
use crate::error::Result;
use crate::quant::widths::WidthAllocation;
use crate::report::{self, ReportFiles};

/// A tensor on its way into the shards.
pub struct OutTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub encoding: Encoding,
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// What a model directory records beside its tensors.
pub struct Sections<'a> {
    pub recipe: &'a str,
    pub compression: Option<Compression>,
    pub quantization: Option<Quantization>,
    /// The width allocation that chose `quantization`'s widths, when one ran: its report is
    /// written beside the model.
    pub allocation: Option<&'a WidthAllocation>,
}

/// What [`write_model`] wrote.
#[derive(Debug)]
pub struct Written {
    pub manifest: Manifest,
    /// The width allocation's report and plot, when an allocation chose the widths.
    pub widths: Option<ReportFiles>,
}

/// Write a model directory: the tensors (which must be exactly those the config and
/// `sections.compression` imply, in any order), the tokenizer, the manifest and the width
/// report. What an earlier run left in `out_dir` and this model does not replace is removed — a
/// width report when this model has none, shards past this model's last ([`remove_stale_shards`])
/// — so the shards and width report beside the manifest are this model's.
pub fn write_model<'a>(
    meta: &SourceMeta,
    sections: Sections<'_>,
    tensors: impl IntoIterator<Item = OutTensor<'a>>,
    out_dir: &Path,
    max_shard_bytes: u64,
) -> Result<Written> {
    let Sections { recipe, compression, quantization, allocation } = sections;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| FormatError::Io { path: out_dir.display().to_string(), source: e })?;
    let mut packer = ShardPacker::new(DirSink { dir: out_dir.to_path_buf() }, max_shard_bytes)?;
    for t in tensors {
        packer.add(&t.name, &t.shape, t.encoding, &t.bytes)?;
    }
    let (_, shards, tensor_table) = packer.finish()?;

    let tokenizer_path = out_dir.join(&meta.tokenizer.file);
    std::fs::write(&tokenizer_path, &meta.tokenizer_bytes)
        .map_err(|e| FormatError::Io { path: tokenizer_path.display().to_string(), source: e })?;

    let manifest = Manifest {
        format: FORMAT_TAG.to_string(),
        // float models stay readable by v2 readers; v3 is written once a model is quantized
        version: if quantization.is_some() { QUANTIZATION_VERSION } else { COMPRESSION_VERSION },
        model: meta.model.clone(),
        processor: meta.processor.clone(),
        tokenizer: meta.tokenizer.clone(),
        generation: meta.generation.clone(),
        source: SourceInfo { recipe: recipe.to_string(), defaulted_keys: meta.defaulted.clone() },
        compression,
        quantization,
        shards,
        tensors: tensor_table,
    };
    manifest.validate()?;
    write_manifest(out_dir, &manifest)?;
    remove_stale_shards(out_dir, manifest.shards.len())?;
    let widths = match allocation {
        Some(a) => Some(report::widths::write(out_dir, a)?),
        None => {
            report::widths::remove(out_dir)?;
            None
        }
    };
    Ok(Written { manifest, widths })
}

/// Remove the shard files `dir` holds past the first `count` (an earlier model's, written with
/// more shards): `shard-{count}`, `shard-{count + 1}`, … up to the first that does not exist.
/// Other files are left alone.
pub(crate) fn remove_stale_shards(dir: &Path, count: usize) -> Result<()> {
    for index in count.. {
        let path = dir.join(shard_file_name(index));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(FormatError::Io { path: path.display().to_string(), source: e }.into()),
        }
    }
    Ok(())
}
