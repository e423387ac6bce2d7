//! Quantizing a whole model: rotate, then quantize every linear layer and the embeddings.
//!
//! **Rotations.** First the residual stream and the low-rank latents are rotated offline
//! ([`crate::rotate::rotate_model`]), which leaves the float model exactly equivalent. Then every
//! input that no offline rotation reaches gets an online rotation `R` (a randomized Hadamard
//! transform of the layer's input width, applied by the kernel to each token): in the decoder
//! the attention output entering `o_proj` (`heads · head_dim` values, across heads) and the
//! SwiGLU product entering `down_proj` (its `down` factor when factored); in the vision tower
//! (LayerNorm does not commute with a rotation, so nothing there is fused) the input of every
//! layer that reads an activation: Q/K/V (or `qkv_down`, one rotation shared by the stacked
//! three), `out_proj`, `fc1`, `fc2` (their `down` factors when factored); and the connector's
//! pixel-shuffled input. Since `W x = (W Rᵀ)(R x)`, the weight is stored as `W Rᵀ` and the
//! layer stays exact before quantization. A width with no Hadamard construction (the 2.2B's
//! vision MLP, 4304 = 16·269) gets a block-diagonal rotation
//! ([`pocketvlm_format::quant::Construction::available_for`]).
//!
//! **Layers.** Every linear matrix of the vision tower, the connector and the text decoder
//! (dense or its factors) gets the scheme's weight and activation widths, with one exception:
//! the decoder's `q_up`, `k_up` and `v_up` read the latent, which is the K/V cache entry, and
//! take INT8 activations in every scheme (see [`pocketvlm_format::quant`], "The latent K/V
//! cache"). `lm_head` is W8A8. The token embeddings are an INT8 table with one scale per row; a
//! tied `lm_head` is the same integers used as a W8A8 layer. Each part can stay float
//! ([`QuantParts`]). An input width that does not fill whole packed `u32` words is padded with
//! zeros in the packed rows (see [`pocketvlm_format::quant::pack`]). With a group size, INT4
//! layers whose input width the group divides get one scale per group, the others one per
//! output channel; the manifest records each layer's choice.
//!
//! **Scales.** Weight scales come from the MSE clip search ([`crate::quant::weights`]); with
//! `--gptq` the decoder's integers are then re-chosen by GPTQ ([`crate::quant::gptq`]).
//! Activations are quantized per token at run time with clip ratio `ρ = 1` for INT8 and
//! `ρ = 0.9` for INT4 by default (`--act-clip`; BENCHMARKS.md has the measured choice).
//!
//! **Baseline.** [`QuantOptions::rtn`]: the same layers with no rotation (offline or online) and
//! plain absmax round-to-nearest scales, to show what the rotations and the clip search buy.

use std::collections::{BTreeMap, HashMap};

use pocketvlm_format::compression::{
    linear_factor_names, qkv_factor_names, text_layer_prefix, vision_layer_prefix, vision_mlp_linears,
};
use pocketvlm_format::quant::linear::check_group;
use pocketvlm_format::quant::pack::pack;
use pocketvlm_format::quant::{
    ActivationQuant, ActivationSpec, Bits, QuantWeights, Quantization, QuantizedLayer, QuantizedTable,
    RotationSpec, Scheme, scale_name,
};
use pocketvlm_format::{Compression, Encoding, FormatError, ModelConfig};

use crate::calib::Sample;
use crate::error::{CompressError, Result};
use crate::model::weights::{MemoryStore, encode};
use crate::quant::gptq::{gptq, input_moments, rotate_moments};
use crate::quant::weights::{ClipSearch, quantize_weights};
use crate::rotate::{RotateOptions, rotate_model, rotate_rows};
use crate::writer::OutTensor;

const EMBED: &str = "model.text_model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";
const CONNECTOR: &str = "model.connector.modality_projection.proj";

/// Which parts of the model are quantized (all by default; `--float` names the others,
/// `--quantize-only` the only ones).
///
/// Parts: `vision`, `connector`, `embeddings`, `lm_head`, and the text decoder by sublayer —
/// `decoder` (all of it), `decoder.N` or `decoder.A-B` (those layers), `decoder.N.attention` /
/// `decoder.A-B.mlp` (one sublayer of those layers: Q/K/V and `o_proj`, or gate/up/down, dense or
/// factored). A float sublayer keeps its rotated float weights and no online rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantParts {
    pub vision: bool,
    pub connector: bool,
    /// The token embeddings as an INT8 table.
    pub embeddings: bool,
    /// `lm_head` at W8A8 (a tied one only together with the embeddings).
    pub lm_head: bool,
    /// Decoder layers whose attention stays float: bit `i` for layer `i`.
    pub float_attention: u128,
    /// Decoder layers whose MLP stays float: bit `i` for layer `i`.
    pub float_mlp: u128,
}

impl Default for QuantParts {
    fn default() -> Self {
        Self {
            vision: true,
            connector: true,
            embeddings: true,
            lm_head: true,
            float_attention: 0,
            float_mlp: 0,
        }
    }
}

/// The most decoder layers a part list can name one by one.
const MAX_NAMED_LAYERS: usize = 128;

impl QuantParts {
    pub const NAMES: [&'static str; 5] =
        ["vision", "connector", "embeddings", "lm_head", "decoder[.N|.A-B][.attention|.mlp]"];

    /// All parts quantized except those in the comma-separated `float` list (typed error on an
    /// unknown part).
    pub fn keeping_float(float: &str) -> Result<Self> {
        let mut p = Self::default();
        for name in float.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            p.set(name, false)?;
        }
        Ok(p)
    }

    /// Only the parts in the comma-separated `only` list quantized, everything else float (what
    /// one part costs on its own).
    pub fn quantizing_only(only: &str) -> Result<Self> {
        let mut p = Self {
            vision: false,
            connector: false,
            embeddings: false,
            lm_head: false,
            float_attention: u128::MAX,
            float_mlp: u128::MAX,
        };
        for name in only.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            p.set(name, true)?;
        }
        Ok(p)
    }

    /// Whether decoder layer `layer`'s attention and MLP are quantized.
    pub fn decoder_layer(&self, layer: usize) -> (bool, bool) {
        let float =
            |mask: u128| if layer < MAX_NAMED_LAYERS { mask >> layer & 1 == 1 } else { mask == u128::MAX };
        (!float(self.float_attention), !float(self.float_mlp))
    }

    fn set(&mut self, name: &str, quantized: bool) -> Result<()> {
        let bad = || CompressError::BadOptions {
            recipe: format!("part {name}"),
            what: format!("one of {} (layers below {MAX_NAMED_LAYERS})", Self::NAMES.join(", ")),
        };
        let flag = match name {
            "vision" => &mut self.vision,
            "connector" => &mut self.connector,
            "embeddings" => &mut self.embeddings,
            "lm_head" => &mut self.lm_head,
            _ => {
                let (layers, sublayers) = decoder_part(name).ok_or_else(bad)?;
                for (mask, named) in
                    [(&mut self.float_attention, sublayers.0), (&mut self.float_mlp, sublayers.1)]
                {
                    if named {
                        *mask = if quantized { *mask & !layers } else { *mask | layers };
                    }
                }
                return Ok(());
            }
        };
        *flag = quantized;
        Ok(())
    }
}

/// `decoder[.N|.A-B][.attention|.mlp]`: the layers' bits and which sublayers (attention, MLP).
fn decoder_part(name: &str) -> Option<(u128, (bool, bool))> {
    let rest = name.strip_prefix("decoder")?;
    let mut fields = rest.split('.').skip(1);
    if rest.is_empty() {
        return Some((u128::MAX, (true, true)));
    }
    if !rest.starts_with('.') {
        return None;
    }
    let range = fields.next()?;
    let (a, b) = range.split_once('-').unwrap_or((range, range));
    let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
    if a > b || b >= MAX_NAMED_LAYERS {
        return None;
    }
    let layers = (a..=b).fold(0u128, |m, i| m | 1 << i);
    let sublayers = match fields.next() {
        None => (true, true),
        Some("attention") => (true, false),
        Some("mlp") => (false, true),
        Some(_) => return None,
    };
    fields.next().is_none().then_some((layers, sublayers))
}

/// A quantization recipe (`--bits`, `--group-size`, `--float`, `--rtn`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantOptions {
    pub scheme: Scheme,
    /// Input columns per INT4 weight scale (64 or 128); `None`: one scale per output channel.
    pub group: Option<usize>,
    pub search: ClipSearch,
    /// Offline and online rotations; `None`: none at all (the RTN baseline).
    pub rotate: Option<RotateOptions>,
    pub parts: QuantParts,
    /// Clip ratio `ρ` of INT4 activations (the scale is `ρ · max|x| / 7`; INT8 uses 1).
    pub int4_clip: f32,
    /// GPTQ error compensation of the decoder's weights with this damping (needs calibration
    /// samples; see [`crate::quant::gptq`]); `None`: the clip search's integers as they are.
    pub gptq: Option<f64>,
}

impl QuantOptions {
    pub fn new(scheme: Scheme) -> Self {
        Self {
            scheme,
            group: None,
            search: ClipSearch::default(),
            rotate: Some(RotateOptions::default()),
            parts: QuantParts::default(),
            int4_clip: 0.9,
            gptq: None,
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

    /// The baseline of this recipe: no rotations, plain absmax round-to-nearest weight scales.
    pub fn rtn(self) -> Self {
        Self { rotate: None, search: ClipSearch::NONE, ..self }
    }

    /// The activation clip ratio of `bits`: 1 for INT8, [`Self::int4_clip`] for INT4.
    pub fn clip_ratio(&self, bits: Bits) -> f32 {
        match bits {
            Bits::Int8 => 1.0,
            Bits::Int4 => self.int4_clip,
        }
    }

    /// Set the INT4 activation clip ratio (`0 < ρ ≤ 1`, typed error otherwise).
    pub fn with_int4_clip(self, rho: f32) -> Result<Self> {
        ActivationQuant::new(Bits::Int4, rho)?;
        Ok(Self { int4_clip: rho, ..self })
    }
}

/// The result of [`quantize_model`].
#[derive(Clone, Debug)]
pub struct QuantizedModel {
    pub section: Quantization,
    /// The quantized weights (and tables) by tensor name.
    pub weights: BTreeMap<String, QuantWeights>,
}

/// One matrix to quantize: its tensor name, widths and online rotations.
struct Plan {
    name: String,
    weight: Bits,
    activation: Bits,
    online: Vec<RotationSpec>,
}

/// The quantization plan of every linear matrix (see the module documentation).
struct Planner<'a> {
    cfg: &'a ModelConfig,
    opts: &'a QuantOptions,
    plans: Vec<Plan>,
}

impl Planner<'_> {
    fn plain(&self, name: String) -> Plan {
        let s = self.opts.scheme;
        Plan { name, weight: s.weight_bits(), activation: s.activation_bits(), online: Vec::new() }
    }

    /// An online rotation of `size` inputs, seeded apart from the residual (`seed`) and latent
    /// (`seed + 1 + k`) rotations by `slot`; none without rotations.
    fn online(&self, size: usize, slot: u32) -> Vec<RotationSpec> {
        self.opts
            .rotate
            .map(|r| RotationSpec {
                construction: r.construction.available_for(size),
                size,
                seed: Some(r.seed.wrapping_add(slot)),
            })
            .into_iter()
            .collect()
    }

    /// A linear `base` (dense, or factored when `factored`) whose input gets `online`.
    fn linear(&mut self, base: &str, factored: bool, online: Vec<RotationSpec>) {
        if factored {
            let (down, up) = linear_factor_names(base);
            let first = Plan { online, ..self.plain(down) };
            let second = self.plain(up);
            self.plans.extend([first, second]);
        } else {
            let p = Plan { online, ..self.plain(format!("{base}.weight")) };
            self.plans.push(p);
        }
    }

    /// The stacked Q/K/V of `attn`: dense (each gets `online`) or the joint factors (the down
    /// factor gets `online`; the up factors take `latent_bits` activations).
    fn qkv(&mut self, attn: &str, factored: bool, online: Vec<RotationSpec>, latent_bits: Bits) {
        if factored {
            let [down, q, k, v] = qkv_factor_names(attn);
            let down = Plan { online, ..self.plain(down) };
            self.plans.push(down);
            for up in [q, k, v] {
                let p = Plan { activation: latent_bits, ..self.plain(up) };
                self.plans.push(p);
            }
        } else {
            for n in ["q_proj", "k_proj", "v_proj"] {
                let p = Plan { online: online.clone(), ..self.plain(format!("{attn}.{n}.weight")) };
                self.plans.push(p);
            }
        }
    }

    fn text(&mut self, compression: Option<&Compression>) {
        let t = &self.cfg.text;
        for i in 0..t.num_hidden_layers {
            let p = text_layer_prefix(i);
            let attn = format!("{p}.self_attn");
            let ranks = compression.and_then(|c| c.text_layers.get(i));
            let slot = 0x4000_0000 + 2 * i as u32;
            let (attention, mlp) = self.opts.parts.decoder_layer(i);
            if attention {
                self.qkv(&attn, ranks.is_some_and(|l| l.qkv.is_some()), Vec::new(), Bits::Int8);
                let o = self.online(t.num_attention_heads * t.head_dim, slot);
                self.linear(&format!("{attn}.o_proj"), false, o);
            }
            if !mlp {
                continue;
            }
            for name in ["gate_proj", "up_proj", "down_proj"] {
                let online =
                    if name == "down_proj" { self.online(t.intermediate_size, slot + 1) } else { Vec::new() };
                let factored = ranks.is_some_and(|l| l.mlp.contains_key(name));
                self.linear(&format!("{p}.mlp.{name}"), factored, online);
            }
        }
    }

    fn vision(&mut self, compression: Option<&Compression>) {
        let v = &self.cfg.vision;
        let d = v.hidden_size;
        let widths: HashMap<&str, usize> =
            vision_mlp_linears(self.cfg).iter().map(|(n, _, i)| (*n, *i)).collect();
        for i in 0..v.num_hidden_layers {
            let p = vision_layer_prefix(i);
            let attn = format!("{p}.self_attn");
            let ranks = compression.and_then(|c| c.vision_layers.get(i));
            let slot = 0x6000_0000 + 4 * i as u32;
            let scheme_bits = self.opts.scheme.activation_bits();
            let qkv_online = self.online(d, slot);
            self.qkv(&attn, ranks.is_some_and(|l| l.qkv.is_some()), qkv_online, scheme_bits);
            let o = self.online(d, slot + 1);
            self.linear(&format!("{attn}.out_proj"), false, o);
            for (k, name) in ["fc1", "fc2"].into_iter().enumerate() {
                let online = self.online(widths[name], slot + 2 + k as u32);
                self.linear(
                    &format!("{p}.mlp.{name}"),
                    ranks.is_some_and(|l| l.mlp.contains_key(name)),
                    online,
                );
            }
        }
    }
}

/// Rotate the model in `store` (see the module documentation; nothing is rotated for the RTN
/// baseline) and quantize it; with [`QuantOptions::gptq`], `samples` give the decoder's input
/// moments. `store` keeps the rotated float tensors (the quantized ones too,
/// as their rotated float values); `cfg` is untied when the rotation had to split `lm_head` off.
pub fn quantize_model(
    cfg: &mut ModelConfig,
    store: &mut MemoryStore,
    compression: Option<&Compression>,
    opts: &QuantOptions,
    samples: Option<&[Sample]>,
) -> Result<QuantizedModel> {
    let residual = match &opts.rotate {
        Some(r) => Some(rotate_model(cfg, store, compression, r)?),
        None => None,
    };
    let moments = match (opts.gptq, samples) {
        (None, _) => HashMap::new(),
        (Some(_), Some(s)) => {
            let r = residual.map(|spec| spec.build()).transpose()?;
            input_moments(cfg, store, compression, s, r.as_ref())?
        }
        (Some(_), None) => {
            return Err(CompressError::BadOptions {
                recipe: "--gptq".into(),
                what: "calibration samples (a low-rank recipe with --calib or --calib-text)".into(),
            });
        }
    };
    check_float_attention(compression, &opts.parts)?;
    let mut planner = Planner { cfg, opts, plans: Vec::new() };
    if opts.parts.vision {
        planner.vision(compression);
    }
    if opts.parts.connector {
        let width = store.get(&format!("{CONNECTOR}.weight")).map_or(0, |(shape, _)| shape[1]);
        let online = planner.online(width, 0x7000_0000);
        planner.linear(CONNECTOR, false, online);
    }
    planner.text(compression);
    let tied = cfg.text.tie_word_embeddings;
    let head = if tied { EMBED } else { LM_HEAD };
    if opts.parts.lm_head && (!tied || opts.parts.embeddings) {
        let p = Plan { weight: Bits::Int8, activation: Bits::Int8, ..planner.plain(head.to_string()) };
        planner.plans.push(p);
    }
    let plans = planner.plans;

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
        let mut q = quantize_weights(values, out, cols, plan.weight, group, opts.search)?;
        if let (Some(damp), Some(h)) = (opts.gptq, moments.get(&plan.name)) {
            let mut h = h.clone();
            for r in &plan.online {
                h = rotate_moments(&h, &r.build()?)?;
            }
            q = gptq(values, &q, &h, damp)?;
        }
        let layer = QuantizedLayer {
            weight: plan.name.clone(),
            weight_bits: plan.weight.bits(),
            group,
            activation: ActivationSpec {
                bits: plan.activation.bits(),
                clip_ratio: opts.clip_ratio(plan.activation),
            },
            online: plan.online,
        };
        layer.validate(cols)?;
        layers.push(layer);
        weights.insert(plan.name, q);
    }
    let mut tables = Vec::new();
    if opts.parts.embeddings {
        if !weights.contains_key(EMBED) {
            let (shape, values) =
                store.get(EMBED).ok_or_else(|| FormatError::MissingTensor { name: EMBED.to_string() })?;
            let q = quantize_weights(values, shape[0], shape[1], Bits::Int8, None, opts.search)?;
            weights.insert(EMBED.to_string(), q);
        }
        tables.push(QuantizedTable { tensor: EMBED.to_string(), bits: Bits::Int8.bits() });
    }
    let section = Quantization {
        scheme: opts.scheme.name().to_string(),
        residual_rotation: residual,
        layers,
        tables,
        gptq_damping: opts.gptq,
    };
    Ok(QuantizedModel { section, weights })
}

/// A layer whose joint-QKV latent is its K/V cache caches it INT8 behind quantized ups, and the
/// KV budget counts every layer so: its attention must be quantized with the rest.
fn check_float_attention(compression: Option<&Compression>, parts: &QuantParts) -> Result<()> {
    let latent = |i: &usize| compression.and_then(|c| c.text_layers.get(*i)).is_some_and(|l| l.qkv.is_some());
    match (0..MAX_NAMED_LAYERS).filter(latent).find(|&i| !parts.decoder_layer(i).0) {
        Some(i) => Err(CompressError::BadOptions {
            recipe: format!("float decoder.{i}.attention"),
            what: "a quantized attention in a layer whose joint-QKV latent is its K/V cache (cached INT8)"
                .into(),
        }),
        None => Ok(()),
    }
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
    samples: Option<&[Sample]>,
) -> Result<(Vec<OutTensor<'static>>, QuantizedModel)> {
    let mut encodings: HashMap<String, Encoding> = HashMap::new();
    let mut store = MemoryStore::new();
    for t in tensors {
        encodings.insert(t.name.clone(), t.encoding);
        let values = t.encoding.decode_f32(&t.bytes, &t.shape);
        store.insert(t.name, (t.shape, values));
    }
    let quantized = quantize_model(cfg, &mut store, compression, opts, samples)?;
    let embed_encoding = encodings.get(EMBED).copied();
    let mut out = Vec::with_capacity(store.len() + quantized.weights.len());
    for (name, shape) in pocketvlm_format::architecture::expected_tensors(cfg, compression) {
        let (_, values) =
            store.remove(&name).ok_or_else(|| FormatError::MissingTensor { name: name.clone() })?;
        let layer = quantized.section.layers.iter().find(|l| l.weight == name);
        match quantized.weights.get(&name) {
            Some(q) => {
                let encoding = if q.bits == Bits::Int4 { Encoding::I4 } else { Encoding::I8 };
                let packed = pack(q.bits, &q.values, q.cols)?;
                let scales: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                // a layer records its grouping; a table has one scale per row
                let scale_shape = layer.map_or(vec![q.out], |l| l.scale_shape(q.out, q.cols));
                out.push(OutTensor { name: name.clone(), shape, encoding, bytes: packed.into() });
                out.push(OutTensor {
                    name: scale_name(&name),
                    shape: scale_shape,
                    encoding: Encoding::F32,
                    bytes: scales.into(),
                });
            }
            None => {
                let encoding = encodings.get(&name).copied().or(embed_encoding).unwrap_or(Encoding::F32);
                out.push(OutTensor { name, shape, encoding, bytes: encode(encoding, &values)?.into() });
            }
        }
    }
    Ok((out, quantized))
}
