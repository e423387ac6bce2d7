//! The absorbed value projection of a shared-latent KV cache ([`LatentUp`], `shaders/latent_up.wgsl`).
//!
//! With cached latents `c_t` and softmax weights `p_t` (`Σ p_t = 1`), a head's output is
//! `Σ_t p_t v_t = Σ_t p_t (V_up c_t + b) = V_up (Σ_t p_t c_t) + b`: the attention kernel
//! ([`super::attention::ValueKind`] latent variants) forms `ĉ = Σ_t p_t c_t` per query head,
//! and this kernel applies the head's `head_dim` rows of `v_up` to it, once per head instead of
//! once per cached token. Equal in real arithmetic; the float roundings differ.
//!
//! `ĉ` f32 `[tokens, heads, vd]` (`vd ≥ rank`), `out` f32 `[tokens, heads, head_dim]`; `v_up`
//! `[kv_heads·head_dim, rank]` as stored: a float matrix (f32/f16/bf16, widened in the kernel) or
//! the integer contract's packed weights and scales, dequantized per group as
//! `Σ_g s_w[o][g]·(Σ_{j∈g} f32(q_w[o][j])·ĉ[j])` (groups left to right; within a group a whole
//! weight word at a time into four running sums, added pairwise), then the bias. A float sum
//! like the rest of this path: `tests/latent.rs` holds it to a bound against an f64 reference.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::Encoding;
use pocketvlm_format::quant::Bits;

use super::quant::{QuantWeightsGpu, TILE_QUADS, texture_defines};
use super::util::{check_binding, dispatch, distinct, grid, require_size, slice};
use super::{Kernel, head_set};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;
use crate::tensor::Tensor;

/// Invocations per workgroup of `shaders/latent_up.wgsl` with float weights (one output value
/// each). Quantized weights (four outputs of a [`head_set`] of query heads each) take one tile's
/// [`TILE_QUADS`]: decode has only `heads / set · head_dim / 4` invocations, which that spreads
/// over a CPU adapter's threads; several tokens take the same pipeline, at the same speed (BENCHMARKS.md,
/// Speed XXIII).
const INVOCATIONS: u64 = 64;

/// Uniform block of `shaders/latent_up.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rank: u32,
    vd: u32,
    /// Quantized weights: words per row (the rows in column tiles, `kernels::quant::tile`).
    ww: u32,
    group: u32,
    /// Quantized weights in a texture: the texel of `v_up`'s first word.
    w_first: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 48);

/// `v_up` as the kernel reads it.
pub enum UpWeights<'a> {
    Float(&'a Tensor),
    Quant(&'a QuantWeightsGpu),
}

impl UpWeights<'_> {
    fn shape(&self) -> (usize, usize) {
        match self {
            UpWeights::Float(t) => (t.shape[0], t.shape[1]),
            UpWeights::Quant(q) => (q.out(), q.cols()),
        }
    }
}

/// Shapes of one absorbed value projection.
#[derive(Clone, Copy, Debug)]
pub struct LatentUpShape {
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// f32 values per row of `ĉ` (≥ the rank).
    pub vd: usize,
}

/// The kernel variant (weight encoding, scales, bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatentUp {
    pub weights: Encoding,
    pub f16_scales: bool,
    pub bias: bool,
    /// Quantized weights whose words are a texture (`kernels::quant::TiledWords`).
    pub texture: bool,
}

impl Kernel for LatentUp {
    const SHADER: &'static str = "latent_up";
    fn defines(&self) -> Defines {
        let mut d = BTreeMap::new();
        let flags = [
            (self.weights.packed_bits().is_some(), "QUANT"),
            (self.weights.packed_bits() == Some(Bits::Int4), "INT4"),
            (matches!(self.weights, Encoding::F16 | Encoding::BF16), "W16"),
            (self.weights == Encoding::BF16, "BF16"),
            (self.f16_scales, "SCALE_F16"),
            (self.bias, "BIAS"),
        ];
        for (on, name) in flags {
            if on {
                d.insert(name.to_string(), String::new());
            }
        }
        if self.weights.packed_bits().is_some() {
            d.insert("TILE_QUADS".to_string(), TILE_QUADS.to_string());
        }
        if self.texture {
            d.extend(texture_defines());
        }
        d
    }
}

impl LatentUp {
    /// The variant for `w` with or without a bias.
    pub fn for_weights(w: &UpWeights<'_>, bias: bool) -> Self {
        match w {
            UpWeights::Float(t) => Self { weights: t.encoding, f16_scales: false, bias, texture: false },
            UpWeights::Quant(q) => Self {
                weights: q.encoding,
                f16_scales: q.scales.encoding == Encoding::F16,
                bias,
                texture: q.in_texture(),
            },
        }
    }

    /// Invocations per workgroup.
    fn per_group(&self) -> u64 {
        match self.weights.packed_bits() {
            Some(_) => TILE_QUADS as u64,
            None => INVOCATIONS,
        }
    }

    /// Record `out[t, h, :] = v_up[g(h)·hd..][..hd] · ĉ[t, h, ..rank] (+ bias)`.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: LatentUpShape,
        chat: &wgpu::Buffer,
        w: &UpWeights<'_>,
        bias: Option<&Tensor>,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let LatentUpShape { tokens, heads, kv_heads, head_dim, vd } = shape;
        let (rows, rank) = w.shape();
        let bad = |why: String| Err(RuntimeError::Shape(format!("absorbed v_up {shape:?}: {why}")));
        if tokens == 0 || heads == 0 || kv_heads == 0 || head_dim == 0 || heads % kv_heads != 0 {
            return bad("empty or ungrouped heads".into());
        }
        if rows != kv_heads * head_dim || vd < rank {
            return bad(format!("weight [{rows}, {rank}]"));
        }
        if *self != Self::for_weights(w, bias.is_some()) {
            return bad("the kernel variant does not match its weights".into());
        }
        let (chat_bytes, out_bytes) =
            ((tokens * heads * vd * 4) as u64, (tokens * heads * head_dim * 4) as u64);
        let quant = self.weights.packed_bits().is_some();
        if quant && head_dim % 4 != 0 {
            return bad("quantized weights need a head size that is a multiple of 4".into());
        }
        // Quantized weights: four outputs of a set of heads sharing a key/value head per
        // invocation ([`head_set`]).
        let set = if quant { head_set(heads, kv_heads) } else { 1 };
        let threads = (tokens * heads / set * head_dim / if quant { 4 } else { 1 }) as u64;
        if tokens * heads * vd > u32::MAX as usize {
            return bad("too many elements".into());
        }
        require_size(chat, chat_bytes, "latent sums")?;
        require_size(out, out_bytes, "absorbed v output")?;
        distinct(chat, out, "latent sums and output")?;
        check_binding(gpu, "latent sums", chat_bytes)?;
        check_binding(gpu, "absorbed v output", out_bytes)?;
        let (ww, group) = match w {
            UpWeights::Float(_) => (0, rank),
            UpWeights::Quant(q) if q.panel >= rows => (q.words_per_column(), q.group),
            UpWeights::Quant(q) => return bad(format!("v_up in panels of {} columns", q.panel)),
        };
        let mut resources = vec![slice(chat, 0, chat_bytes)];
        let mut w_first = 0;
        match w {
            UpWeights::Float(t) => {
                check_binding(gpu, "v_up", t.bytes())?;
                resources.push(slice(&t.buffer, 0, t.bytes().next_multiple_of(4)));
            }
            UpWeights::Quant(q) => {
                check_binding(gpu, "v_up", q.bytes())?;
                let (weight, first) = q.weight_binding(0, rows);
                w_first = first;
                resources.push(weight);
                resources.push(q.scale_binding(0, rows));
            }
        }
        resources.push(slice(out, 0, out_bytes));
        if let Some(b) = bias {
            b.expect_shape("bias of v_up", &[rows])?;
            b.expect_f32("bias of v_up")?;
            resources.push(slice(&b.buffer, 0, b.bytes()));
        }
        let params = Params {
            tokens: tokens as u32,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            head_dim: head_dim as u32,
            rank: rank as u32,
            vd: vd as u32,
            ww: ww as u32,
            group: group as u32,
            w_first,
            _pad: [0; 3],
        };
        let mut defines = self.defines();
        if set > 1 {
            defines.insert("HEAD_SET".to_string(), set.to_string());
        }
        let pipeline = gpu.pipeline(Self::SHADER, &defines).await?;
        let (gx, gy) = grid(gpu, threads.div_ceil(self.per_group()))?;
        dispatch(gpu, encoder, &pipeline, "latent_up", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        Ok(())
    }
}
