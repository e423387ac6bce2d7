//! A CPU model of SmolVLM (f32, candle) with gradients: the calibration forward/backward and the
//! reference forward of compressed models are the same code.
//!
//! Built from a Hugging Face checkpoint or a PocketVLM model directory; a v2 directory's low-rank
//! factors become [`Linear`] layers with a `down` factor, so a compressed model runs through the
//! same layers as the dense one, and a v3 directory's packed integer layers become quantized
//! [`Weight`]s computed by the format crate's reference [`QuantLinear`].

pub mod latent;
pub mod linear;
pub mod reference;
pub mod text;
pub mod vision;
pub mod weights;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, Device, Tensor};
use pocketvlm_format::architecture::{EMBED_TOKENS, LM_HEAD};
use pocketvlm_format::compression::{
    kv_factor_names, linear_factor_names, qkv_factor_names, text_layer_prefix, text_mlp_linears,
    vision_layer_prefix, vision_mlp_linears,
};
use pocketvlm_format::quant::{Bits, QuantLinear, QuantWeights, Quantization, QuantizedTable, scale_name};
use pocketvlm_format::{Compression, FormatError, LayerRanks, ModelConfig, ModelData};

use crate::error::{CompressError, Result};
pub use linear::{Linear, Proj, Tape, Target, Tower, Weight};
pub use text::{CacheKind, KvCache, TextDecoder};
pub use vision::VisionTower;
use weights::{MemoryStore, Overlay, WeightStore};

/// One prompt: token ids with `<image>` placeholders and the tiles whose features fill them.
pub struct Prompt {
    pub ids: Vec<u32>,
    /// Normalised tiles `[n, 3, S, S]`, or `None` for text-only prompts.
    pub pixels: Option<Tensor>,
}

pub struct CpuModel {
    pub cfg: ModelConfig,
    pub vision: VisionTower,
    /// Connector projection (no bias).
    pub connector: Linear,
    pub text: TextDecoder,
}

fn tensor(store: &dyn WeightStore, name: &str) -> Result<Tensor> {
    let (shape, values) = store.load(name)?;
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

fn optional_bias(store: &dyn WeightStore, name: &str, with_bias: bool) -> Result<Option<Tensor>> {
    with_bias.then(|| tensor(store, name)).transpose()
}

/// Quantized layers by weight name (see [`CpuModel::build_quantized`]).
pub type QuantLayers = HashMap<String, QuantLinear>;

/// Where a model's matrices come from: float tensors, and the quantized layers that replace some.
#[derive(Clone, Copy)]
struct Source<'a> {
    store: &'a dyn WeightStore,
    quant: &'a QuantLayers,
}

impl Source<'_> {
    /// The matrices `names` (sharing one input) stacked along the output: all quantized or all
    /// float.
    fn weight(&self, names: &[String]) -> Result<Weight> {
        let quant: Vec<QuantLinear> = names.iter().filter_map(|n| self.quant.get(n).cloned()).collect();
        if quant.len() == names.len() {
            return Ok(Weight::Quant(quant));
        }
        if !quant.is_empty() {
            return Err(CompressError::BadOptions {
                recipe: "quantized model".into(),
                what: format!("the stacked matrices {names:?} all quantized or all float"),
            });
        }
        let parts = names.iter().map(|n| tensor(self.store, n)).collect::<Result<Vec<_>>>()?;
        Ok(Weight::Float(Tensor::cat(&parts, 0)?.t()?.contiguous()?))
    }

    /// The stacked QKV linear of an attention block (`attn` ends in `self_attn`).
    fn qkv_linear(&self, attn: &str, rank: Option<usize>, bias: bool) -> Result<Linear> {
        let bias = if bias {
            let parts = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|p| tensor(self.store, &format!("{attn}.{p}.bias")))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        } else {
            None
        };
        if rank.is_some() {
            let [down, q, k, v] = qkv_factor_names(attn);
            return Ok(Linear { down: Some(self.weight(&[down])?), up: self.weight(&[q, k, v])?, bias });
        }
        let names = ["q_proj", "k_proj", "v_proj"].map(|p| format!("{attn}.{p}.weight"));
        Ok(Linear { down: None, up: self.weight(&names)?, bias })
    }

    /// The K/V latent of a text attention block (`attn` ends in `self_attn`): `kv_down` and the
    /// stacked `[k_up; v_up]` (no biases in the text decoder).
    fn kv_linear(&self, attn: &str) -> Result<Linear> {
        let [down, k, v] = kv_factor_names(attn);
        Ok(Linear { down: Some(self.weight(&[down])?), up: self.weight(&[k, v])?, bias: None })
    }

    /// A single linear `{base}.weight` or its factors `{base}.down/up.weight`.
    fn plain_linear(&self, base: &str, factored: bool, bias: bool) -> Result<Linear> {
        let bias = optional_bias(self.store, &format!("{base}.bias"), bias)?;
        if factored {
            let (down, up) = linear_factor_names(base);
            return Ok(Linear { down: Some(self.weight(&[down])?), up: self.weight(&[up])?, bias });
        }
        Ok(Linear { down: None, up: self.weight(&[format!("{base}.weight")])?, bias })
    }
}

/// The layers a model directory's `quantization` section describes, each built from its packed
/// weight and scale tensors.
fn quant_layers(data: &ModelData, q: &Quantization) -> Result<QuantLayers> {
    let mut layers = QuantLayers::new();
    for l in &q.layers {
        let entry = data.manifest.tensor(&l.weight)?;
        let [out, cols] = entry.shape[..] else {
            return Err(FormatError::BadTensorEntry {
                name: l.weight.clone(),
                reason: format!("a quantized weight is 2-D, shape {:?}", entry.shape),
            }
            .into());
        };
        let bits = Bits::from_bits(l.weight_bits)?;
        let scales = data.tensor_f32(&scale_name(&l.weight))?;
        let weights =
            QuantWeights::from_packed(bits, out, cols, l.group, &data.tensor_bytes(&l.weight)?, scales)?;
        let online = l.online.iter().map(|r| r.build()).collect::<Result<Vec<_>, _>>()?;
        layers.insert(l.weight.clone(), QuantLinear::new(weights, l.activation.build()?, online, None)?);
    }
    Ok(layers)
}

/// The quantized tables of a model directory, every row looked up in the contract's arithmetic
/// ([`QuantizedTable::lookup`]), by tensor name.
fn quant_tables(data: &ModelData, q: &Quantization) -> Result<MemoryStore> {
    let mut tables = MemoryStore::new();
    for t in &q.tables {
        let shape = data.manifest.tensor(&t.tensor)?.shape.clone();
        let [rows, cols] = shape[..] else {
            return Err(FormatError::BadTensorEntry {
                name: t.tensor.clone(),
                reason: format!("a quantized table is 2-D, shape {shape:?}"),
            }
            .into());
        };
        let bits = Bits::from_bits(t.bits)?;
        let scales = data.tensor_f32(&scale_name(&t.tensor))?;
        let w = QuantWeights::from_packed(bits, rows, cols, None, &data.tensor_bytes(&t.tensor)?, scales)?;
        let all: Vec<usize> = (0..rows).collect();
        tables.insert(t.tensor.clone(), (shape, QuantizedTable::lookup(&w.values, &w.scales, cols, &all)));
    }
    Ok(tables)
}

impl CpuModel {
    /// Build from a weight store; `compression` says which layers are stored as factors.
    pub fn build(
        cfg: ModelConfig,
        store: &dyn WeightStore,
        compression: Option<&Compression>,
    ) -> Result<Self> {
        Self::build_quantized(cfg, store, compression, &QuantLayers::new())
    }

    /// [`Self::build`] with the matrices named in `quant` replaced by those quantized layers.
    pub fn build_quantized(
        cfg: ModelConfig,
        store: &dyn WeightStore,
        compression: Option<&Compression>,
        quant: &QuantLayers,
    ) -> Result<Self> {
        let src = Source { store, quant };
        let none = LayerRanks::default();
        let ranks = |layers: Option<&Vec<LayerRanks>>, i: usize| -> LayerRanks {
            layers.and_then(|l| l.get(i)).cloned().unwrap_or_else(|| LayerRanks { layer: i, ..none.clone() })
        };
        let v = &cfg.vision;
        let vp = "model.vision_model";
        let mut vlayers = Vec::new();
        for i in 0..v.num_hidden_layers {
            let r = ranks(compression.map(|c| &c.vision_layers), i);
            let p = vision_layer_prefix(i);
            let ln = |n: &str| -> Result<(Tensor, Tensor)> {
                Ok((tensor(store, &format!("{p}.{n}.weight"))?, tensor(store, &format!("{p}.{n}.bias"))?))
            };
            let mlp = vision_mlp_linears(&cfg)
                .map(|(n, _, _)| src.plain_linear(&format!("{p}.mlp.{n}"), r.mlp.contains_key(n), true));
            let [fc1, fc2] = mlp;
            vlayers.push(vision::VisionLayer {
                ln1: ln("layer_norm1")?,
                qkv: src.qkv_linear(&format!("{p}.self_attn"), r.qkv, true)?,
                out_proj: src.plain_linear(&format!("{p}.self_attn.out_proj"), false, true)?,
                ln2: ln("layer_norm2")?,
                mlp: [fc1?, fc2?],
            });
        }
        let patch = tensor(store, &format!("{vp}.embeddings.patch_embedding.weight"))?;
        let dv = v.hidden_size;
        let vision = VisionTower {
            cfg: v.clone(),
            patch_t: patch.reshape((dv, ()))?.t()?.contiguous()?,
            patch_bias: tensor(store, &format!("{vp}.embeddings.patch_embedding.bias"))?,
            position: tensor(store, &format!("{vp}.embeddings.position_embedding.weight"))?,
            layers: vlayers,
            post_norm: (
                tensor(store, &format!("{vp}.post_layernorm.weight"))?,
                tensor(store, &format!("{vp}.post_layernorm.bias"))?,
            ),
        };
        let connector = src.plain_linear("model.connector.modality_projection.proj", false, false)?;

        let mut layers = Vec::new();
        for i in 0..cfg.text.num_hidden_layers {
            let r = ranks(compression.map(|c| &c.text_layers), i);
            let p = text_layer_prefix(i);
            let mlp = text_mlp_linears(&cfg)
                .map(|(n, _, _)| src.plain_linear(&format!("{p}.mlp.{n}"), r.mlp.contains_key(n), false));
            let [g, u, d] = mlp;
            let attn = format!("{p}.self_attn");
            let (q, qkv) = match r.kv {
                Some(_) => {
                    (Some(src.plain_linear(&format!("{attn}.q_proj"), false, false)?), src.kv_linear(&attn)?)
                }
                None => (None, src.qkv_linear(&attn, r.qkv, false)?),
            };
            layers.push(text::DecoderLayer {
                input_norm: tensor(store, &format!("{p}.input_layernorm.weight"))?,
                q,
                qkv,
                o_proj: src.plain_linear(&format!("{p}.self_attn.o_proj"), false, false)?,
                post_norm: tensor(store, &format!("{p}.post_attention_layernorm.weight"))?,
                mlp: [g?, u?, d?],
            });
        }
        let embed = tensor(store, EMBED_TOKENS)?;
        let lm_head = if cfg.text.tie_word_embeddings && quant.contains_key(EMBED_TOKENS) {
            src.weight(&[EMBED_TOKENS.to_string()])?
        } else if cfg.text.tie_word_embeddings {
            Weight::Float(embed.t()?.contiguous()?)
        } else {
            src.weight(&[LM_HEAD.to_string()])?
        };
        let text = TextDecoder {
            cfg: cfg.text.clone(),
            embed,
            layers,
            norm: tensor(store, "model.text_model.norm.weight")?,
            lm_head,
        };
        Ok(Self { cfg, vision, connector, text })
    }

    /// Load a Hugging Face SmolVLM checkpoint directory.
    pub fn from_hf(dir: &Path) -> Result<Self> {
        Self::from_source(&crate::checkpoint::Source::open(dir)?)
    }

    /// The uncompressed model of a checkpoint already opened.
    pub fn from_source(source: &crate::checkpoint::Source) -> Result<Self> {
        Self::build(source.meta.model.clone(), &source.tensors(), None)
    }

    /// Load a PocketVLM model directory (v1 dense, v2 factored, v3 quantized: its packed layers
    /// run through the format's reference arithmetic).
    pub fn from_format(dir: &Path) -> Result<Self> {
        Self::from_model_data(&pocketvlm_format::dir::open(dir)?)
    }

    /// [`Self::from_format`] for a model already read and verified (shards from any source).
    pub fn from_model_data(data: &ModelData) -> Result<Self> {
        let compression = data.manifest.compression.clone();
        let (quant, tables) = match &data.manifest.quantization {
            Some(q) => (quant_layers(data, q)?, quant_tables(data, q)?),
            None => (QuantLayers::new(), MemoryStore::new()),
        };
        let store = Overlay { base: data, over: tables };
        Self::build_quantized(data.manifest.model.clone(), &store, compression.as_ref(), &quant)
    }

    /// Image features `[n·seq, d_text]` of tiles `[n, 3, S, S]`.
    pub fn image_features(&self, pixels: &Tensor, tape: Option<&mut Tape>) -> Result<Tensor> {
        let n = pixels.dim(0)?;
        let wants_grad = tape.as_ref().is_some_and(|t| t.wants_tower(Tower::Vision));
        let hidden = self.vision.forward(pixels, if wants_grad { tape } else { None })?;
        let shuffled = vision::pixel_shuffle(
            &hidden,
            n,
            self.cfg.vision.patches_per_side(),
            self.cfg.connector.scale_factor,
        )?;
        let target = Target { tower: Tower::Vision, layer: usize::MAX, proj: Proj::Qkv };
        let out = self.connector.forward(&shuffled, target, None)?;
        Ok(if wants_grad { out } else { out.detach() })
    }

    /// Input embeddings `[len, d]` of a prompt: token embeddings with every `<image>` position
    /// replaced, in order, by the rows of `features`.
    pub fn merge_embeddings(&self, ids: &[u32], features: Option<&Tensor>) -> Result<Tensor> {
        let image = self.cfg.image_token_id;
        let count = ids.iter().filter(|&&t| t == image).count();
        let rows = features.map_or(Ok(0), |f| f.dim(0))?;
        if count != rows {
            return Err(CompressError::Calibration(format!(
                "prompt has {count} <image> tokens but the tiles give {rows} features"
            )));
        }
        let text = self.text.embed(ids)?;
        let Some(features) = features else { return Ok(text) };
        let mut k = 0u32;
        let index: Vec<u32> = ids
            .iter()
            .map(|&t| {
                if t == image {
                    k += 1;
                    k - 1
                } else {
                    0
                }
            })
            .collect();
        let keep: Vec<f32> = ids.iter().map(|&t| if t == image { 0.0 } else { 1.0 }).collect();
        let len = ids.len();
        let keep = Tensor::from_vec(keep, (len, 1), &Device::Cpu)?;
        let picked = features.index_select(&Tensor::new(index.as_slice(), &Device::Cpu)?, 0)?;
        Ok((text.broadcast_mul(&keep)? + picked.broadcast_mul(&keep.affine(-1.0, 1.0)?)?)?)
    }

    /// Embeddings of a prompt (vision tower included).
    pub fn embed_prompt(&self, prompt: &Prompt, tape: Option<&mut Tape>) -> Result<Tensor> {
        let features = match &prompt.pixels {
            Some(p) => Some(self.image_features(p, tape)?),
            None => None,
        };
        self.merge_embeddings(&prompt.ids, features.as_ref())
    }

    /// Logits `[len, vocab]` at every position of a prompt (no cache, no tape).
    pub fn logits(&self, prompt: &Prompt) -> Result<Tensor> {
        let embeds = self.embed_prompt(prompt, None)?;
        self.text.logits(&self.text.forward(&embeds, None, None)?)
    }

    /// Mean cross-entropy of `ids[answer_start..]` given the tokens before each (labels are the
    /// inputs shifted by one: position `t−1` predicts token `t`), from decoder inputs `embeds`.
    pub fn answer_loss(
        &self,
        embeds: &Tensor,
        ids: &[u32],
        answer_start: usize,
        tape: Option<&mut Tape>,
    ) -> Result<Tensor> {
        let (_, logits) = self.answer_logits(embeds, ids, answer_start, tape)?;
        cross_entropy(&logits, &ids[answer_start..])
    }

    /// The final hidden rows that predict the answer tokens `ids[answer_start..]` (`lm_head`'s
    /// input) and their logits.
    pub fn answer_logits(
        &self,
        embeds: &Tensor,
        ids: &[u32],
        answer_start: usize,
        tape: Option<&mut Tape>,
    ) -> Result<(Tensor, Tensor)> {
        let len = ids.len();
        if answer_start == 0 || answer_start >= len {
            return Err(CompressError::Calibration(format!(
                "answer must start inside the sequence (start {answer_start}, length {len})"
            )));
        }
        let hidden = self.text.forward(embeds, None, tape)?;
        let rows = hidden.narrow(0, answer_start - 1, len - answer_start)?;
        let logits = self.text.logits(&rows)?;
        Ok((rows, logits))
    }

    /// Greedy decoding after `prompt` with the latent KV cache: at most `max_new` tokens,
    /// stopping after any id in `stop` (which is kept).
    pub fn generate(&self, prompt: &Prompt, max_new: usize, stop: &[u32]) -> Result<Vec<u32>> {
        self.generate_from_embeddings(&self.embed_prompt(prompt, None)?, max_new, stop)
    }

    /// [`Self::generate`] from prompt embeddings.
    pub fn generate_from_embeddings(
        &self,
        embeds: &Tensor,
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        Ok(self.greedy(embeds, max_new, stop)?.ids)
    }

    /// Greedy decoding from prompt embeddings with the latent KV cache (see [`Self::generate`]
    /// and [`CacheKind`]), keeping the logits at the last prompt position and the time of the
    /// prefill and of the decoding.
    pub fn greedy(&self, embeds: &Tensor, max_new: usize, stop: &[u32]) -> Result<Greedy> {
        self.greedy_with_cache(embeds, max_new, stop, CacheKind::Latent)
    }

    /// [`Self::greedy`] with a cache of the given kind.
    pub fn greedy_with_cache(
        &self,
        embeds: &Tensor,
        max_new: usize,
        stop: &[u32],
        kind: CacheKind,
    ) -> Result<Greedy> {
        self.decode(embeds, max_new, stop, kind, None)
    }

    /// Teacher forcing: decode from prompt embeddings taking `ids` as the tokens (whatever the
    /// logits say), so [`Greedy::step_top`] holds the logits each of them was forced at.
    pub fn teacher_forced(&self, embeds: &Tensor, ids: &[u32], kind: CacheKind) -> Result<Greedy> {
        self.decode(embeds, ids.len(), &[], kind, Some(ids))
    }

    /// Decode up to `max_new` tokens, each the logits' argmax or, with `forced`, the given one.
    fn decode(
        &self,
        embeds: &Tensor,
        max_new: usize,
        stop: &[u32],
        kind: CacheKind,
        forced: Option<&[u32]>,
    ) -> Result<Greedy> {
        let start = std::time::Instant::now();
        let mut cache = KvCache::new(kind);
        let hidden = self.text.forward(embeds, Some(&mut cache), None)?;
        let mut last = hidden.narrow(0, hidden.dim(0)? - 1, 1)?;
        let mut ids = Vec::new();
        let mut prompt_logits = Vec::new();
        let mut step_top = Vec::new();
        let mut prefill_ms = 0.0;
        while ids.len() < max_new || prompt_logits.is_empty() {
            let logits = self.text.logits(&last)?.squeeze(0)?;
            if prompt_logits.is_empty() {
                prompt_logits = logits.to_vec1::<f32>()?;
                prefill_ms = start.elapsed().as_secs_f64() * 1e3;
                if max_new == 0 {
                    break;
                }
            }
            let next = match forced {
                Some(path) => path[ids.len()],
                None => logits.argmax(D::Minus1)?.to_scalar::<u32>()?,
            };
            step_top.push(top_logits(&logits.to_vec1::<f32>()?, STEP_TOP));
            ids.push(next);
            if stop.contains(&next) {
                break;
            }
            let e = self.text.embed(&[next])?;
            last = self.text.forward(&e, Some(&mut cache), None)?;
        }
        let decode_ms = start.elapsed().as_secs_f64() * 1e3 - prefill_ms;
        Ok(Greedy { prompt_logits, ids, step_top, prefill_ms, decode_ms })
    }
}

/// What [`CpuModel::greedy`] computed.
pub struct Greedy {
    /// Logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    pub ids: Vec<u32>,
    /// For each id, the [`STEP_TOP`] largest `(id, logit)` it was chosen from, largest first.
    pub step_top: Vec<Vec<(u32, f32)>>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// How many of the largest logits [`Greedy::step_top`] keeps per step.
pub const STEP_TOP: usize = 10;

/// The `k` largest `(index, value)` of `values`, largest first, ties by index.
pub fn top_logits(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i as u32, values[i])).collect()
}

/// Mean over rows of `logsumexp(logits) − logits[target]`.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    let mut onehot = vec![0f32; rows * vocab];
    for (r, &t) in targets.iter().enumerate() {
        onehot[r * vocab + t as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (rows, vocab), &Device::Cpu)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = (shifted * onehot)?.sum_keepdim(D::Minus1)?;
    Ok((lse - picked)?.mean_all()?)
}
