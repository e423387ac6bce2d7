//! The shared-latent K/V cache of decoder layers with a latent: its CPU reference.
//!
//! # What is cached
//!
//! A factored attention layer computes per token the latent `c = qkv_down · x` (`r` values) and
//! from it `q = q_up · c`, `k = k_up · c`, `v = v_up · c` (each `+` its bias, if any) — or, with
//! a latent for K and V only, `c = kv_down · x`, `k` and `v` the same way and `q = q_proj · x`
//! (step 1 below then takes the queries from `q_proj` and caches nothing more). When
//! `r < 2·d_kv` (the format's rule, see [`pocketvlm_format::compression`]) the cache keeps the
//! latent instead of K and V:
//!
//! * **float model**: `c` rounded to bf16 (to nearest, ties to even: `half::bf16::from_f32`),
//!   `2r` bytes per token — the manifest's 16-bit values. bf16 rather than f16: it keeps f32's
//!   exponent range (no latent can overflow to ∞), at a relative error of at most 2⁻⁹ per value,
//!   finer than the quantized model's INT8 latent. Queries use the unrounded `c` of the new
//!   tokens (they are not cached); keys and values of every token, the new ones included, use the
//!   cached bf16 `c`.
//! * **quantized model**: `q_up`, `k_up` and `v_up` quantize their common input identically
//!   (INT8 activations, one clip ratio, no online transforms), so the pair `(q_a, s_a)` of steps
//!   2–5 of [`pocketvlm_format::quant`] — [`QuantLinear::quantize_token`], computed once with
//!   `q_up` — is the entry: `r` i8 values and one f32 per token.
//!
//! # Attention from the cache
//!
//! For new tokens `i` at positions `offset + i` (`i < len`), with the cache holding positions
//! `0..total` (`total = offset + len`, the new tokens included):
//!
//! 1. **queries** `q_i = q_up · c_i` (quant: [`QuantLinear::product`] of the new pairs), RoPE at
//!    position `offset + i`;
//! 2. **keys rebuilt** `k_t = k_up · c_t` for every cached `t < total` (quant: `product` of each
//!    cached pair), RoPE at position `t`;
//! 3. **weights** `p_{h,i,t} = softmax_t(q_{h,i} · k_{g,t} / √hd)` over `t ≤ offset + i`, where
//!    `g = h / (heads / kv_heads)` is the K/V group of head `h`;
//! 4. **absorbed V**: `ĉ_{h,i}[j] = Σ_t p_{h,i,t} · ℓ_t[j]` with `ℓ_t = bf16(c_t)` (float) or
//!    `ℓ_t[j] = s_a,t · f32(q_a,t[j])` (quant, one f32 multiply), accumulated in f32 over
//!    `t = 0, 1, …, offset + i` (each term one multiply, then one add); then
//!    `o_{h,i} = V_up[g·hd .. (g+1)·hd] · ĉ_{h,i}` plus those rows' bias (quant:
//!    [`QuantLinear::absorbed`]; float: the f32 matrix product). Since `Σ_t p_{h,i,t} = 1`, this
//!    is `Σ_t p_{h,i,t} · v_t` in real arithmetic; f32 rounds it differently.
//!
//! For a quantized model steps 1–3 compute the very numbers of the plain cache (same integers,
//! same products, same RoPE), so its latent and plain caches differ only by step 4's rounding;
//! a float model's differ by the bf16 rounding of the cached latent too.

use std::ops::Range;

use candle_core::{Device, Tensor};
use half::bf16;
use pocketvlm_format::quant::QuantLinear;

use crate::error::{CompressError, Result};
use crate::model::linear::{Linear, Weight};

/// The attention geometry of the decoder.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    pub fn d_q(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn d_kv(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Query heads per K/V head.
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// The cached latents of one layer, one row of `rank` values per position.
#[derive(Clone, Debug)]
pub enum Latents {
    /// Float model: `c` rounded to bf16 (held as the f32 values it widens to), `[len, rank]`.
    Float { rank: usize, c: Vec<f32> },
    /// Quantized model: `q_a` row-major `[len, rank]` and `s_a` `[len]`.
    Int8 { rank: usize, q: Vec<i8>, s: Vec<f32> },
}

impl Latents {
    pub fn rank(&self) -> usize {
        match self {
            Latents::Float { rank, .. } | Latents::Int8 { rank, .. } => *rank,
        }
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        match self {
            Latents::Float { rank, c } => c.len() / rank,
            Latents::Int8 { s, .. } => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        match self {
            Latents::Float { rank, c } => c.truncate(len * *rank),
            Latents::Int8 { rank, q, s } => {
                q.truncate(len * *rank);
                s.truncate(len);
            }
        }
    }

    /// `ℓ_t`, the latent values attention mixes, row-major `[len, rank]`: `c_t` itself, or
    /// `s_a,t · f32(q_a,t[j])` (one f32 multiply each).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Latents::Float { c, .. } => c.clone(),
            Latents::Int8 { rank, q, s } => {
                q.chunks(*rank).zip(s).flat_map(|(row, &s)| row.iter().map(move |&v| s * v as f32)).collect()
            }
        }
    }
}

/// The up side of a layer that caches its latent (joint QKV, or K/V with Q apart).
pub struct LatentUp<'a> {
    heads: Heads,
    rank: usize,
    /// The first column of `k_up` among the stacked ups: `d_q` when `q_up` comes first, else 0.
    k0: usize,
    factors: Factors<'a>,
}

enum Factors<'a> {
    /// `[q_up; k_up; v_up]ᵀ` as `[rank, d_q + 2·d_kv]`, or `[k_up; v_up]ᵀ` as `[rank, 2·d_kv]`.
    Float(&'a Tensor),
    /// `q_up` (a joint latent), `k_up`, `v_up`.
    Int8 { q: Option<&'a QuantLinear>, k: &'a QuantLinear, v: &'a QuantLinear },
}

/// A typed refusal of layer `layer`'s factors as a latent cache.
pub(crate) fn unsupported(layer: usize, what: String) -> CompressError {
    CompressError::BadOptions { recipe: format!("the latent K/V cache of text layer {layer}"), what }
}

/// A typed refusal of a cache entry that does not fit the layer (another model's cache).
fn mismatch(what: &str) -> CompressError {
    CompressError::BadOptions { recipe: "the latent K/V cache".into(), what: what.into() }
}

impl<'a> LatentUp<'a> {
    /// The up factors of `latent` when it caches its latent: factored, with rank
    /// `0 < r < 2·d_kv`; `[q_up; k_up; v_up]` when `joint`, else `[k_up; v_up]`. Quantized factors
    /// must share one activation quantization and have no online transforms (the cache holds one
    /// `(q_a, s_a)` for all of them), else a typed error.
    pub fn of(latent: &'a Linear, joint: bool, heads: Heads, layer: usize) -> Result<Option<Self>> {
        let Some(down) = &latent.down else { return Ok(None) };
        let rank = down.out_features();
        if rank == 0 || rank >= 2 * heads.d_kv() {
            return Ok(None);
        }
        let factors = match &latent.up {
            Weight::Float(up_t) => Factors::Float(up_t),
            Weight::Quant(parts) => quantized_factors(parts, joint, rank, heads, layer)?,
        };
        Ok(Some(Self { heads, rank, k0: if joint { heads.d_q() } else { 0 }, factors }))
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// An empty cache of this layer's kind.
    pub fn empty(&self) -> Latents {
        let rank = self.rank;
        match self.factors {
            Factors::Float(_) => Latents::Float { rank, c: Vec::new() },
            Factors::Int8 { .. } => Latents::Int8 { rank, q: Vec::new(), s: Vec::new() },
        }
    }

    /// Append the latents `c` (row-major `[len, rank]`) of new tokens to `cache` and return
    /// their queries `q_up · c` (`[len, d_q]`, no bias, no RoPE) when the latent computes Q:
    /// step 1. The latent is quantized with `k_up`'s activation quantization, the same as
    /// `q_up`'s (see [`LatentUp::of`]).
    pub fn append(&self, c: &[f32], cache: &mut Latents) -> Result<Option<Tensor>> {
        let (rank, dq, joint) = (self.rank, self.heads.d_q(), self.k0 > 0);
        let len = c.len() / rank;
        match (&self.factors, cache) {
            (Factors::Float(up_t), Latents::Float { c: cached, .. }) => {
                cached.extend(c.iter().map(|&v| bf16::from_f32(v).to_f32()));
                let c = Tensor::from_slice(c, (len, rank), &Device::Cpu)?;
                Ok(if joint { Some(c.matmul(&columns(up_t, 0..dq)?)?) } else { None })
            }
            (Factors::Int8 { q: q_up, k, .. }, Latents::Int8 { q, s, .. }) => {
                let mut queries = Vec::with_capacity(if q_up.is_some() { len * dq } else { 0 });
                let mut q_a = vec![0i8; rank];
                for row in c.chunks_exact(rank) {
                    let s_a = k.quantize_token(&mut row.to_vec(), &mut q_a)?;
                    if let Some(q_up) = q_up {
                        q_up.product(&q_a, s_a, &mut queries);
                    }
                    q.extend_from_slice(&q_a);
                    s.push(s_a);
                }
                Ok(match q_up {
                    Some(_) => Some(Tensor::from_vec(queries, (len, dq), &Device::Cpu)?),
                    None => None,
                })
            }
            _ => Err(mismatch("a float latent for float factors, an INT8 one for quantized factors")),
        }
    }

    /// Keys `k_up · c_t` of every cached position (`[len, d_kv]`, no bias, no RoPE): step 2.
    pub fn keys(&self, cache: &Latents) -> Result<Tensor> {
        let (rank, k0, dkv) = (self.rank, self.k0, self.heads.d_kv());
        let len = cache.len();
        match (&self.factors, cache) {
            (Factors::Float(up_t), Latents::Float { c, .. }) => {
                let c = Tensor::from_slice(c, (len, rank), &Device::Cpu)?;
                Ok(c.matmul(&columns(up_t, k0..k0 + dkv)?)?)
            }
            (Factors::Int8 { k, .. }, Latents::Int8 { q, s, .. }) => {
                let keys = in_parallel(len, |tokens| {
                    let mut out = Vec::with_capacity(tokens.len() * dkv);
                    for t in tokens {
                        k.product(&q[t * rank..(t + 1) * rank], s[t], &mut out);
                    }
                    out
                });
                Ok(Tensor::from_vec(keys, (len, dkv), &Device::Cpu)?)
            }
            _ => Err(mismatch("a float latent for float factors, an INT8 one for quantized factors")),
        }
    }

    /// `V_up[g·hd .. (g+1)·hd] · ĉ` for each mixed latent row of `mixed` (row-major
    /// `[rows, rank]`), giving `[rows, hd]` (no bias): step 4 after the mixing.
    pub fn values(&self, mixed: &[f32], group: usize) -> Result<Tensor> {
        let (rank, hd) = (self.rank, self.heads.head_dim);
        let rows = mixed.len() / rank;
        let v_rows = group * hd..(group + 1) * hd;
        match &self.factors {
            Factors::Float(up_t) => {
                let base = self.k0 + self.heads.d_kv();
                let mixed = Tensor::from_slice(mixed, (rows, rank), &Device::Cpu)?;
                Ok(mixed.matmul(&columns(up_t, base + v_rows.start..base + v_rows.end)?)?)
            }
            Factors::Int8 { v, .. } => {
                let mut out = Vec::with_capacity(rows * hd);
                for row in mixed.chunks_exact(rank) {
                    v.absorbed(row, v_rows.clone(), &mut out);
                }
                Ok(Tensor::from_vec(out, (rows, hd), &Device::Cpu)?)
            }
        }
    }
}

/// `q_up` (when `joint`), `k_up` and `v_up` of a quantized layer, checked to share the latent's
/// quantization.
fn quantized_factors(
    parts: &[QuantLinear],
    joint: bool,
    rank: usize,
    heads: Heads,
    layer: usize,
) -> Result<Factors<'_>> {
    let (dq, dkv) = (heads.d_q(), heads.d_kv());
    let (q, k, v, want) = match (parts, joint) {
        ([q, k, v], true) => (Some(q), k, v, vec![(dq, rank), (dkv, rank), (dkv, rank)]),
        ([k, v], false) => (None, k, v, vec![(dkv, rank), (dkv, rank)]),
        _ => return Err(unsupported(layer, format!("{} up factors", parts.len()))),
    };
    let shapes: Vec<_> = parts.iter().map(|p| (p.weights.out, p.weights.cols)).collect();
    if shapes != want {
        return Err(unsupported(layer, format!("up factors {want:?}, not {shapes:?}")));
    }
    let one_input = parts.iter().all(|p| p.activation == k.activation);
    if !one_input || parts.iter().any(|p| !p.online.is_empty()) {
        return Err(unsupported(
            layer,
            "ups with one activation quantization and no online transforms".into(),
        ));
    }
    Ok(Factors::Int8 { q, k, v })
}

/// Step 4's mixing: `ĉ_{h,i} = Σ_{t ≤ offset+i} p_{h,i,t} · ℓ_t`, accumulated in f32 over `t`
/// ascending (one multiply, then one add per term). `p` is row-major `[heads, len, total]`,
/// `values` ([`Latents::values`]) `[total, rank]`; the result is `[heads, len, rank]`. Weights
/// past `offset + i` are the causal mask's zeros and are skipped.
pub fn mix(p: &[f32], values: &[f32], rank: usize, heads: usize, offset: usize) -> Vec<f32> {
    let total = values.len() / rank;
    let len = p.len() / (heads * total);
    in_parallel(heads, |hs| {
        let mut out = vec![0f32; hs.len() * len * rank];
        for (h, mixed) in hs.zip(out.chunks_exact_mut(len * rank)) {
            for (i, acc) in mixed.chunks_exact_mut(rank).enumerate() {
                let weights = &p[(h * len + i) * total..][..=offset + i];
                for (&w, row) in weights.iter().zip(values.chunks_exact(rank)) {
                    for (a, &l) in acc.iter_mut().zip(row) {
                        *a += w * l;
                    }
                }
            }
        }
        out
    })
}

/// `work` over `0..n` split into contiguous ranges, one per CPU thread, results concatenated in
/// order (the same values as one call on `0..n`).
fn in_parallel<T: Send>(n: usize, work: impl Fn(Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).clamp(1, n.max(1));
    let per = n.div_ceil(threads).max(1);
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..n).step_by(per).map(|a| s.spawn(move || work(a..(a + per).min(n)))).collect();
        handles.into_iter().flat_map(|h| h.join().expect("a latent-cache thread panicked")).collect()
    })
}

/// Columns `cols` of `m` (`[rows, n]`), contiguous.
fn columns(m: &Tensor, cols: Range<usize>) -> Result<Tensor> {
    Ok(m.narrow(1, cols.start, cols.len())?.contiguous()?)
}
