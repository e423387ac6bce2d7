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
//! ([`QuantParts`]), and each decoder sublayer, the embeddings and `lm_head` can take INT4 or
//! INT8 weights whatever the scheme ([`QuantOptions::unit_widths`]; INT8 activations; a table
//! keeps one scale per row; INT4 per output channel or in groups), named or chosen under a byte
//! budget for the whole model ([`crate::quant::widths`]). An input width that does not fill whole packed `u32` words is padded with
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

use faer::Mat;

use pocketvlm_format::architecture::{EMBED_TOKENS, LM_HEAD};
use pocketvlm_format::compression::{
    Latent, LayerRanks, kv_factor_names, linear_factor_names, qkv_factor_names, text_layer_prefix,
    vision_layer_prefix, vision_mlp_linears,
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
use crate::model::weights::{MemoryStore, encode, stored};
use crate::quant::gptq::gptq;
use crate::quant::moments::{CalibrationMoments, OutputMoments, decoder_moments, kfac_cost, rotate_moments};
use crate::quant::weights::{ClipSearch, quantize_weights};
use crate::quant::widths::{Candidate, Sublayer, Unit, Width, WidthAllocation, allocate, front};
use crate::rotate::{RotateOptions, rotate_model, rotate_rows, rotate_values};
use crate::writer::OutTensor;

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
    /// The token embeddings as an integer table (INT8 unless [`QuantOptions::unit_widths`] says).
    pub embeddings: bool,
    /// `lm_head` with INT8 activations and weights (unless [`QuantOptions::unit_widths`] says; a
    /// tied one only together with the embeddings, at their width).
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
    /// Integer weight widths of units (decoder sublayers, embeddings, `lm_head`) that differ from
    /// their defaults (`--widths`, or chosen by [`Self::model_bytes`]): the bits and the INT4
    /// grouping, which for a named unit is its own (`int4` is per channel whatever
    /// [`Self::group`] says); float units are [`QuantParts`]'.
    pub unit_widths: BTreeMap<Unit, Width>,
    /// Choose the width (INT4, INT8 or float; with [`Self::group`] also INT4 in groups) of every
    /// quantized decoder sublayer, of the embeddings and of `lm_head` so that the model's tensors
    /// fit in this many bytes with the least estimated loss ([`crate::quant::widths`]; needs
    /// calibration samples). [`Self::group`] is then an option of those units only: the vision
    /// tower and connector keep one scale per output channel.
    pub model_bytes: Option<u64>,
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
            unit_widths: BTreeMap::new(),
            model_bytes: None,
        }
    }

    /// Set units' widths from a comma-separated list of `PART=WIDTH`, where `PART` is
    /// `embeddings`, `lm_head` or names decoder sublayers as [`QuantParts`] does
    /// (`decoder.3.mlp`, `decoder.0-4.attention`, `decoder.7`) and `WIDTH` is `int4`, `int8` or
    /// `float`; later entries win. Typed errors for an unknown part or width, or a scheme whose
    /// activations are not INT8.
    pub fn with_widths(mut self, spec: &str) -> Result<Self> {
        self.check_width_choice("--widths")?;
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |what: &str| CompressError::BadOptions {
                recipe: format!("--widths {entry}"),
                what: what.into(),
            };
            let (part, width) = entry.split_once('=').ok_or_else(|| bad("PART=WIDTH"))?;
            let width = Width::parse(width.trim())?;
            let units = match part.trim() {
                "embeddings" if matches!(width, Width::Int4 { group: Some(_) }) => {
                    return Err(bad("int4, int8 or float for embeddings (a table has one scale per row)"));
                }
                "embeddings" => vec![Unit::Embeddings],
                "lm_head" => vec![Unit::LmHead],
                decoder => {
                    let (layers, (attention, mlp)) = decoder_part(decoder).ok_or_else(|| {
                        bad(&format!(
                            "embeddings, lm_head or decoder[.N|.A-B][.attention|.mlp] (layers below {MAX_NAMED_LAYERS})"
                        ))
                    })?;
                    let subs = [(Sublayer::Attention, attention), (Sublayer::Mlp, mlp)];
                    (0..MAX_NAMED_LAYERS)
                        .filter(|l| layers >> l & 1 == 1)
                        .flat_map(|l| {
                            subs.into_iter().filter(|s| s.1).map(move |(sub, _)| Unit::Decoder(l, sub))
                        })
                        .collect()
                }
            };
            for unit in units {
                self.set_width(unit, width);
            }
        }
        Ok(self)
    }

    /// Give `unit` `width`.
    fn set_width(&mut self, unit: Unit, width: Width) {
        let float = width == Width::Float;
        match unit {
            Unit::Decoder(layer, sub) => {
                let mask = match sub {
                    Sublayer::Attention => &mut self.parts.float_attention,
                    Sublayer::Mlp => &mut self.parts.float_mlp,
                };
                let bit = 1u128 << layer;
                *mask = if float { *mask | bit } else { *mask & !bit };
            }
            Unit::Embeddings => self.parts.embeddings = !float,
            Unit::LmHead => self.parts.lm_head = !float,
        }
        match width {
            Width::Float => self.unit_widths.remove(&unit),
            integer => self.unit_widths.insert(unit, integer),
        };
    }

    /// The weight width of the embedding table (and of a tied `lm_head`): INT8 unless named.
    fn table_bits(&self) -> Bits {
        self.unit_widths.get(&Unit::Embeddings).and_then(|w| w.integer()).map_or(Bits::Int8, |(bits, _)| bits)
    }

    /// Whether this recipe runs calibration samples through the model (GPTQ's and the width
    /// allocation's moments).
    pub fn needs_samples(&self) -> bool {
        self.gptq.is_some() || self.model_bytes.is_some()
    }

    /// Widths other than the scheme's pair with INT8 activations only.
    pub fn check_width_choice(&self, option: &str) -> Result<()> {
        if self.scheme.activation_bits() != Bits::Int8 {
            return Err(CompressError::BadOptions {
                recipe: format!("{option} with {}", self.scheme.name()),
                what: "a scheme with INT8 activations (w8a8 or w4a8)".into(),
            });
        }
        Ok(())
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
    /// What [`QuantOptions::model_bytes`] chose, when it ran.
    pub allocation: Option<WidthAllocation>,
}

/// One matrix to quantize: its tensor name, widths and online rotations, and the decoder
/// sublayer it belongs to.
struct Plan {
    name: String,
    weight: Bits,
    /// Input columns per INT4 weight scale where they divide the input width; `None`: one scale
    /// per output channel.
    group: Option<usize>,
    activation: Bits,
    online: Vec<RotationSpec>,
    unit: Option<Unit>,
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
        Plan {
            name,
            weight: s.weight_bits(),
            group: self.opts.group,
            activation: s.activation_bits(),
            online: Vec::new(),
            unit: None,
        }
    }

    /// Tag the plans pushed since `from` as `unit`, with its weight width.
    fn tag(&mut self, from: usize, unit: Unit) {
        let width = self.opts.unit_widths.get(&unit).and_then(|w| w.integer());
        for p in &mut self.plans[from..] {
            p.unit = Some(unit);
            if let Some((bits, group)) = width {
                (p.weight, p.group) = (bits, group);
            }
        }
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

    /// The stacked Q/K/V of `attn`: dense (each gets `online`), the joint factors (the down
    /// factor gets `online`; the up factors take `latent_bits` activations), or a dense Q beside
    /// a K/V latent (`q_proj` and `kv_down` get `online`, `k_up` and `v_up` `latent_bits`).
    fn qkv(&mut self, attn: &str, latent: Option<Latent>, online: Vec<RotationSpec>, latent_bits: Bits) {
        // the matrices reading the attention input, and the latent's ups
        let (readers, ups) = match latent {
            None => (["q_proj", "k_proj", "v_proj"].map(|n| format!("{attn}.{n}.weight")).to_vec(), vec![]),
            Some(Latent::Qkv) => {
                let [down, q, k, v] = qkv_factor_names(attn);
                (vec![down], vec![q, k, v])
            }
            Some(Latent::Kv) => {
                let [down, k, v] = kv_factor_names(attn);
                (vec![format!("{attn}.q_proj.weight"), down], vec![k, v])
            }
        };
        for reader in readers {
            let p = Plan { online: online.clone(), ..self.plain(reader) };
            self.plans.push(p);
        }
        for up in ups {
            let p = Plan { activation: latent_bits, ..self.plain(up) };
            self.plans.push(p);
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
                let from = self.plans.len();
                self.qkv(&attn, ranks.and_then(LayerRanks::latent_kind), Vec::new(), Bits::Int8);
                let o = self.online(t.num_attention_heads * t.head_dim, slot);
                self.linear(&format!("{attn}.o_proj"), false, o);
                self.tag(from, Unit::Decoder(i, Sublayer::Attention));
            }
            if !mlp {
                continue;
            }
            let from = self.plans.len();
            for name in ["gate_proj", "up_proj", "down_proj"] {
                let online =
                    if name == "down_proj" { self.online(t.intermediate_size, slot + 1) } else { Vec::new() };
                let factored = ranks.is_some_and(|l| l.mlp.contains_key(name));
                self.linear(&format!("{p}.mlp.{name}"), factored, online);
            }
            self.tag(from, Unit::Decoder(i, Sublayer::Mlp));
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
            self.qkv(&attn, ranks.and_then(LayerRanks::latent_kind), qkv_online, scheme_bits);
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
    float_bytes: &dyn Fn(&str) -> usize,
) -> Result<QuantizedModel> {
    let residual = match &opts.rotate {
        Some(r) => Some(rotate_model(cfg, store, compression, r)?),
        None => None,
    };
    let moments = calibration_moments(cfg, store, compression, opts, samples, residual.as_ref())?;
    check_float_attention(compression, &opts.parts)?;
    check_tied_head(cfg, opts)?;
    let Allocation { opts, integers: Integers { mut linear, table }, chosen } = match opts.model_bytes {
        Some(budget) => choose_widths(cfg, store, compression, opts, &moments, float_bytes, budget)?,
        None => Allocation { opts: opts.clone(), integers: Integers::default(), chosen: None },
    };
    let opts = &opts;
    let mut layers = Vec::new();
    let mut weights = BTreeMap::new();
    for plan in plans(cfg, store, compression, opts) {
        for r in &plan.online {
            rotate_rows(store, &plan.name, &r.build()?)?;
        }
        let (shape, values) = stored(store, &plan.name)?;
        let (q, layer) = match linear.remove(&plan.name) {
            Some(chosen) => chosen,
            None => {
                quantize_matrix(values, shape, &plan, opts, gptq_moments(&plan, opts, &moments)?.as_ref())?
            }
        };
        layers.push(layer);
        weights.insert(plan.name, q);
    }
    let mut tables = Vec::new();
    if opts.parts.embeddings {
        if !weights.contains_key(EMBED_TOKENS) {
            let (shape, values) = stored(store, EMBED_TOKENS)?;
            let q = match table {
                Some(chosen) => chosen,
                None => quantize_table(values, shape, opts.table_bits(), opts)?,
            };
            weights.insert(EMBED_TOKENS.to_string(), q);
        }
        tables.push(QuantizedTable { tensor: EMBED_TOKENS.to_string(), bits: opts.table_bits().bits() });
    }
    let section = Quantization {
        scheme: opts.scheme.name().to_string(),
        residual_rotation: residual,
        layers,
        tables,
        gptq_damping: opts.gptq,
    };
    Ok(QuantizedModel { section, weights, allocation: chosen })
}

/// The embedding table's integers at `bits`: clip-searched, one scale per row.
fn quantize_table(values: &[f32], shape: &[usize], bits: Bits, opts: &QuantOptions) -> Result<QuantWeights> {
    quantize_weights(values, shape[0], shape[1], bits, None, opts.search)
}

/// A tied `lm_head` is the embedding table's integers: it cannot be named another width.
fn check_tied_head(cfg: &ModelConfig, opts: &QuantOptions) -> Result<()> {
    let named = opts.unit_widths.get(&Unit::LmHead);
    if cfg.text.tie_word_embeddings && named.is_some_and(|w| w.integer() != Some((opts.table_bits(), None))) {
        return Err(CompressError::BadOptions {
            recipe: "a width for lm_head".into(),
            what: "the embeddings' width (this lm_head is tied to them: name embeddings)".into(),
        });
    }
    Ok(())
}

/// The calibration moments that GPTQ (`H`) and the width allocation (`H` and `G`) need, from
/// `samples` run through the rotated float model; none when neither runs.
fn calibration_moments(
    cfg: &ModelConfig,
    store: &MemoryStore,
    compression: Option<&Compression>,
    opts: &QuantOptions,
    samples: Option<&[Sample]>,
    residual: Option<&RotationSpec>,
) -> Result<CalibrationMoments> {
    let grads = opts.model_bytes.is_some();
    if !opts.needs_samples() {
        return Ok(CalibrationMoments::default());
    }
    let Some(samples) = samples else {
        let option = if grads { "--model-bytes" } else { "--gptq" };
        return Err(CompressError::BadOptions {
            recipe: option.into(),
            what: "calibration samples (--calib or --calib-text)".into(),
        });
    };
    let r = residual.map(|spec| spec.build()).transpose()?;
    decoder_moments(cfg, store, compression, samples, r.as_ref(), grads)
}

/// The quantization plan of every matrix `opts` quantizes (see the module documentation).
fn plans(
    cfg: &ModelConfig,
    store: &MemoryStore,
    compression: Option<&Compression>,
    opts: &QuantOptions,
) -> Vec<Plan> {
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
    let (head, unit) = if tied { (EMBED_TOKENS, Unit::Embeddings) } else { (LM_HEAD, Unit::LmHead) };
    if opts.parts.lm_head && (!tied || opts.parts.embeddings) {
        let from = planner.plans.len();
        let p = Plan { weight: Bits::Int8, activation: Bits::Int8, ..planner.plain(head.to_string()) };
        planner.plans.push(p);
        planner.tag(from, unit);
    }
    planner.plans
}

/// Quantize `plan`'s matrix, whose `values` already carry its online rotations: clip-searched
/// scales, then GPTQ when given `h`, the moments of its input in the same coordinates
/// ([`gptq_moments`]).
fn quantize_matrix(
    values: &[f32],
    shape: &[usize],
    plan: &Plan,
    opts: &QuantOptions,
    h: Option<&Mat<f64>>,
) -> Result<(QuantWeights, QuantizedLayer)> {
    let (out, cols) = (shape[0], shape[1]);
    let layer = layer_record(plan, shape, opts);
    layer.validate(cols)?;
    let mut q = quantize_weights(values, out, cols, plan.weight, layer.group, opts.search)?;
    if let (Some(damp), Some(h)) = (opts.gptq, h) {
        q = gptq(values, &q, h, damp)?;
    }
    Ok((q, layer))
}

/// The input moments GPTQ compensates `plan`'s matrix with, after its online rotations: a
/// decoder sublayer's, when GPTQ runs; none otherwise.
fn gptq_moments(plan: &Plan, opts: &QuantOptions, moments: &CalibrationMoments) -> Result<Option<Mat<f64>>> {
    let decoder = matches!(plan.unit, Some(Unit::Decoder(..)));
    match (opts.gptq, decoder, moments.layers.get(&plan.name)) {
        (Some(_), true, Some(m)) => rotated_input_moments(&m.h, plan).map(Some),
        _ => Ok(None),
    }
}

/// `H` of the input `plan`'s matrix reads after its online rotations.
fn rotated_input_moments(h: &Mat<f64>, plan: &Plan) -> Result<Mat<f64>> {
    let mut h = h.clone();
    for r in &plan.online {
        h = rotate_moments(&h, &r.build()?)?;
    }
    Ok(h)
}

/// Bytes a quantized matrix of `shape` stores at `bits`: its packed integers and `scales` f32
/// scales.
fn stored_bytes(bits: Bits, scales: usize, shape: &[usize]) -> u64 {
    (packed_encoding(bits).byte_len(shape) + 4 * scales) as u64
}

/// What [`choose_widths`] chose: the options with every unit's width, the integers the winning
/// candidates quantized, and the record of the choice.
struct Allocation {
    opts: QuantOptions,
    integers: Integers,
    chosen: Option<WidthAllocation>,
}

/// Integers a width candidate quantized: each linear matrix's by tensor name, with its layer
/// record, and the untied embedding table's.
#[derive(Default)]
struct Integers {
    linear: HashMap<String, (QuantWeights, QuantizedLayer)>,
    table: Option<QuantWeights>,
}

/// What one width unit quantizes, made ready for every width: values after their online
/// rotations and the moments of their inputs in those coordinates are the same at every width.
enum Member<'a> {
    /// A linear matrix (a decoder sublayer's, `lm_head`, or the tied table read as `lm_head`).
    Linear { plan: &'a Plan, shape: &'a [usize], values: Vec<f32>, h: Mat<f64>, g: Option<&'a OutputMoments> },
    /// The untied embedding table: a lookup with no plan (no activations, one scale per row).
    Table { shape: &'a [usize], values: &'a [f32] },
}

impl<'a> Member<'a> {
    /// `plan`'s matrix from `store` with its online rotations applied, and its moments.
    fn linear(store: &'a MemoryStore, plan: &'a Plan, moments: &'a CalibrationMoments) -> Result<Self> {
        let (shape, values) = stored(store, &plan.name)?;
        let mut values = values.clone();
        for r in &plan.online {
            rotate_values(&mut values, &r.build()?)?;
        }
        let m = moments
            .layers
            .get(&plan.name)
            .ok_or_else(|| CompressError::Calibration(format!("no moments for {}", plan.name)))?;
        Ok(Self::Linear { plan, shape, values, h: rotated_input_moments(&m.h, plan)?, g: m.g.as_ref() })
    }

    fn table(store: &'a MemoryStore) -> Result<Self> {
        let (shape, values) = stored(store, EMBED_TOKENS)?;
        Ok(Self::Table { shape, values })
    }

    /// Whether INT4 weights in groups of `g` would be stored so ([`stored_group`]; an untied
    /// table never is).
    fn groups_by(&self, g: usize) -> bool {
        match self {
            Self::Linear { plan, shape, .. } => {
                stored_group(Bits::Int4, Some(g), &plan.name, shape[1]).is_some()
            }
            Self::Table { .. } => false,
        }
    }

    /// The tensor's name, shape and values as quantized.
    fn tensor(&self) -> (&str, &[usize], &[f32]) {
        match self {
            Self::Linear { plan, shape, values, .. } => (&plan.name, shape, values),
            Self::Table { shape, values } => (EMBED_TOKENS, shape, values),
        }
    }
}

/// `opts` with the width of every unit (quantized decoder sublayer, embeddings, `lm_head`) chosen
/// under `budget` bytes for the whole model (see [`crate::quant::widths`]).
fn choose_widths(
    cfg: &ModelConfig,
    store: &MemoryStore,
    compression: Option<&Compression>,
    opts: &QuantOptions,
    moments: &CalibrationMoments,
    float_bytes: &dyn Fn(&str) -> usize,
    budget: u64,
) -> Result<Allocation> {
    opts.check_width_choice("--model-bytes")?;
    if !opts.unit_widths.is_empty() {
        return Err(CompressError::BadOptions {
            recipe: "--model-bytes".into(),
            what: "no --widths (it chooses them)".into(),
        });
    }
    // the group is an option of the units; every other part keeps one scale per output channel
    let offered = opts.group;
    let opts = &QuantOptions { group: None, ..opts.clone() };
    let plans = plans(cfg, store, compression, opts);
    let mut units: BTreeMap<Unit, Vec<&Plan>> = BTreeMap::new();
    for p in &plans {
        if let Some(u) = p.unit {
            units.entry(u).or_default().push(p);
        }
    }
    if opts.parts.embeddings {
        units.entry(Unit::Embeddings).or_default();
    }
    // everything outside the units: quantized at the scheme's widths, or in its own encoding
    let mut fixed = 0u64;
    for (name, shape) in pocketvlm_format::architecture::expected_tensors(cfg, compression) {
        let plan = plans.iter().find(|p| p.name == name);
        if plan.is_some_and(|p| p.unit.is_some()) || (name == EMBED_TOKENS && opts.parts.embeddings) {
            continue;
        }
        fixed += match plan {
            Some(p) => {
                let scales = layer_record(p, &shape, opts).scale_shape(shape[0], shape[1]);
                stored_bytes(p.weight, scales.iter().product(), &shape)
            }
            None => (float_bytes(&name) * shape.iter().product::<usize>()) as u64,
        };
    }
    let latent = |layer: usize| {
        compression.and_then(|c| c.text_layers.get(layer)).is_some_and(|l| l.latent().is_some())
    };
    let mut candidates = Vec::with_capacity(units.len());
    let mut integers: Vec<Vec<Integers>> = Vec::with_capacity(units.len());
    for (&unit, plans) in &units {
        let members = match plans.as_slice() {
            [] => vec![Member::table(store)?],
            plans => plans.iter().map(|p| Member::linear(store, p, moments)).collect::<Result<_>>()?,
        };
        let (mut options, mut quantized) = (Vec::new(), Vec::new());
        let cached = matches!(unit, Unit::Decoder(layer, Sublayer::Attention) if latent(layer));
        for width in Width::options(offered) {
            let useless = match width {
                Width::Float => cached,
                Width::Int4 { group: Some(g) } => !members.iter().any(|m| m.groups_by(g)),
                _ => false,
            };
            if useless {
                continue;
            }
            let (c, q) = unit_candidate(&members, width, opts, moments, float_bytes)?;
            options.push(c);
            quantized.push(q);
        }
        candidates.push(options);
        integers.push(quantized);
    }
    let chosen = allocate(&candidates, fixed, budget)?;
    let record = WidthAllocation {
        budget,
        fixed,
        front: front(&candidates, fixed)?,
        units: units
            .keys()
            .copied()
            .zip(candidates)
            .zip(chosen.iter().copied())
            .map(|((u, o), k)| (u, o, k))
            .collect(),
    };
    let mut chosen_opts = QuantOptions { model_bytes: None, ..opts.clone() };
    let mut won = Integers::default();
    for ((unit, options, k), mut quantized) in record.units.iter().zip(integers) {
        chosen_opts.set_width(*unit, options[*k].width);
        let Integers { linear, table } = quantized.swap_remove(*k);
        won.linear.extend(linear);
        won.table = won.table.or(table);
    }
    Ok(Allocation { opts: chosen_opts, integers: won, chosen: Some(record) })
}

/// The group the matrix `name` with `cols` inputs stores `bits` weights in, asked for `group`:
/// INT4 only, where the group divides the input width, never the table (a tied `lm_head`'s
/// scales are the table's, one per row); `None`: one scale per output channel.
fn stored_group(bits: Bits, group: Option<usize>, name: &str, cols: usize) -> Option<usize> {
    group.filter(|g| bits == Bits::Int4 && cols.is_multiple_of(*g) && name != EMBED_TOKENS)
}

/// The layer record of `plan`'s matrix: its widths, grouping ([`stored_group`]) and online
/// rotations.
fn layer_record(plan: &Plan, shape: &[usize], opts: &QuantOptions) -> QuantizedLayer {
    QuantizedLayer {
        weight: plan.name.clone(),
        weight_bits: plan.weight.bits(),
        group: stored_group(plan.weight, plan.group, &plan.name, shape[1]),
        activation: ActivationSpec {
            bits: plan.activation.bits(),
            clip_ratio: opts.clip_ratio(plan.activation),
        },
        online: plan.online.clone(),
    }
}

/// One unit at `width`: the bytes its `members` would store and their summed cost (each quantized
/// as the model would be; float costs nothing), and those integers. A linear member costs K-FAC's
/// estimate; the embedding table adds its lookup's cost, on its own or on the integers of the
/// tied `lm_head` it shares.
fn unit_candidate(
    members: &[Member],
    width: Width,
    opts: &QuantOptions,
    moments: &CalibrationMoments,
    float_bytes: &dyn Fn(&str) -> usize,
) -> Result<(Candidate, Integers)> {
    let Some((bits, group)) = width.integer() else {
        let bytes = members.iter().map(|m| m.tensor()).map(|(name, _, v)| float_bytes(name) * v.len());
        return Ok((Candidate { width, bytes: bytes.sum::<usize>() as u64, cost: 0.0 }, Integers::default()));
    };
    let table_cost = |delta: &[f64]| -> Result<f64> {
        let table =
            moments.table.as_ref().ok_or_else(|| CompressError::Calibration("no table moments".into()))?;
        Ok(table.cost(delta))
    };
    let (mut bytes, mut cost, mut integers) = (0u64, 0.0, Integers::default());
    for member in members {
        let (_, shape, values) = member.tensor();
        match member {
            Member::Table { .. } => {
                let q = quantize_table(values, shape, bits, opts)?;
                cost += table_cost(&difference(values, &q))?;
                bytes += stored_bytes(bits, q.scales.len(), shape);
                integers.table = Some(q);
            }
            Member::Linear { plan: base, h, g, .. } => {
                let (name, online) = (base.name.clone(), base.online.clone());
                let plan = Plan { weight: bits, group, name, online, ..**base };
                let decoder = matches!(plan.unit, Some(Unit::Decoder(..)));
                let (q, layer) = quantize_matrix(values, shape, &plan, opts, decoder.then_some(h))?;
                let delta = difference(values, &q);
                cost += kfac_cost(&delta, shape[0], shape[1], h, *g);
                if plan.name == EMBED_TOKENS {
                    cost += table_cost(&delta)?;
                }
                bytes += stored_bytes(bits, q.scales.len(), shape);
                integers.linear.insert(plan.name, (q, layer));
            }
        }
    }
    Ok((Candidate { width, bytes, cost }, integers))
}

/// `W − Ŵ` for the integers `q` of `values`.
fn difference(values: &[f32], q: &QuantWeights) -> Vec<f64> {
    values.iter().zip(q.dequantize()).map(|(w, d)| *w as f64 - d).collect()
}

/// The packed encoding of `bits`.
fn packed_encoding(bits: Bits) -> Encoding {
    if bits == Bits::Int4 { Encoding::I4 } else { Encoding::I8 }
}

/// A layer whose joint-QKV latent is its K/V cache caches it INT8 behind quantized ups, and the
/// KV budget counts every layer so: its attention must be quantized with the rest.
fn check_float_attention(compression: Option<&Compression>, parts: &QuantParts) -> Result<()> {
    let layers = compression.map_or(&[][..], |c| c.text_layers.as_slice());
    match layers.iter().enumerate().find(|(i, l)| l.latent().is_some() && !parts.decoder_layer(*i).0) {
        Some((i, _)) => Err(CompressError::BadOptions {
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
    let embed_encoding = encodings.get(EMBED_TOKENS).copied();
    let encoding_of = |name: &str| encodings.get(name).copied().or(embed_encoding).unwrap_or(Encoding::F32);
    let float_bytes = |name: &str| encoding_of(name).byte_len(&[1]);
    let quantized = quantize_model(cfg, &mut store, compression, opts, samples, &float_bytes)?;
    let mut out = Vec::with_capacity(store.len() + quantized.weights.len());
    for (name, shape) in pocketvlm_format::architecture::expected_tensors(cfg, compression) {
        let (_, values) =
            store.remove(&name).ok_or_else(|| FormatError::MissingTensor { name: name.clone() })?;
        let layer = quantized.section.layers.iter().find(|l| l.weight == name);
        match quantized.weights.get(&name) {
            Some(q) => {
                let encoding = packed_encoding(q.bits);
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
                let encoding = encoding_of(&name);
                out.push(OutTensor { name, shape, encoding, bytes: encode(encoding, &values)?.into() });
            }
        }
    }
    Ok((out, quantized))
}
