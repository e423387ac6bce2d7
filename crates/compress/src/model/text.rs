//! The Llama (SmolLM2) text decoder: RMSNorm, grouped-query attention with RoPE, SwiGLU MLP.
//!
//! Mirrors transformers' `LlamaModel` with eager attention, in f32, batch size 1.

use candle_core::{D, Device, Tensor};
use pocketvlm_format::TextConfig;

use crate::error::Result;
use crate::model::linear::{Linear, Proj, Tape, Target, Tower, Weight};

pub struct DecoderLayer {
    pub input_norm: Tensor,
    /// `[q; k; v]` stacked along the output.
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

/// Keys and values of the positions seen so far (after RoPE), per layer: `[kv_heads, len, head_dim]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
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

impl TextDecoder {
    /// Run the decoder over `embeds` (`[len, d]`, positions continuing after `cache`), returning
    /// the final-norm hidden states `[len, d]`. With a cache, keys and values are appended to it.
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
        let (hd, heads, kv_heads) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let (dq, dkv) = (heads * hd, kv_heads * hd);
        let scale = 1.0 / (hd as f64).sqrt();
        if let Some(k) = cache.as_deref_mut()
            && k.layers.is_empty()
        {
            k.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let mut x = embeds.clone();
        for (i, l) in self.layers.iter().enumerate() {
            let t = |proj| Target { tower: Tower::Text, layer: i, proj };
            let h = rms_norm(&x, &l.input_norm, c.rms_norm_eps)?;
            let qkv = l.qkv.forward(&h, t(Proj::Qkv), tape.as_deref_mut())?;
            let q = apply_rope(&split_heads(&qkv.narrow(1, 0, dq)?, heads, hd)?, &cos, &sin)?;
            let mut k = apply_rope(&split_heads(&qkv.narrow(1, dq, dkv)?, kv_heads, hd)?, &cos, &sin)?;
            let mut v = split_heads(&qkv.narrow(1, dq + dkv, dkv)?, kv_heads, hd)?;
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &cache.layers[i] {
                    k = Tensor::cat(&[pk, &k], 1)?;
                    v = Tensor::cat(&[pv, &v], 1)?;
                }
                cache.layers[i] = Some((k.detach(), v.detach()));
            }
            let k = repeat_kv(&k, heads / kv_heads)?;
            let v = repeat_kv(&v, heads / kv_heads)?;
            let mut scores = (q.matmul(&k.t()?)? * scale)?;
            if let Some(m) = &mask {
                scores = scores.broadcast_add(m)?;
            }
            let o = softmax(&scores)?.matmul(&v)?.transpose(0, 1)?.reshape((len, dq))?;
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
