//! Quantizing a whole model: rotate, then quantize the text decoder's linear layers.
//!
//! **Rotations.** First the residual stream and the low-rank latents are rotated offline
//! ([`crate::rotate::rotate_model`]), which leaves the float model exactly equivalent. Then the
//! two inputs that no offline rotation reaches get an online rotation `R` (a randomized Hadamard
//! transform of the layer's input width, applied by the kernel to each token): the attention
//! output entering `o_proj` (`heads · head_dim` values, across heads) and the SwiGLU product
//! entering `down_proj` (its `down` factor when factored). Since `W x = (W Rᵀ)(R x)`, the
//! weight is stored as `W Rᵀ` and the layer stays exact before quantization.
//!
//! **Layers.** Every linear matrix of the text decoder (dense `q/k/v_proj` or the joint
//! `qkv_down` and `q/k/v_up` factors, `o_proj`, the MLP weights or their factors) gets the
//! scheme's weight and activation widths, and an untied `lm_head` is quantized at W8A8. An
//! input width that does not fill whole packed `u32` words (an `up` factor whose rank is not a
//! multiple of 4 for INT8 or 8 for INT4) is padded with zeros in the packed rows (see
//! [`pocketvlm_format::quant::pack`]); the budgets are unaffected. With a group size, INT4 layers
//! whose input width the group divides get one scale per group, the others one per output
//! channel; the manifest records each layer's choice. The embeddings (a gather, not a linear),
//! the connector and the vision tower stay float in this step.
//!
//! **Scales.** Weight scales come from the MSE clip search ([`crate::quant::weights`]).
//! Activations are quantized per token at run time with clip ratio `ρ = 1` for INT8 and
//! `ρ = 0.9` for INT4 (a fixed choice, not searched here).

use std::collections::{BTreeMap, HashMap};

use pocketvlm_format::compression::{linear_factor_names, qkv_factor_names, text_layer_prefix};
use pocketvlm_format::quant::linear::check_group;
use pocketvlm_format::quant::pack::pack;
use pocketvlm_format::quant::{
    ActivationSpec, Bits, QuantWeights, Quantization, QuantizedLayer, RotationSpec, Scheme, scale_name,
};
use pocketvlm_format::{Compression, Encoding, FormatError, ModelConfig};

use crate::convert::OutTensor;
use crate::error::Result;
use crate::model::weights::{MemoryStore, encode};
use crate::quant::weights::{ClipSearch, quantize_weights};
use crate::rotate::{RotateOptions, rotate_model, rotate_rows};

/// A quantization recipe (`--bits`, `--group-size`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantOptions {
    pub scheme: Scheme,
    /// Input columns per INT4 weight scale (64 or 128); `None`: one scale per output channel.
    pub group: Option<usize>,
    pub search: ClipSearch,
    pub rotate: RotateOptions,
    /// Quantize an untied `lm_head` at W8A8.
    pub lm_head: bool,
}

impl QuantOptions {
    pub fn new(scheme: Scheme) -> Self {
        Self {
            scheme,
            group: None,
            search: ClipSearch::default(),
            rotate: RotateOptions::default(),
            lm_head: true,
        }
    }

    /// The recipe of `--bits` and `--group-size`: an unknown scheme, or a group on INT8 weights
    /// or other than 64 / 128, is a typed error.
    pub fn parse(bits: &str, group: Option<usize>) -> Result<Self> {
        Self::with_group(Scheme::parse(bits)?, group)
    }

    /// The recipe of `scheme` with an optional INT4 weight group (64 or 128, typed error
    /// otherwise).
    pub fn with_group(scheme: Scheme, group: Option<usize>) -> Result<Self> {
        if let Some(g) = group {
            check_group(scheme.weight_bits(), Some(g), g)?;
        }
        Ok(Self { group, ..Self::new(scheme) })
    }

    /// The activation clip ratio of `bits`.
    pub fn clip_ratio(bits: Bits) -> f32 {
        match bits {
            Bits::Int8 => 1.0,
            Bits::Int4 => 0.9,
        }
    }
}

/// The result of [`quantize_model`].
#[derive(Clone, Debug)]
pub struct QuantizedModel {
    pub section: Quantization,
    /// The quantized weights by tensor name.
    pub weights: BTreeMap<String, QuantWeights>,
}

/// One matrix to quantize: its tensor name, widths and online rotations.
struct Plan {
    name: String,
    weight: Bits,
    activation: Bits,
    online: Vec<RotationSpec>,
}

/// Rotate the model in `store` (see the module documentation) and quantize its text decoder.
/// `store` keeps the rotated float tensors (the quantized ones too, as their rotated float
/// values); `cfg` is untied when the rotation had to split `lm_head` off.
pub fn quantize_model(
    cfg: &mut ModelConfig,
    store: &mut MemoryStore,
    compression: Option<&Compression>,
    opts: &QuantOptions,
) -> Result<QuantizedModel> {
    let residual = rotate_model(cfg, store, compression, &opts.rotate)?;
    let (wb, ab) = (opts.scheme.weight_bits(), opts.scheme.activation_bits());
    let plain = |name: String| Plan { name, weight: wb, activation: ab, online: Vec::new() };
    let mut plans = Vec::new();
    // online rotations get seeds apart from the residual (seed) and latent (seed + 1 + k) ones
    let online_seed =
        |layer: usize, k: usize| opts.rotate.seed.wrapping_add(0x4000_0000 + (2 * layer + k) as u32);
    for i in 0..cfg.text.num_hidden_layers {
        let p = text_layer_prefix(i);
        let attn = format!("{p}.self_attn");
        let ranks = compression.and_then(|c| c.text_layers.get(i));
        match ranks.and_then(|l| l.qkv) {
            Some(_) => plans.extend(qkv_factor_names(&attn).map(plain)),
            None => plans.extend(["q_proj", "k_proj", "v_proj"].map(|n| plain(format!("{attn}.{n}.weight")))),
        }
        let dq = cfg.text.num_attention_heads * cfg.text.head_dim;
        let o =
            RotationSpec { construction: opts.rotate.construction, size: dq, seed: Some(online_seed(i, 0)) };
        plans.push(Plan { online: vec![o], ..plain(format!("{attn}.o_proj.weight")) });
        for name in ["gate_proj", "up_proj", "down_proj"] {
            let base = format!("{p}.mlp.{name}");
            let (first, second) = if ranks.is_some_and(|l| l.mlp.contains_key(name)) {
                let (down, up) = linear_factor_names(&base);
                (down, Some(up))
            } else {
                (format!("{base}.weight"), None)
            };
            let online = if name == "down_proj" {
                let size = cfg.text.intermediate_size;
                vec![RotationSpec {
                    construction: opts.rotate.construction,
                    size,
                    seed: Some(online_seed(i, 1)),
                }]
            } else {
                Vec::new()
            };
            plans.push(Plan { online, ..plain(first) });
            plans.extend(second.map(plain));
        }
    }
    if opts.lm_head && !cfg.text.tie_word_embeddings {
        plans.push(Plan {
            name: "lm_head.weight".into(),
            weight: Bits::Int8,
            activation: Bits::Int8,
            online: vec![],
        });
    }

    let mut layers = Vec::new();
    let mut weights = BTreeMap::new();
    for plan in plans {
        let (shape, _) =
            store.get(&plan.name).ok_or_else(|| FormatError::MissingTensor { name: plan.name.clone() })?;
        let (out, cols) = (shape[0], shape[1]);
        for r in &plan.online {
            rotate_rows(store, &plan.name, &r.build()?)?;
        }
        let group = opts.group.filter(|g| plan.weight == Bits::Int4 && cols.is_multiple_of(*g));
        let values = &store[&plan.name].1;
        let q = quantize_weights(values, out, cols, plan.weight, group, opts.search)?;
        let layer = QuantizedLayer {
            weight: plan.name.clone(),
            weight_bits: plan.weight.bits(),
            group,
            activation: ActivationSpec {
                bits: plan.activation.bits(),
                clip_ratio: QuantOptions::clip_ratio(plan.activation),
            },
            online: plan.online,
        };
        layer.validate(cols)?;
        layers.push(layer);
        weights.insert(plan.name, q);
    }
    let section =
        Quantization { scheme: opts.scheme.name().to_string(), residual_rotation: Some(residual), layers };
    Ok(QuantizedModel { section, weights })
}

/// Rotate and quantize a model given as float output tensors (each decoded from its encoding):
/// quantized weights become packed `i8` / `i4` tensors with f32 scale tensors, every other
/// tensor is re-encoded in its own encoding (a split-off `lm_head` in the embeddings'). The
/// tensors come back in the layout order of `cfg` and `compression`.
pub fn quantize_tensors(
    cfg: &mut ModelConfig,
    compression: Option<&Compression>,
    tensors: Vec<OutTensor<'_>>,
    opts: &QuantOptions,
) -> Result<(Vec<OutTensor<'static>>, QuantizedModel)> {
    let mut encodings: HashMap<String, Encoding> = HashMap::new();
    let mut store = MemoryStore::new();
    for t in tensors {
        encodings.insert(t.name.clone(), t.encoding);
        let values = t.encoding.decode_f32(&t.bytes, &t.shape);
        store.insert(t.name, (t.shape, values));
    }
    let quantized = quantize_model(cfg, &mut store, compression, opts)?;
    let embed_encoding = encodings.get("model.text_model.embed_tokens.weight").copied();
    let mut out = Vec::with_capacity(store.len() + quantized.weights.len());
    for (name, shape) in pocketvlm_format::architecture::expected_tensors(cfg, compression) {
        let (_, values) =
            store.remove(&name).ok_or_else(|| FormatError::MissingTensor { name: name.clone() })?;
        let layer = quantized.section.layers.iter().find(|l| l.weight == name);
        match (quantized.weights.get(&name), layer) {
            (Some(q), Some(layer)) => {
                let encoding = if q.bits == Bits::Int4 { Encoding::I4 } else { Encoding::I8 };
                let packed = pack(q.bits, &q.values, q.cols)?;
                let scales: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                let scale_shape = layer.scale_shape(q.out, q.cols);
                out.push(OutTensor { name: name.clone(), shape, encoding, bytes: packed.into() });
                out.push(OutTensor {
                    name: scale_name(&name),
                    shape: scale_shape,
                    encoding: Encoding::F32,
                    bytes: scales.into(),
                });
            }
            _ => {
                let encoding = encodings.get(&name).copied().or(embed_encoding).unwrap_or(Encoding::F32);
                out.push(OutTensor { name, shape, encoding, bytes: encode(encoding, &values)?.into() });
            }
        }
    }
    Ok((out, quantized))
}
