//! The budget arithmetic of a compressed model, in one place: what a budget ratio allows (latent
//! components of the text and vision QKV factors, parameters of a pool) and what a compression
//! achieved (parameter ratios, the K/V cache per token, bytes per component).
//!
//! Per text decoder layer, with `d` the hidden size, `d_q = heads · head_dim` and
//! `d_kv = kv_heads · head_dim`: dense Q, K and V hold `d · (d_q + 2·d_kv)` parameters and cache
//! `2·d_kv` values per token; a joint-QKV factor of rank `r` holds `r · (d + d_q + 2·d_kv)`
//! parameters (one down row, one column of each up) and caches its latent: `min(r, 2·d_kv)` f16
//! values when float, `r` INT8 values and one f32 scale (`r + 4` bytes) when quantized
//! ([`pocketvlm_format::quant`]). A K/V latent of rank `r` holds `d·d_q + r · (d + 2·d_kv)` (Q
//! dense) and caches the same. A vision layer's QKV (`3·d_v²` parameters) factored at rank `r`
//! holds `r · 4·d_v`.

use pocketvlm_format::components::Component;
use pocketvlm_format::compression::text_mlp_linears;
use pocketvlm_format::{ComponentBytes, Compression, KvCacheInfo, LayerRanks, ModelConfig, Ratios};

use crate::error::{CompressError, Result};
use crate::writer::OutTensor;

/// Requested budgets, as ratios of the dense model (each in `(0, 1]`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budgets {
    /// Text-decoder QKV factor parameters / dense QKV parameters.
    pub qkv_params: Option<f64>,
    /// KV-cache values per token / dense K+V values per token (text decoder); for a quantized
    /// recipe, cached bytes per token (INT8 latent and its scale) / dense f16 K+V bytes.
    pub kv_cache: Option<f64>,
    /// Text-decoder MLP parameters / dense MLP parameters.
    pub ffn_params: Option<f64>,
    /// Vision-tower QKV factor parameters / dense (biases stay exact and are not counted).
    pub vision_qkv_params: Option<f64>,
}

impl Budgets {
    /// Whether the text decoder gets a latent: a QKV-parameter or a K/V budget is set.
    pub fn text_latent(&self) -> bool {
        self.qkv_params.is_some() || self.kv_cache.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        let all = [
            ("qkv-params", self.qkv_params),
            ("kv-cache", self.kv_cache),
            ("ffn-params", self.ffn_params),
            ("vision-qkv-params", self.vision_qkv_params),
        ];
        for (name, value) in all {
            if let Some(v) = value
                && !(v > 0.0 && v <= 1.0)
            {
                return Err(CompressError::BudgetOutOfRange { name, value: v, range: "0 < ratio <= 1" });
            }
        }
        if all.iter().all(|(_, v)| v.is_none()) {
            return Err(CompressError::BadOptions {
                recipe: "low-rank".into(),
                what: "at least one budget (--qkv-params, --kv-cache, --ffn-params or --vision-qkv-params)"
                    .into(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for Budgets {
    /// The budgets set, as the command line names them: `--qkv-params 1 --ffn-params 0.8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all = [
            ("qkv-params", self.qkv_params),
            ("kv-cache", self.kv_cache),
            ("ffn-params", self.ffn_params),
            ("vision-qkv-params", self.vision_qkv_params),
        ];
        let set: Vec<String> = all.iter().filter_map(|(n, v)| v.map(|v| format!("--{n} {v}"))).collect();
        write!(f, "{}", set.join(" "))
    }
}

/// `⌊ratio · total⌋`: what a budget ratio allows of a dense total.
pub fn share(ratio: f64, total: u64) -> u64 {
    (ratio * total as f64).floor() as u64
}

/// The text decoder's latent components (summed over layers) that the QKV-parameter and K/V
/// budgets allow, the smaller of the two; `None` when neither is set. With `kv_only` the latent
/// is K and V's alone and the QKV parameters include the dense Q. The K/V budget counts latent
/// values against dense K and V values when float, and bytes as cached (a value per component
/// plus a 4-byte scale per layer) against dense f16 K and V when quantized.
pub fn text_qkv_components(cfg: &ModelConfig, b: &Budgets, quantized: bool, kv_only: bool) -> Option<u64> {
    if !b.text_latent() {
        return None;
    }
    let t = &cfg.text;
    let (d, dq, dkv) =
        (t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim);
    let layers = t.num_hidden_layers as u64;
    let (per_component, fixed) = match kv_only {
        false => ((d + dq + 2 * dkv) as u64, 0),
        true => ((d + 2 * dkv) as u64, layers * (d * dq) as u64),
    };
    let mut components = u64::MAX;
    if let Some(r) = b.qkv_params {
        let allowed = share(r, layers * (d * (dq + 2 * dkv)) as u64).saturating_sub(fixed);
        components = components.min(allowed / per_component);
    }
    if let Some(r) = b.kv_cache {
        let limit = if quantized {
            share(r, layers * 2 * dkv as u64 * 2).saturating_sub(4 * layers)
        } else {
            share(r, layers * 2 * dkv as u64)
        };
        components = components.min(limit);
    }
    Some(components)
}

/// The vision tower's latent components (summed over layers) its QKV-parameter budget allows.
pub fn vision_qkv_components(cfg: &ModelConfig, ratio: f64) -> u64 {
    let v = &cfg.vision;
    let dv = v.hidden_size as u64;
    share(ratio, v.num_hidden_layers as u64 * 3 * dv * dv) / (4 * dv)
}

/// The K/V cache per token of a compressed model, all decoder layers together. Float: a layer
/// with a latent (joint QKV or K/V) caches `min(r, 2·d_kv)` f16 values (the latent when it is
/// smaller than K and V), a dense one K and V. Quantized: a latent layer caches its INT8 latent
/// and the latent's f32 scale (`r + 4` bytes, see [`pocketvlm_format::quant`]); dense layers K
/// and V in f16.
fn kv_cache_info(cfg: &ModelConfig, c: &Compression, quantized: bool) -> KvCacheInfo {
    let t = &cfg.text;
    let dkv = t.num_key_value_heads * t.head_dim;
    let per_layer = |l: &LayerRanks| -> u64 {
        match (l.latent(), quantized) {
            (Some(r), true) => r as u64 + 4,
            (Some(r), false) => r.min(2 * dkv) as u64 * 2,
            (None, _) => 2 * dkv as u64 * 2,
        }
    };
    KvCacheInfo {
        element_bytes: if quantized { 1 } else { 2 },
        bytes_per_token: c.text_layers.iter().map(per_layer).sum(),
        dense_bytes_per_token: t.num_hidden_layers as u64 * 2 * dkv as u64 * 2,
    }
}

/// Record the cache size of `c` in it; a quantized model's achieved KV ratio is then the one in
/// bytes (its budget was in bytes too).
pub fn record_kv_cache(cfg: &ModelConfig, c: &mut Compression, quantized: bool) {
    c.kv_cache = kv_cache_info(cfg, c, quantized);
    if quantized {
        c.achieved.kv_cache = Some(c.kv_cache.byte_ratio());
    }
}

/// Set each component's parameters and bytes to those of the tensors written (`out`).
pub fn count_sizes(sizes: &mut [ComponentBytes], out: &[OutTensor<'_>]) {
    for size in sizes.iter_mut() {
        let of = |t: &&OutTensor<'_>| Component::of(&t.name).name() == size.component;
        size.params = out.iter().filter(of).map(|t| t.shape.iter().product::<usize>() as u64).sum();
        size.bytes = out.iter().filter(of).map(|t| t.bytes.len() as u64).sum();
    }
}

/// Achieved ratios of a compression section (1.0 where a part is untouched).
pub fn achieved(cfg: &ModelConfig, c: &Compression) -> Ratios {
    let t = &cfg.text;
    let (d, dq, dkv) =
        (t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim);
    let layers = c.text_layers.len().max(1) as f64;
    let qkv_dense = (d * (dq + 2 * dkv)) as f64;
    let qkv: f64 = c
        .text_layers
        .iter()
        .map(|l| match (l.qkv, l.kv) {
            (Some(r), _) => (r * (d + dq + 2 * dkv)) as f64,
            (None, Some(r)) => (d * dq + r * (d + 2 * dkv)) as f64,
            (None, None) => qkv_dense,
        })
        .sum::<f64>();
    let kv: f64 =
        c.text_layers.iter().map(|l| l.latent().map_or(2 * dkv, |r| r.min(2 * dkv)) as f64).sum::<f64>();
    let mlp = text_mlp_linears(cfg);
    let ffn_dense: f64 = mlp.iter().map(|(_, o, i)| (o * i) as f64).sum::<f64>() * layers;
    let ffn: f64 = c
        .text_layers
        .iter()
        .flat_map(|l| {
            mlp.iter().map(move |(n, o, i)| l.mlp.get(*n).map_or((o * i) as f64, |r| (r * (o + i)) as f64))
        })
        .sum();
    Ratios {
        qkv_params: Some(qkv / (qkv_dense * layers)),
        kv_cache: Some(kv / (2 * dkv) as f64 / layers),
        ffn_params: Some(ffn / ffn_dense),
    }
}
