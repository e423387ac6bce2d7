//! The Llama (SmolLM2) text decoder: RMSNorm, grouped-query attention with RoPE, SwiGLU MLP.
//!
//! Mirrors transformers' `LlamaModel` with eager attention, in f32, batch size 1.

use std::cell::OnceCell;

use candle_core::{D, Device, Tensor};
use pocketvlm_format::TextConfig;

use crate::error::{CompressError, Result};
use crate::model::latent::{self, Heads, LatentUp, Latents};
use crate::model::linear::{Linear, Proj, Tape, Target, Tower, Weight};

pub struct DecoderLayer {
    pub input_norm: Tensor,
    /// `q_proj` when Q is apart from a K/V latent; `None` when `qkv` computes Q too.
    pub q: Option<Linear>,
    /// `[q; k; v]` stacked along the output — or `[k; v]` (a K/V latent) when `q` is apart.
    pub qkv: Linear,
    pub o_proj: Linear,
    pub post_norm: Tensor,
    /// `gate_proj`, `up_proj`, `down_proj`.
    pub mlp: [Linear; 3],
}

pub struct TextDecoder {
    pub cfg: TextConfig,
    /// `[vocab, d]`.
    pub embed: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    /// `lm_head` (`[vocab, d]`; the embeddings when tied).
    pub lm_head: Weight,
}

/// Which K/V cache a decoder keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheKind {
    /// Post-RoPE keys and values of every layer.
    Plain,
    /// The shared latent of every joint-QKV layer with rank `r < 2·d_kv` (see
    /// [`crate::model::latent`]), keys and values of the other layers. The product's path.
    #[default]
    Latent,
}

/// One layer's cached positions.
enum LayerCache {
    /// Keys and values after RoPE, `[kv_heads, len, head_dim]` each.
    Plain(Tensor, Tensor),
    /// The joint-QKV latent of each position.
    Latent(Latents),
}

/// The positions seen so far, per layer: keys and values, or the latent (see [`CacheKind`]).
/// [`Default`] is a latent cache.
#[derive(Default)]
pub struct KvCache {
    kind: CacheKind,
    layers: Vec<Option<LayerCache>>,
    len: usize,
}

impl KvCache {
    pub fn new(kind: CacheKind) -> Self {
        Self { kind, layers: Vec::new(), len: 0 }
    }

    /// Keys and values of every layer.
    pub fn plain() -> Self {
        Self::new(CacheKind::Plain)
    }

    /// The latent of every eligible layer.
    pub fn latent() -> Self {
        Self::new(CacheKind::Latent)
    }

    pub fn kind(&self) -> CacheKind {
        self.kind
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers that cache their latent (known after the first forward).
    pub fn latent_layers(&self) -> usize {
        self.layers.iter().filter(|l| matches!(l, Some(LayerCache::Latent(_)))).count()
    }

    /// Forget every position from `len` on (none when `len ≥ self.len()`), so decoding
    /// continues from position `len`. A forward that failed may have appended to some layers
    /// only: `truncate(self.len())` drops that.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        let len = len.min(self.len);
        if len == 0 {
            self.layers.clear();
        }
        for layer in self.layers.iter_mut().flatten() {
            match layer {
                LayerCache::Plain(k, v) => {
                    *k = k.narrow(1, 0, len)?;
                    *v = v.narrow(1, 0, len)?;
                }
                LayerCache::Latent(latents) => latents.truncate(len),
            }
        }
        self.len = len;
        Ok(())
    }
}

/// A typed refusal of a cache whose entry for layer `layer` is of the other kind (a cache
/// filled by another model).
fn cache_mismatch(layer: usize) -> CompressError {
    CompressError::BadOptions {
        recipe: "a forward with a K/V cache".into(),
        what: format!("a cache filled by the same model (layer {layer} holds the other kind)"),
    }
}

/// `x · rsqrt(mean(x²) + eps) · w` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?.broadcast_mul(w)?)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// RoPE tables `(cos, sin)`, `[len, head_dim]`, for positions `start..start+len`
/// (transformers' default rotation: `inv_freq = θ^(−2i/d)`, halves concatenated).
fn rope_tables(cfg: &TextConfig, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim;
    let inv: Vec<f32> =
        (0..hd / 2).map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32)).collect();
    let mut cos = Vec::with_capacity(len * hd);
    let mut sin = Vec::with_capacity(len * hd);
    for p in start..start + len {
        for _ in 0..2 {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let dev = Device::Cpu;
    Ok((Tensor::from_vec(cos, (len, hd), &dev)?, Tensor::from_vec(sin, (len, hd), &dev)?))
}

/// Rotate `x` (`[heads, len, head_dim]`): `x·cos + rotate_half(x)·sin`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// `[len, heads·hd]` → `[heads, len, hd]`.
fn split_heads(x: &Tensor, heads: usize, hd: usize) -> Result<Tensor> {
    let len = x.dim(0)?;
    Ok(x.reshape((len, heads, hd))?.transpose(0, 1)?.contiguous()?)
}

/// Repeat each of `kv_heads` heads `groups` times: `[kv, len, hd]` → `[kv·groups, len, hd]`.
fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (kv, len, hd) = x.dims3()?;
    Ok(x.unsqueeze(1)?.broadcast_as((kv, groups, len, hd))?.reshape((kv * groups, len, hd))?)
}

/// Additive causal mask `[len, offset+len]`: query `i` sees keys `0..=offset+i`.
fn causal_mask(len: usize, offset: usize) -> Result<Tensor> {
    let total = offset + len;
    let m: Vec<f32> = (0..len)
        .flat_map(|i| (0..total).map(move |j| if j <= offset + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(m, (len, total), &Device::Cpu)?)
}

/// What every layer's attention shares in one forward call over `len` new tokens at positions
/// `offset..offset+len`.
struct Step {
    heads: Heads,
    len: usize,
    offset: usize,
    /// RoPE tables of the new positions.
    cos: Tensor,
    sin: Tensor,
    /// The causal mask (`None` for one token, which sees every key).
    mask: Option<Tensor>,
    /// `1/√head_dim`.
    scale: f64,
    /// RoPE tables of every position `0..offset+len` (for keys rebuilt from latents), made once.
    key_rope: OnceCell<(Tensor, Tensor)>,
}

impl Step {
    /// Softmax weights `[heads, len, keys]` of queries `q` (`[heads, len, hd]`) against keys `k`
    /// (`[kv_heads, keys, hd]`): `softmax(q·kᵀ/√hd + mask)`.
    fn weights(&self, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        let k = repeat_kv(k, self.heads.group_size())?;
        let mut scores = (q.matmul(&k.t()?)? * self.scale)?;
        if let Some(m) = &self.mask {
            scores = scores.broadcast_add(m)?;
        }
        softmax(&scores)
    }

    /// RoPE tables `(cos, sin)` of positions `0..offset+len`.
    fn key_rope(&self, cfg: &TextConfig) -> Result<&(Tensor, Tensor)> {
        if self.key_rope.get().is_none() {
            let _ = self.key_rope.set(rope_tables(cfg, 0, self.offset + self.len)?);
        }
        Ok(self.key_rope.get().expect("set above"))
    }

    /// `[heads, len, hd]` → `[len, d_q]`.
    fn merge_heads(&self, o: &Tensor) -> Result<Tensor> {
        Ok(o.transpose(0, 1)?.reshape((self.len, self.heads.d_q()))?)
    }
}

/// `bias[range]` of a stacked QKV bias (`[d_q + 2·d_kv]`), if any.
fn bias_part(bias: Option<&Tensor>, range: std::ops::Range<usize>) -> Result<Option<Tensor>> {
    Ok(bias.map(|b| b.narrow(0, range.start, range.len())).transpose()?)
}

/// `x + bias` (broadcast over rows) when there is a bias.
fn add_bias(x: Tensor, bias: Option<Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => x.broadcast_add(&b)?,
        None => x,
    })
}

/// `[len, heads·hd]` → `[heads, len, hd]`, through RoPE.
fn rope_heads(x: &Tensor, heads: usize, hd: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    apply_rope(&split_heads(x, heads, hd)?, cos, sin)
}

impl TextDecoder {
    /// Run the decoder over `embeds` (`[len, d]`, positions continuing after `cache`), returning
    /// the final-norm hidden states `[len, d]`. With a cache, this step's keys and values (or
    /// latents, see [`CacheKind`]) are appended to it.
    pub fn forward(
        &self,
        embeds: &Tensor,
        mut cache: Option<&mut KvCache>,
        mut tape: Option<&mut Tape>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (len, _) = embeds.dims2()?;
        let offset = cache.as_ref().map_or(0, |k| k.len);
        let (cos, sin) = rope_tables(c, offset, len)?;
        let mask = if len > 1 { Some(causal_mask(len, offset)?) } else { None };
        let heads =
            Heads { heads: c.num_attention_heads, kv_heads: c.num_key_value_heads, head_dim: c.head_dim };
        let scale = 1.0 / (heads.head_dim as f64).sqrt();
        let step = Step { heads, len, offset, cos, sin, mask, scale, key_rope: OnceCell::new() };
        if let Some(k) = cache.as_deref_mut()
            && k.layers.is_empty()
        {
            k.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let mut x = embeds.clone();
        for (i, l) in self.layers.iter().enumerate() {
            let t = |proj| Target { tower: Tower::Text, layer: i, proj };
            let h = rms_norm(&x, &l.input_norm, c.rms_norm_eps)?;
            let latent = match cache.as_deref() {
                Some(k) if k.kind == CacheKind::Latent => LatentUp::of(&l.qkv, l.q.is_none(), heads, i)?,
                _ => None,
            };
            let entry = cache.as_deref_mut().map(|k| &mut k.layers[i]);
            let o = match (latent, entry) {
                (Some(up), Some(entry)) => {
                    if tape.as_ref().is_some_and(|tp| tp.wants(t(Proj::Qkv)) || tp.wants(t(Proj::Kv))) {
                        return Err(CompressError::BadOptions {
                            recipe: "a forward with a latent K/V cache".into(),
                            what: "no tape on the attention inputs (use a plain cache or none)".into(),
                        });
                    }
                    self.latent_attention(l, i, &up, &h, &step, entry)?
                }
                (_, entry) => self.plain_attention(l, i, &h, &step, entry, tape.as_deref_mut())?,
            };
            x = (x + l.o_proj.forward(&o, t(Proj::Out), tape.as_deref_mut())?)?;
            let h = rms_norm(&x, &l.post_norm, c.rms_norm_eps)?;
            let g = l.mlp[0].forward(&h, t(Proj::Mlp(0)), tape.as_deref_mut())?;
            let u = l.mlp[1].forward(&h, t(Proj::Mlp(1)), tape.as_deref_mut())?;
            let a = (g.silu()? * u)?;
            x = (x + l.mlp[2].forward(&a, t(Proj::Mlp(2)), tape.as_deref_mut())?)?;
        }
        if let Some(cache) = cache {
            cache.len += len;
        }
        rms_norm(&x, &self.norm, c.rms_norm_eps)
    }

    /// Attention of layer `i` (`l`) over its input `h` with plain keys and values: Q, K, V of
    /// the new tokens, the cached K and V before them (appended to), the attention output
    /// `[len, d_q]`.
    fn plain_attention(
        &self,
        l: &DecoderLayer,
        i: usize,
        h: &Tensor,
        step: &Step,
        entry: Option<&mut Option<LayerCache>>,
        tape: Option<&mut Tape>,
    ) -> Result<Tensor> {
        let (hd, heads, kv_heads) = (step.heads.head_dim, step.heads.heads, step.heads.kv_heads);
        let (dq, dkv) = (step.heads.d_q(), step.heads.d_kv());
        let qkv = stacked_qkv(l, i, h, dq, tape)?;
        let q = rope_heads(&qkv.narrow(1, 0, dq)?, heads, hd, &step.cos, &step.sin)?;
        let mut k = rope_heads(&qkv.narrow(1, dq, dkv)?, kv_heads, hd, &step.cos, &step.sin)?;
        let mut v = split_heads(&qkv.narrow(1, dq + dkv, dkv)?, kv_heads, hd)?;
        if let Some(entry) = entry {
            match entry {
                Some(LayerCache::Plain(pk, pv)) => {
                    k = Tensor::cat(&[&*pk, &k], 1)?;
                    v = Tensor::cat(&[&*pv, &v], 1)?;
                }
                Some(LayerCache::Latent(_)) => return Err(cache_mismatch(i)),
                None => {}
            }
            *entry = Some(LayerCache::Plain(k.detach(), v.detach()));
        }
        let v = repeat_kv(&v, step.heads.group_size())?;
        step.merge_heads(&step.weights(&q, &k)?.matmul(&v)?)
    }

    /// Attention of a layer that caches its latent (see [`crate::model::latent`] for the
    /// steps): the new tokens' latents appended to the cache, queries from them, keys of every
    /// cached position rebuilt from theirs, and the values absorbed into the mixed latents.
    fn latent_attention(
        &self,
        l: &DecoderLayer,
        i: usize,
        up: &LatentUp<'_>,
        h: &Tensor,
        step: &Step,
        entry: &mut Option<LayerCache>,
    ) -> Result<Tensor> {
        let heads = step.heads;
        let (hd, dq, dkv) = (heads.head_dim, heads.d_q(), heads.d_kv());
        let bias = l.qkv.bias.as_ref();
        let latents = match entry.get_or_insert_with(|| LayerCache::Latent(up.empty())) {
            LayerCache::Latent(latents) => latents,
            LayerCache::Plain(..) => return Err(cache_mismatch(i)),
        };
        let c = match &l.qkv.down {
            Some(down) => down.apply(h)?,
            None => h.clone(),
        };
        let c = c.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        // the rows of the stacked bias: Q's first when the latent computes Q too
        let k0 = if l.q.is_none() { dq } else { 0 };
        let q = match (up.append(&c, latents)?, &l.q) {
            (Some(q), _) => add_bias(q, bias_part(bias, 0..dq)?)?,
            (None, Some(q_proj)) => {
                q_proj.forward(h, Target { tower: Tower::Text, layer: i, proj: Proj::Qkv }, None)?
            }
            (None, None) => {
                return Err(latent::unsupported(i, "queries: q_up in the latent or q_proj".into()));
            }
        };
        let q = rope_heads(&q, heads.heads, hd, &step.cos, &step.sin)?;
        let k = add_bias(up.keys(latents)?, bias_part(bias, k0..k0 + dkv)?)?;
        let (cos, sin) = step.key_rope(&self.cfg)?;
        let k = rope_heads(&k, heads.kv_heads, hd, cos, sin)?;
        let p = step.weights(&q, &k)?.flatten_all()?.to_vec1::<f32>()?;
        let mixed = latent::mix(&p, &latents.values(), up.rank(), heads.heads, step.offset);
        let per_group = heads.group_size() * step.len * up.rank();
        let mut groups = Vec::with_capacity(heads.kv_heads);
        for (g, rows) in mixed.chunks_exact(per_group).enumerate() {
            let v_rows = k0 + dkv + g * hd..k0 + dkv + (g + 1) * hd;
            let v = add_bias(up.values(rows, g)?, bias_part(bias, v_rows)?)?;
            groups.push(v.reshape((heads.group_size(), step.len, hd))?);
        }
        step.merge_heads(&Tensor::cat(&groups, 0)?)
    }

    /// Logits `[rows, vocab]` of final hidden rows.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.apply(hidden)
    }

    /// Token embeddings `[len, d]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let idx = Tensor::new(ids, &Device::Cpu)?;
        Ok(self.embed.index_select(&idx, 0)?)
    }
}

/// `[q; k; v]` of layer `i`'s input `h`: from the stacked linear, or from `q_proj` and the K/V
/// latent. The tape sees the stacked output as the `Qkv` target either way (the inputs and
/// gradients a joint factorisation or the quantizer's moments need) and its K and V columns as
/// the `Kv` target (a K/V latent's).
fn stacked_qkv(
    l: &DecoderLayer,
    i: usize,
    h: &Tensor,
    dq: usize,
    mut tape: Option<&mut Tape>,
) -> Result<Tensor> {
    let t = |proj| Target { tower: Tower::Text, layer: i, proj };
    let qkv = match &l.q {
        None => l.qkv.forward(h, t(Proj::Qkv), tape.as_deref_mut())?,
        Some(q) => {
            let y =
                Tensor::cat(&[q.forward(h, t(Proj::Qkv), None)?, l.qkv.forward(h, t(Proj::Kv), None)?], 1)?;
            match tape.as_deref_mut() {
                Some(tp) => tp.tap(t(Proj::Qkv), h, y)?,
                None => y,
            }
        }
    };
    match tape {
        Some(tp) if tp.wants(t(Proj::Kv)) => {
            let width = qkv.dim(1)? - dq;
            let kv = tp.tap(t(Proj::Kv), h, qkv.narrow(1, dq, width)?)?;
            Ok(Tensor::cat(&[&qkv.narrow(1, 0, dq)?, &kv], 1)?)
        }
        _ => Ok(qkv),
    }
}
