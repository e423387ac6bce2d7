//! Format v2: low-rank factor tensors and the manifest's `compression` section.
//!
//! A v2 manifest may carry a [`Compression`] section. It says which linear layers were replaced
//! by low-rank factors, with which rank, and what that bought. The tensors follow from it (see
//! [`crate::architecture::expected_tensors`]); a v1 manifest has no such section and every layer
//! is dense.
//!
//! # Tensor layout of a factored layer
//!
//! All factors keep Hugging Face's `[out, in]` convention, so a factored layer is two ordinary
//! matrix products and a kernel can consume the factors like any dense weight.
//!
//! **Joint QKV latent** (attention `{prefix}.self_attn`, rank `r`):
//!
//! | tensor | shape |
//! | --- | --- |
//! | `{prefix}.self_attn.qkv_down.weight` | `[r, d_in]` |
//! | `{prefix}.self_attn.q_up.weight` | `[d_q, r]` |
//! | `{prefix}.self_attn.k_up.weight` | `[d_kv, r]` |
//! | `{prefix}.self_attn.v_up.weight` | `[d_kv, r]` |
//!
//! replacing `q_proj.weight`, `k_proj.weight` and `v_proj.weight`. The layer computes the latent
//! `c = qkv_down · x` once per token, then `q = q_up · c (+ q_proj.bias)`, `k = k_up · c
//! (+ k_proj.bias)`, `v = v_up · c (+ v_proj.bias)`. Biases (vision tower only) keep their dense
//! names and values. RoPE applies to `q` and `k` after the up-projection, as in the dense model.
//! A decoder may cache `c` (`r` values per token) instead of `k` and `v` (`2·d_kv` values), which
//! saves memory when `r < 2·d_kv`.
//!
//! **K/V latent** (text decoder attention only, rank `r`): the same for K and V alone, Q keeping
//! its dense projection:
//!
//! | tensor | shape |
//! | --- | --- |
//! | `{prefix}.self_attn.q_proj.weight` | `[d_q, d_in]` (dense, as before) |
//! | `{prefix}.self_attn.kv_down.weight` | `[r, d_in]` |
//! | `{prefix}.self_attn.k_up.weight` | `[d_kv, r]` |
//! | `{prefix}.self_attn.v_up.weight` | `[d_kv, r]` |
//!
//! replacing `k_proj.weight` and `v_proj.weight`: `c = kv_down · x`, `k = k_up · c`,
//! `v = v_up · c`, `q = q_proj · x`. A decoder caches `c` the same way; a latent of `r` values
//! then caps only K and V, not Q (for the same cached bytes the joint latent's rank limits the
//! queries too).
//!
//! **Single factored linear** `{name}` (an MLP projection, rank `r`):
//!
//! | tensor | shape |
//! | --- | --- |
//! | `{name}.down.weight` | `[r, in]` |
//! | `{name}.up.weight` | `[out, r]` |
//!
//! replacing `{name}.weight`; `y = up · (down · x) (+ {name}.bias)`.
//!
//! The compressor chooses the kept singular components (not necessarily a prefix) and folds
//! that choice and the singular values into the factors, so a reader needs nothing but the
//! shapes: rank `r` is `qkv_down.weight`'s first dimension.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{FormatError, Result};

/// The `compression` section of a v2 manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// The method that chose the factors: `svd`, `asvd`, `svd-llm`, `qsvd` or `laser`.
    pub recipe: String,
    /// Split of the singular values between the factors: `down = Σ^β Vᵀ…`, `up = … U Σ^(1−β)`.
    pub beta: f64,
    /// Budgets as requested (`null` where none was given).
    pub budgets: Ratios,
    /// What the allocator achieved, as the same ratios.
    pub achieved: Ratios,
    /// Per text-decoder layer, in order; one entry per layer.
    pub text_layers: Vec<LayerRanks>,
    /// Per vision-encoder layer; empty when the vision tower is kept dense.
    pub vision_layers: Vec<LayerRanks>,
    /// Parameters and bytes per component, compressed and dense.
    pub sizes: Vec<ComponentBytes>,
    /// KV-cache size per token of context.
    pub kv_cache: KvCacheInfo,
    /// What the factors were calibrated on.
    pub calibration: CalibrationInfo,
}

/// Budget ratios: QKV factor parameters / dense QKV parameters, KV-cache bytes per token /
/// dense K+V bytes per token, MLP parameters / dense MLP parameters (text decoder).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratios {
    pub qkv_params: Option<f64>,
    pub kv_cache: Option<f64>,
    pub ffn_params: Option<f64>,
}

/// The ranks chosen for one transformer layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRanks {
    pub layer: usize,
    /// Rank of the joint QKV latent; `None` keeps `q_proj`, `k_proj`, `v_proj` dense.
    pub qkv: Option<usize>,
    /// Rank of a latent shared by K and V only, `q_proj` staying dense (text decoder; never
    /// together with `qkv`). Absent from manifests that do not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<usize>,
    /// Ranks of factored MLP projections by their Hugging Face name (`gate_proj`, `up_proj`,
    /// `down_proj` in the decoder; `fc1`, `fc2` in the vision tower). Absent = dense.
    pub mlp: BTreeMap<String, usize>,
}

/// What a layer's attention latent is shared by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Latent {
    /// Q, K and V (`qkv_down`, `q_up`, `k_up`, `v_up`).
    #[default]
    Qkv,
    /// K and V only (`kv_down`, `k_up`, `v_up`), Q keeping its dense `q_proj`: for the same cached
    /// values the latent's rank caps K and V, not Q.
    Kv,
}

impl Latent {
    /// `qkv` or `kv`.
    pub fn name(self) -> &'static str {
        match self {
            Latent::Qkv => "qkv",
            Latent::Kv => "kv",
        }
    }
}

impl LayerRanks {
    /// The rank of the latent the layer's attention shares (joint QKV or K/V), if it has one.
    pub fn latent(&self) -> Option<usize> {
        self.qkv.or(self.kv)
    }

    /// What the layer's latent is shared by, if it has one.
    pub fn latent_kind(&self) -> Option<Latent> {
        match (self.qkv, self.kv) {
            (Some(_), _) => Some(Latent::Qkv),
            (None, Some(_)) => Some(Latent::Kv),
            (None, None) => None,
        }
    }
}

/// Size of one model component (see [`crate::components::Component`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentBytes {
    pub component: String,
    pub params: u64,
    pub bytes: u64,
    pub dense_params: u64,
    pub dense_bytes: u64,
}

/// KV-cache bytes per token, all decoder layers together. A factored layer caches
/// `min(r, 2·d_kv)` values per token (the latent when it is smaller than K and V).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCacheInfo {
    /// Bytes of one cached value (2: f16).
    pub element_bytes: u64,
    pub bytes_per_token: u64,
    pub dense_bytes_per_token: u64,
}

impl KvCacheInfo {
    /// Cached bytes per token against dense f16 K and V.
    pub fn byte_ratio(&self) -> f64 {
        self.bytes_per_token as f64 / self.dense_bytes_per_token.max(1) as f64
    }
}

/// The calibration run behind the factors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationInfo {
    /// `images`, `text` or `images+text`.
    pub mode: String,
    /// `captions`, `self-distillation` or `text` (`+text` after the images' when both).
    pub targets: String,
    pub samples: usize,
    /// Tokens the loss was taken over.
    pub loss_tokens: usize,
    /// Tokens seen by the text decoder.
    pub tokens: usize,
    pub seed: u64,
    pub image_splitting: bool,
}

impl CalibrationInfo {
    /// No calibration (plain SVD).
    pub fn none() -> Self {
        Self {
            mode: "none".into(),
            targets: "none".into(),
            samples: 0,
            loss_tokens: 0,
            tokens: 0,
            seed: 0,
            image_splitting: false,
        }
    }
}

/// Names of the factor tensors of a joint-QKV attention block (`prefix` ends in `self_attn`).
pub fn qkv_factor_names(prefix: &str) -> [String; 4] {
    ["qkv_down", "q_up", "k_up", "v_up"].map(|n| format!("{prefix}.{n}.weight"))
}

/// Names of the factor tensors of a K/V latent (`prefix` ends in `self_attn`): `kv_down`,
/// `k_up`, `v_up`.
pub fn kv_factor_names(prefix: &str) -> [String; 3] {
    ["kv_down", "k_up", "v_up"].map(|n| format!("{prefix}.{n}.weight"))
}

/// Names of the two factors of a single linear (`name` is the dense layer without `.weight`):
/// `(down, up)`.
pub fn linear_factor_names(name: &str) -> (String, String) {
    (format!("{name}.down.weight"), format!("{name}.up.weight"))
}

/// Dense tensor prefix of text layer `i`.
pub fn text_layer_prefix(i: usize) -> String {
    format!("model.text_model.layers.{i}")
}

/// Dense tensor prefix of vision layer `i`.
pub fn vision_layer_prefix(i: usize) -> String {
    format!("model.vision_model.encoder.layers.{i}")
}

/// MLP linears of a text layer with `(out, in)` shapes.
pub fn text_mlp_linears(cfg: &ModelConfig) -> [(&'static str, usize, usize); 3] {
    let (d, f) = (cfg.text.hidden_size, cfg.text.intermediate_size);
    [("gate_proj", f, d), ("up_proj", f, d), ("down_proj", d, f)]
}

/// MLP linears of a vision layer with `(out, in)` shapes.
pub fn vision_mlp_linears(cfg: &ModelConfig) -> [(&'static str, usize, usize); 2] {
    let (d, f) = (cfg.vision.hidden_size, cfg.vision.intermediate_size);
    [("fc1", f, d), ("fc2", d, f)]
}

impl Compression {
    /// Check the section against the model config (layer counts, rank ranges, MLP names).
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let towers = [
            ("text", &self.text_layers, cfg.text.num_hidden_layers, cfg.text.hidden_size),
            ("vision", &self.vision_layers, cfg.vision.num_hidden_layers, cfg.vision.hidden_size),
        ];
        for (tower, layers, count, d) in towers {
            if tower == "text" && layers.len() != count {
                return Err(FormatError::invalid(
                    "compression.text_layers",
                    format!("{} entries for {count} layers", layers.len()),
                ));
            }
            if tower == "vision" && !layers.is_empty() && layers.len() != count {
                return Err(FormatError::invalid(
                    "compression.vision_layers",
                    format!("{} entries for {count} layers", layers.len()),
                ));
            }
            let mlp: Vec<(&str, usize, usize)> = if tower == "text" {
                text_mlp_linears(cfg).to_vec()
            } else {
                vision_mlp_linears(cfg).to_vec()
            };
            let (dq, dkv) = if tower == "text" {
                (
                    cfg.text.num_attention_heads * cfg.text.head_dim,
                    cfg.text.num_key_value_heads * cfg.text.head_dim,
                )
            } else {
                (d, d)
            };
            for (i, l) in layers.iter().enumerate() {
                let key = format!("compression.{tower}_layers[{i}]");
                if l.layer != i {
                    return Err(FormatError::invalid(
                        key,
                        format!("layer {} listed at position {i}", l.layer),
                    ));
                }
                if let Some(r) = l.qkv
                    && (r == 0 || r > d.min(dq + 2 * dkv))
                {
                    return Err(FormatError::invalid(
                        key,
                        format!("qkv rank {r} outside 1..={}", d.min(dq + 2 * dkv)),
                    ));
                }
                if let Some(r) = l.kv {
                    if tower != "text" || l.qkv.is_some() {
                        return Err(FormatError::invalid(
                            key,
                            "a K/V latent in a text layer without a joint QKV latent".to_string(),
                        ));
                    }
                    if r == 0 || r > d.min(2 * dkv) {
                        return Err(FormatError::invalid(
                            key,
                            format!("kv rank {r} outside 1..={}", d.min(2 * dkv)),
                        ));
                    }
                }
                for (name, r) in &l.mlp {
                    let Some(&(_, out, inp)) = mlp.iter().find(|(n, _, _)| n == name) else {
                        return Err(FormatError::invalid(key, format!("no MLP linear named {name:?}")));
                    };
                    if *r == 0 || *r > out.min(inp) {
                        return Err(FormatError::invalid(
                            key,
                            format!("{name} rank {r} outside 1..={}", out.min(inp)),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
