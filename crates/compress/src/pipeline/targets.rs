//! Targets and their tensors: the dense weight a target (a layer's stacked QKV, an MLP or an
//! attention output projection) replaces, and the factor tensors written for it.

use std::collections::BTreeMap;

use faer::Mat;
use pocketvlm_format::ModelConfig;
use pocketvlm_format::compression::{
    kv_factor_names, linear_factor_names, qkv_factor_names, text_layer_prefix, text_mlp_linears,
    vision_layer_prefix,
};

use crate::checkpoint::RawTensor;
use crate::error::Result;
use crate::lowrank::Decomposition;
use crate::lowrank::linalg::from_rows;
use crate::model::{Proj, Target, Tower};

/// Stacked `[W_q; W_k; W_v]` (or `[W_k; W_v]`) or a single MLP weight as `[out, in]` f64.
pub fn dense_target_weight(
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, RawTensor<'_>>,
    t: Target,
) -> Result<Mat<f64>> {
    let prefix = match t.tower {
        Tower::Text => text_layer_prefix(t.layer),
        Tower::Vision => vision_layer_prefix(t.layer),
    };
    let names: Vec<String> = match t.proj {
        Proj::Qkv => {
            ["q_proj", "k_proj", "v_proj"].iter().map(|p| format!("{prefix}.self_attn.{p}.weight")).collect()
        }
        Proj::Kv => ["k_proj", "v_proj"].iter().map(|p| format!("{prefix}.self_attn.{p}.weight")).collect(),
        Proj::Mlp(i) => vec![format!("{prefix}.mlp.{}.weight", mlp_name(cfg, t.tower, i))],
        Proj::Out => vec![format!("{prefix}.self_attn.{}.weight", out_name(t.tower))],
    };
    let mut rows = Vec::new();
    let mut cols = 0;
    let mut values = Vec::new();
    for n in names {
        let raw = tensors
            .get(&n)
            .ok_or_else(|| pocketvlm_format::FormatError::MissingTensor { name: n.clone() })?;
        rows.push(raw.shape[0]);
        cols = raw.shape[1];
        values.extend(raw.encoding.decode_f32(raw.bytes, &raw.shape));
    }
    Ok(from_rows(rows.iter().sum(), cols, &values))
}

/// The attention output projection's name in `tower`.
fn out_name(tower: Tower) -> &'static str {
    match tower {
        Tower::Text => "o_proj",
        Tower::Vision => "out_proj",
    }
}

pub(super) fn mlp_name(cfg: &ModelConfig, tower: Tower, i: usize) -> &'static str {
    match tower {
        Tower::Text => text_mlp_linears(cfg)[i].0,
        Tower::Vision => pocketvlm_format::compression::vision_mlp_linears(cfg)[i].0,
    }
}

/// Output row splits of a target (`[d_q, d_kv, d_kv]` for QKV, `[d_kv, d_kv]` for K/V).
pub fn out_splits(cfg: &ModelConfig, t: Target, rows: usize) -> Vec<usize> {
    match (t.tower, t.proj) {
        (Tower::Text, Proj::Qkv) => {
            let hd = cfg.text.head_dim;
            let kv = cfg.text.num_key_value_heads * hd;
            vec![cfg.text.num_attention_heads * hd, kv, kv]
        }
        (Tower::Vision, Proj::Qkv) => vec![cfg.vision.hidden_size; 3],
        (_, Proj::Kv) => vec![cfg.text.num_key_value_heads * cfg.text.head_dim; 2],
        _ => vec![rows],
    }
}

/// The dense weight a target replaces (for QKV, `q_proj`'s; for K/V, `k_proj`'s).
pub(super) fn dense_weight_name(cfg: &ModelConfig, t: Target) -> String {
    let prefix = match t.tower {
        Tower::Text => text_layer_prefix(t.layer),
        Tower::Vision => vision_layer_prefix(t.layer),
    };
    match t.proj {
        Proj::Qkv => format!("{prefix}.self_attn.q_proj.weight"),
        Proj::Kv => format!("{prefix}.self_attn.k_proj.weight"),
        Proj::Mlp(i) => format!("{prefix}.mlp.{}.weight", mlp_name(cfg, t.tower, i)),
        Proj::Out => format!("{prefix}.self_attn.{}.weight", out_name(t.tower)),
    }
}

/// The named factor tensors of a target for the kept components: `qkv_down` and the
/// `q_up`/`k_up`/`v_up` blocks (rows split `[d_q, d_kv, d_kv]`), `kv_down` and `k_up`/`v_up`,
/// or `{linear}.down`/`.up`.
pub fn target_factors(
    cfg: &ModelConfig,
    dec: &Decomposition,
    t: Target,
    kept: &[usize],
    beta: f64,
) -> Vec<(String, Mat<f64>)> {
    let (down, up) = dec.factors(kept, beta);
    let prefix = match t.tower {
        Tower::Text => text_layer_prefix(t.layer),
        Tower::Vision => vision_layer_prefix(t.layer),
    };
    match t.proj {
        Proj::Qkv => {
            let [dn, q, k, v] = qkv_factor_names(&format!("{prefix}.self_attn"));
            let ups = split_rows(&up, &out_splits(cfg, t, up.nrows()));
            std::iter::once((dn, down)).chain([q, k, v].into_iter().zip(ups)).collect()
        }
        Proj::Kv => {
            let [dn, k, v] = kv_factor_names(&format!("{prefix}.self_attn"));
            let ups = split_rows(&up, &out_splits(cfg, t, up.nrows()));
            std::iter::once((dn, down)).chain([k, v].into_iter().zip(ups)).collect()
        }
        Proj::Mlp(i) => {
            let (dn, upn) = linear_factor_names(&format!("{prefix}.mlp.{}", mlp_name(cfg, t.tower, i)));
            vec![(dn, down), (upn, up)]
        }
        Proj::Out => {
            let (dn, upn) = linear_factor_names(&format!("{prefix}.self_attn.{}", out_name(t.tower)));
            vec![(dn, down), (upn, up)]
        }
    }
}

/// Split `m`'s rows into consecutive blocks of the given sizes.
pub fn split_rows(m: &Mat<f64>, sizes: &[usize]) -> Vec<Mat<f64>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let block = Mat::from_fn(n, m.ncols(), |i, j| m[(start + i, j)]);
            start += n;
            block
        })
        .collect()
}
