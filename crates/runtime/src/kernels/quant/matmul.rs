//! The integer product with its dequantization ([`QMatmul`]) over quantized activation rows
//! ([`QuantizedRows`]).

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::Encoding;
use pocketvlm_format::quant::Bits;

use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::util::{check_binding, dispatch, distinct, grid, require_size, slice};
use crate::kernels::{Kernel, groups};
use crate::shader::Defines;
use crate::tensor::Tensor;

use super::weights::{QuantWeightsGpu, TILE_QUADS, WeightLayout, texture_defines};
use super::{INVOCATIONS, rows_words};

/// Uniform block of `shaders/qmatmul.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct QMatmulParams {
    tokens: u32,
    n: u32,
    aw: u32,
    ww: u32,
    groups: u32,
    group_words: u32,
    ldy: u32,
    col_offset: u32,
    /// With [`QMatmul::parts`] > 1: the first column of the second and of the third output.
    split: [u32; 2],
    /// [`TiledWords::Texture`]: the texel of the bound columns' first word.
    w_first: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<QMatmulParams>() == 48);

/// `shaders/qmatmul.wgsl`: `y = dequant(W q_a)` for `tokens` quantized activation rows, four
/// output columns of the [`tile`](super::tile)d weight per invocation for one token (GEMV) or four —
/// or, for one token with [`QMatmul::split_k`], four columns per 16 invocations.
#[derive(Clone, Copy, Debug)]
pub struct QMatmul {
    pub int4: bool,
    pub f16_scales: bool,
    pub bias: bool,
    /// One token per invocation (decode) instead of four.
    pub gemv: bool,
    /// Read activations four words at a time and take four words per step ([`QMatmul::vec4_fits`]).
    pub vec4: bool,
    /// One token, each column quad's words split between 16 invocations whose sums meet in
    /// workgroup memory ([`SPLIT_K_LANES`]; GPUs: [`QMatmul::for_rows`]).
    pub split_k: bool,
    /// Outputs written: 1, or up to [`MAX_PARTS`] for stacked layers ([`QMatmul::encode_parts`]).
    pub parts: usize,
    /// The weight's words are a texture ([`TiledWords`](super::TiledWords)).
    pub texture: bool,
    /// Blocks of [`FLOAT_SUM_TOKENS`] tokens by [`FLOAT_SUM_QUADS`] column quads whose exact
    /// integer sums run as f32 fmas on widened INT8 values (four-word loads, INT8 weights;
    /// [`QMatmul::for_rows`]): the same sums, so the same bits, faster on CPU adapters than
    /// `dot4I8Packed`.
    pub float_sums: bool,
}

/// Tokens per block of the [`QMatmul::float_sums`] variant. `shaders/qmatmul.wgsl` writes its
/// block out (eight tokens in its `Words`/`Tokens`/`Rows`/`Sums` structs, four quads in `main`):
/// this and [`FLOAT_SUM_QUADS`] must match it.
pub const FLOAT_SUM_TOKENS: usize = 8;

/// Column quads (four columns each) per block of the [`QMatmul::float_sums`] variant.
pub const FLOAT_SUM_QUADS: usize = 4;

/// The most stacked layers one product writes (one binding each: with the input's two and the
/// weight's two, seven storage bindings, within WebGPU's eight).
pub const MAX_PARTS: usize = 3;

/// Invocations that share one column quad's words in the [`QMatmul::split_k`] variant (four quads
/// per 64-invocation workgroup).
pub const SPLIT_K_LANES: usize = 16;

impl Kernel for QMatmul {
    const SHADER: &'static str = "qmatmul";
    fn defines(&self) -> Defines {
        let mut d = BTreeMap::from([("TILE_QUADS".to_string(), TILE_QUADS.to_string())]);
        let flags = [
            (self.int4, "INT4"),
            (self.f16_scales, "SCALE_F16"),
            (self.bias, "BIAS"),
            (self.vec4, "VEC4"),
            (self.gemv, "GEMV"),
            (self.split_k, "SPLIT_K"),
            (self.float_sums, "FLOAT_SUMS"),
        ];
        for (on, name) in flags {
            if on {
                d.insert(name.to_string(), String::new());
            }
        }
        if self.texture {
            d.extend(texture_defines());
        }
        if self.parts > 1 {
            d.insert("PARTS".to_string(), String::new());
        }
        if self.parts > 2 {
            d.insert("PARTS_3".to_string(), String::new());
        }
        d
    }
}

/// Quantized activations of `tokens` rows: integers u32 `[tokens, stride]` and f32 scales.
/// The stride is [`activation_words`](super::activation_words) of the layer's columns, or (INT8 activations, e.g. the
/// latent cache) as little as `⌈cols/4⌉`: the last activation words a product reads for a row
/// (up to [`activation_words`](super::activation_words)) may then be the next row's first (or words past the last row,
/// which the buffer must hold: [`rows_words`]) — they meet only the weight's zero padding, so
/// the product is unchanged.
pub struct QuantizedRows<'a> {
    pub words: &'a wgpu::Buffer,
    pub scales: &'a wgpu::Buffer,
    pub tokens: usize,
    pub stride: usize,
    /// Rows the product's bindings span, at least `tokens` (the input's and the output's
    /// buffers must hold them): a cache's capacity for rows that grow by one each decode step,
    /// so every step binds the same ranges and reuses one bind group.
    pub bound: usize,
}

impl<'a> QuantizedRows<'a> {
    /// `tokens` rows of `stride` words, bound exactly.
    pub fn new(words: &'a wgpu::Buffer, scales: &'a wgpu::Buffer, tokens: usize, stride: usize) -> Self {
        Self { words, scales, tokens, stride, bound: tokens }
    }

    /// The same rows with bindings spanning `rows` rows.
    pub fn spanning(self, rows: usize) -> Self {
        Self { bound: rows, ..self }
    }
}

impl QMatmul {
    /// The variant for `w` on the rows `a` on `gpu`. One token reads four activation words at
    /// a time wherever the widths allow, and so do blocks of tokens except INT4 weights where the
    /// adapter reads those faster one word at a time
    /// ([`crate::Capabilities::one_word_int4_blocks`]: Chromium's SwiftShader; lavapipe runs the
    /// vision tower's and a key rebuild's shapes 1.2–1.3× faster with four-word loads,
    /// BENCHMARKS.md Speed XV, XVI). On GPUs one token also splits each quad's
    /// words between [`SPLIT_K_LANES`] invocations: a decode step's `[576,
    /// 576]` product has 144 quads, so one invocation per quad walking all 144 words would leave
    /// a GPU almost idle; CPU adapters run the workgroup barriers it needs slowly.
    pub fn for_rows(gpu: &Gpu, w: &QuantWeightsGpu, a: &QuantizedRows<'_>, bias: bool) -> Self {
        let one = a.tokens == 1;
        let narrow = gpu.caps.one_word_int4_blocks && w.bits() == Bits::Int4;
        let wide = (one || !narrow) && Self::vec4_fits(w, a.stride);
        let kernel = Self::new(w, a.tokens, bias, wide);
        let float_sums = gpu.caps.float_block_sums && !one && wide && w.bits() == Bits::Int8;
        Self { split_k: one && !gpu.caps.cpu, float_sums, ..kernel }
    }

    /// The variant for `w` on `tokens` rows with one- or four-word loads: one token (decode)
    /// gives each invocation four columns of that token, more tokens blocks of four by four.
    pub fn new(w: &QuantWeightsGpu, tokens: usize, bias: bool, vec4: bool) -> Self {
        Self {
            int4: w.bits() == Bits::Int4,
            f16_scales: w.scales.encoding == Encoding::F16,
            bias,
            gemv: tokens == 1,
            vec4,
            split_k: false,
            parts: 1,
            texture: w.in_texture(),
            float_sums: false,
        }
    }

    /// Whether the four-word variant can read `w` with activation rows of `stride` words: the
    /// weight's words per column and per scale group and the stride are multiples of 4 (every
    /// weight with one scale per column is padded so, [`WeightLayout`]).
    pub fn vec4_fits(w: &QuantWeightsGpu, stride: usize) -> bool {
        let WeightLayout { ww, group_words, .. } = w.layout;
        ww.is_multiple_of(4) && group_words.is_multiple_of(4) && stride.is_multiple_of(4)
    }

    /// Record `y[r0.., :] = dequant(W a) (+ bias)` where `y` is f32 `[.., out]` and the rows
    /// written start at byte `y_offset`. Weights larger than one binding are split into
    /// column panels ([`QuantWeightsGpu::panel`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        a: &QuantizedRows<'_>,
        w: &QuantWeightsGpu,
        bias: Option<&Tensor>,
        y: (&wgpu::Buffer, u64),
    ) -> Result<()> {
        self.encode_parts(gpu, encoder, a, &[(w, y)], bias).await
    }

    /// [`QMatmul::encode`] for layers stacked one after the other in the same buffers
    /// ([`QuantWeightsGpu::stack`]), each `(weights, y)` writing its own output from the rows
    /// `a`, in one dispatch: every column's sum is the one its layer alone computes. Stacked
    /// layers have no bias and fit one panel.
    pub async fn encode_parts(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        a: &QuantizedRows<'_>,
        parts: &[(&QuantWeightsGpu, (&wgpu::Buffer, u64))],
        bias: Option<&Tensor>,
    ) -> Result<()> {
        let spanning;
        let w = match parts {
            [(w, _)] => *w,
            _ => {
                spanning = QuantWeightsGpu::spanning(parts.iter().map(|(w, _)| *w))?;
                &spanning
            }
        };
        let (out, cols, tokens) = (w.out(), w.cols(), a.tokens);
        let bad_variant = bias.is_some() != self.bias
            || self.int4 != (w.bits() == Bits::Int4)
            || self.parts != parts.len()
            || self.texture != w.in_texture()
            || parts.len() > MAX_PARTS
            || (parts.len() > 1 && (bias.is_some() || w.panel < out));
        if bad_variant {
            return Err(RuntimeError::Shape("quantized matmul variant does not match its buffers".into()));
        }
        if tokens == 0 || tokens * out > u32::MAX as usize {
            return Err(RuntimeError::Shape(format!("quantized matmul over {tokens} tokens")));
        }
        let aw = a.stride;
        if aw < cols.div_ceil(4) {
            return Err(RuntimeError::Shape(format!("{aw} activation words per row for {cols} columns")));
        }
        if self.vec4 && !Self::vec4_fits(w, aw) {
            return Err(RuntimeError::Shape(format!(
                "four-word quantized matmul over [{out}, {cols}] weights and {aw}-word activation rows"
            )));
        }
        if a.bound < tokens {
            return Err(RuntimeError::Shape(format!("{tokens} quantized rows bound as {}", a.bound)));
        }
        if self.split_k && tokens != 1 {
            return Err(RuntimeError::Shape(format!("split-k quantized matmul over {tokens} tokens")));
        }
        if self.float_sums && (self.gemv || self.split_k || !self.vec4 || self.int4) {
            return Err(RuntimeError::Shape(
                "f32-sum quantized matmul needs blocks of tokens, four-word loads and INT8 weights".into(),
            ));
        }
        let rows = a.bound;
        let a_bytes = (rows_words(rows, aw, cols) * 4) as u64;
        let s_bytes = rows as u64 * 4;
        require_size(a.words, a_bytes, "activation integers")?;
        require_size(a.scales, s_bytes, "activation scales")?;
        check_binding(gpu, "activation integers", a_bytes)?;
        let mut outputs = Vec::with_capacity(parts.len());
        for (part, y) in parts {
            let y_bytes = (rows * part.out() * 4) as u64;
            require_size(y.0, y.1 + y_bytes, "quantized matmul output")?;
            check_binding(gpu, "quantized matmul output", y_bytes)?;
            for buffer in [a.words, a.scales, &w.scales.buffer].into_iter().chain(w.buffer()) {
                distinct(buffer, y.0, "quantized matmul input and output")?;
            }
            outputs.push((y.0, y.1, y_bytes));
        }
        for (i, (y, ..)) in outputs.iter().enumerate() {
            if outputs[..i].iter().any(|(other, ..)| other == y) {
                return Err(RuntimeError::Shape(
                    "stacked quantized matmul outputs must be different buffers".into(),
                ));
            }
        }
        if let Some(b) = bias {
            b.expect_shape("bias", &[out])?;
            b.expect_f32("bias")?;
            check_binding(gpu, "bias", (out * 4) as u64)?;
        }
        // where each output after the first begins (the total where there is none)
        let mut split = [out as u32; 2];
        let mut first = 0;
        for (i, (part, _)) in parts.iter().enumerate().take(parts.len() - 1) {
            first += part.out();
            split[i] = first as u32;
        }
        let WeightLayout { ww, groups_per_row, group_words, .. } = w.layout;
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        for (c0, nc) in w.panels() {
            let (weight, w_first) = w.weight_binding(c0, nc);
            let params = QMatmulParams {
                tokens: tokens as u32,
                n: nc as u32,
                aw: aw as u32,
                ww: ww as u32,
                groups: groups_per_row as u32,
                group_words: group_words as u32,
                ldy: out as u32,
                col_offset: c0 as u32,
                split,
                w_first,
                _pad: 0,
            };
            let mut resources = vec![
                slice(a.words, 0, a_bytes),
                slice(a.scales, 0, s_bytes),
                weight,
                w.scale_binding(c0, nc),
            ];
            resources.extend(outputs.iter().map(|&(y, offset, bytes)| slice(y, offset, bytes)));
            if let Some(b) = bias {
                resources.push(slice(&b.buffer, 0, (out * 4) as u64));
            }
            let quads = nc.div_ceil(4);
            let workgroups = if self.split_k {
                groups(quads * SPLIT_K_LANES, INVOCATIONS)
            } else {
                let per_group = if self.gemv { TILE_QUADS } else { INVOCATIONS };
                let blocks = match (self.gemv, self.float_sums) {
                    (true, _) => quads * tokens,
                    (false, true) => quads.div_ceil(FLOAT_SUM_QUADS) * tokens.div_ceil(FLOAT_SUM_TOKENS),
                    (false, false) => quads * tokens.div_ceil(4),
                };
                groups(blocks, per_group)
            };
            let (gx, gy) = grid(gpu, workgroups as u64)?;
            dispatch(gpu, encoder, &pipeline, "qmatmul", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        }
        Ok(())
    }
}
