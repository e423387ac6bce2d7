//! One candidate β written out: the kept components as factor tensors (rounded through their
//! stored encoding), the compression section (ranks, achieved ratios, K/V cache, bytes per
//! component), the model rotated and quantized when the recipe asks, and the files.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use pocketvlm_format::architecture::expected_tensors;
use pocketvlm_format::components::Component;
use pocketvlm_format::{
    CalibrationInfo, ComponentBytes, Compression, Encoding, KvCacheInfo, LayerRanks, Ratios,
};

use super::calibrate::{self, Calibration};
use super::targets::{dense_weight_name, mlp_name, target_factors};
use super::{Clock, LowRankOptions};
use crate::allocate::Choice;
use crate::budget;
use crate::checkpoint::{RawTensor, SourceMeta};
use crate::error::{CompressError, Result};
use crate::lowrank::Decomposition;
use crate::lowrank::linalg::to_rows_f32;
use crate::model::weights::{encode, round_through};
use crate::model::{Proj, Target, Tower};
use crate::quant::quantize_tensors;
use crate::writer::{OutTensor, Sections, Written, write_model};

/// Write the model of `choices` at `beta` to `out_dir`; its manifest and compression section.
/// `meta.model` is the source config on entry (a rotation that unties `lm_head` changes it).
#[allow(clippy::too_many_arguments)]
pub fn emit(
    meta: &mut SourceMeta,
    tensors: &BTreeMap<String, RawTensor<'_>>,
    decs: &BTreeMap<Target, Decomposition>,
    choices: &BTreeMap<Target, Choice>,
    opts: &LowRankOptions,
    beta: f64,
    calibration: Option<&Calibration>,
    out_dir: &Path,
    clock: &mut Clock,
) -> Result<(Written, Compression)> {
    let cfg = meta.model.clone();
    let (t, b, method) = (&cfg.text, &opts.budgets, opts.method);
    // the kept components as factor tensors, and the ranks of each layer
    let mut text_layers: Vec<LayerRanks> =
        (0..t.num_hidden_layers).map(|l| LayerRanks { layer: l, ..Default::default() }).collect();
    let mut vision_layers: Vec<LayerRanks> = if b.vision_qkv_params.is_some() {
        (0..cfg.vision.num_hidden_layers).map(|l| LayerRanks { layer: l, ..Default::default() }).collect()
    } else {
        Vec::new()
    };
    let mut factors: HashMap<String, (Vec<usize>, Encoding, Vec<f32>)> = HashMap::new();
    for (tg, choice) in choices {
        let Choice::Keep(kept) = choice else { continue };
        let layer = match tg.tower {
            Tower::Text => &mut text_layers[tg.layer],
            Tower::Vision => &mut vision_layers[tg.layer],
        };
        match tg.proj {
            Proj::Qkv => layer.qkv = Some(kept.len()),
            Proj::Kv => layer.kv = Some(kept.len()),
            Proj::Mlp(i) => {
                layer.mlp.insert(mlp_name(&cfg, tg.tower, i).to_string(), kept.len());
            }
            Proj::Out => {
                return Err(CompressError::BadOptions {
                    recipe: method.name().into(),
                    what: "no factored attention output projections (the format has none)".into(),
                });
            }
        }
        let encoding = opts.factor_encoding.unwrap_or(tensors[&dense_weight_name(&cfg, *tg)].encoding);
        for (name, m) in target_factors(&cfg, &decs[tg], *tg, kept, beta) {
            let values = round_through(encoding, &to_rows_f32(&m))?;
            factors.insert(name, (vec![m.nrows(), m.ncols()], encoding, values));
        }
    }
    clock.lap("allocation and factors");

    // the compression section: ranks, achieved ratios, K/V cache, sizes
    let mut compression = Compression {
        recipe: method.name().to_string(),
        beta,
        budgets: Ratios { qkv_params: b.qkv_params, kv_cache: b.kv_cache, ffn_params: b.ffn_params },
        achieved: Ratios::default(),
        text_layers,
        vision_layers,
        sizes: Vec::new(),
        kv_cache: KvCacheInfo { element_bytes: 2, bytes_per_token: 0, dense_bytes_per_token: 0 },
        calibration: match (&opts.calib, calibration) {
            (Some(c), Some(calibration)) => calibrate::info(c, calibration),
            _ => CalibrationInfo::none(),
        },
    };
    compression.achieved = budget::achieved(&cfg, &compression);
    budget::record_kv_cache(&cfg, &mut compression, opts.quant.is_some());

    let layout = expected_tensors(&cfg, Some(&compression));
    let dense_layout = expected_tensors(&cfg, None);
    let mut sizes: BTreeMap<Component, ComponentBytes> = Component::ALL
        .iter()
        .map(|c| {
            (
                *c,
                ComponentBytes {
                    component: c.name().into(),
                    params: 0,
                    bytes: 0,
                    dense_params: 0,
                    dense_bytes: 0,
                },
            )
        })
        .collect();
    for (name, shape) in &dense_layout {
        let e = sizes.get_mut(&Component::of(name)).expect("every component listed");
        let numel: usize = shape.iter().product();
        e.dense_params += numel as u64;
        e.dense_bytes += tensors[name].bytes.len() as u64;
    }
    let mut out: Vec<OutTensor<'_>> = Vec::with_capacity(layout.len());
    for (name, shape) in layout {
        out.push(match factors.remove(&name) {
            Some((fshape, enc, values)) => {
                debug_assert_eq!(fshape, shape);
                OutTensor { name, shape, encoding: enc, bytes: Cow::Owned(encode(enc, &values)?) }
            }
            None => {
                let raw = &tensors[&name];
                OutTensor { name, shape, encoding: raw.encoding, bytes: Cow::Borrowed(raw.bytes) }
            }
        });
    }
    // a rotation that unties lm_head changes the config the manifest records
    let (quantization, allocation) = match &opts.quant {
        Some(q) => {
            let (tensors, quantized) = quantize_tensors(
                &mut meta.model,
                Some(&compression),
                out,
                q,
                calibration.map(|c| c.samples.samples.as_slice()),
            )?;
            out = tensors;
            clock.lap("quantize");
            (Some(quantized.section), quantized.allocation)
        }
        None => (None, None),
    };
    compression.sizes = sizes.into_values().collect();
    budget::count_sizes(&mut compression.sizes, &out);
    let sections = Sections {
        recipe: method.name(),
        compression: Some(compression.clone()),
        quantization,
        allocation: allocation.as_ref(),
    };
    let written = write_model(meta, sections, out, out_dir, opts.max_shard_bytes)?;
    clock.lap("write");
    Ok((written, compression))
}
