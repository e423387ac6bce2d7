//! The kernels of the low-bit integer contract ([`pocketvlm_format::quant`]): online rotations
//! ([`Rotate`]), per-token activation quantization ([`Quantize`]) and the integer product with
//! its dequantization ([`QMatmul`]). A decode step's token gets the first two in one dispatch
//! ([`super::rotate_quantize`]).
//!
//! **Exactness.** Every step follows the contract's order of f32 operations, each one a
//! correctly rounded add, subtract or multiply (WGSL guarantees those), the reciprocal of the
//! activation scale is computed by integer long division and integer-to-float conversions are
//! done in two exact halves, so the activation integers and scales, and the outputs of
//! per-channel and grouped layers, equal the CPU reference bit for bit — on drivers that do not
//! fuse a multiply and a following add into one `fma` (SPIR-V allows it without `NoContraction`,
//! which WGSL cannot express). The tests compare bits on lavapipe and SwiftShader.
//!
//! **Limits.** On CPU adapters all three kernels give each token (rotations, quantization) or
//! each block of output columns (product) to one invocation, with no workgroup memory and no
//! barriers, so any width fits and CPU adapters run them at full width. GPUs, where a decode
//! step's single token would leave all but a few invocations idle, get a 64-invocation workgroup
//! per token for the quantization ([`QuantizeLayout`]) and 16 invocations per column quad for
//! the one-token product ([`QMatmul::split_k`]); each uses at most 1 KiB of workgroup memory
//! whatever the width (WebGPU's default allows 16 KiB and 256 invocations). Buffers larger than
//! one storage binding are split by the caller ([`crate::model::linear`]) into row passes and
//! here into column panels.
//!
//! **Weight layout.** A quantized weight keeps its encoding (`i8`/`i4` words, the scales as
//! stored) but not its row order: [`QuantWeightsGpu::upload`] lays the words out in column
//! [`tile`]s, so the product's invocations, four columns each, read neighbouring memory (CPU
//! adapters run invocations as SIMD lanes; GPUs coalesce such loads), and each run of
//! [`TILE_QUADS`] invocations streams one contiguous piece of memory from its first word to its
//! last. Against row-major weights in Chromium's SwiftShader: the 49 152-column one-token product
//! 0.11 → 0.76 G MAC/s, the vision tower's `[1024, 768]·[768, 768]ᵀ` 0.47 → 1.22 (BENCHMARKS.md,
//! Speed V); against columns interleaved across the whole width (every word `k` of all columns
//! together), weights streamed from memory as a decode step reads them (Speed IX). The tiled
//! words live in a storage buffer, or on CPU adapters in a texture ([`TiledWords`], Speed XI).

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::Encoding;
use pocketvlm_format::quant::hadamard::hadamard;
use pocketvlm_format::quant::rotation::seeded_signs;
use pocketvlm_format::quant::{ActivationQuant, Bits, Construction, Rotation};

use super::util::{
    check_binding, chunks, dispatch, distinct, grid, require_size, rows_per_chunk, slice, with_subgroups,
};
use super::{Kernel, groups};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::memory::{DeviceBuffer, DeviceTexture};
use crate::shader::Defines;
use crate::tensor::Tensor;

/// Invocations per workgroup of the three kernels (one token or column block each).
const INVOCATIONS: usize = 64;

/// Activation words per token for `cols` values: i8 lanes, four per word, rounded up to what a
/// product over `cols` columns reads — an INT8 weight's words per column ([`WeightLayout`]: whole
/// groups of four words, 16 values) or two per INT4 weight word (each of eight values, whole
/// groups of four: 32 values) — so every weight word has its activation words within the row,
/// and rows start on 16 bytes for four-word loads.
pub fn activation_words(cols: usize) -> usize {
    8 * cols.div_ceil(32)
}

/// Words a buffer of `rows` quantized rows of `stride` words must hold for the products over
/// `cols` columns to read them all: the last row's reads reach [`activation_words`]`(cols)`.
pub fn rows_words(rows: usize, stride: usize, cols: usize) -> usize {
    rows * stride + activation_words(cols).saturating_sub(stride)
}

/// Uniform block of `shaders/rotate.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct RotateParams {
    tokens: u32,
    n: u32,
    m: u32,
    p: u32,
    pub(super) has_signs: u32,
    pub(super) core_offset: u32,
    pub(super) scale: f32,
    pub(super) has_core: u32,
    /// Distance between the values one invocation of a butterfly level holds.
    stride: u32,
    /// Outputs per column one invocation of the core computes.
    core_rows: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<RotateParams>() == 48);

/// An online rotation ready for [`Rotate`]: its factors and constant, and a GPU table with its
/// sign mask and Hadamard core as bits.
pub struct RotationTable {
    params: RotateParams,
    table: DeviceBuffer,
    /// What determines the transform: construction, factors and sign seed.
    key: (Construction, usize, usize, Option<u32>),
}

impl RotationTable {
    /// Build the table of `rotation` (the signs from its seed, the core from its order).
    pub async fn new(gpu: &Gpu, rotation: &Rotation) -> Result<Self> {
        let n = rotation.size();
        let (m, p) = rotation.factors();
        let core = match rotation.construction() {
            Construction::Kronecker if m > 1 => Some(hadamard(m).ok_or_else(|| {
                RuntimeError::UnsupportedModel(format!(
                    "no Hadamard matrix of order {m} for a rotation of {n}"
                ))
            })?),
            _ => None,
        };
        let signs = rotation.seed().map(|s| seeded_signs(s, n)).unwrap_or_default();
        let mut words = bits_to_words(&signs);
        words.resize(n.div_ceil(32), 0);
        let core_offset = words.len();
        if let Some(core) = &core {
            words.extend(bits_to_words(&core.iter().map(|&v| v < 0).collect::<Vec<_>>()));
        }
        let table = gpu.storage_buffer("rotation table", bytemuck::cast_slice(&words)).await?;
        let params = RotateParams {
            tokens: 0,
            n: n as u32,
            m: m as u32,
            p: p as u32,
            has_signs: u32::from(!signs.is_empty()),
            core_offset: core_offset as u32,
            scale: rotation.scale_f32(),
            has_core: u32::from(core.is_some()),
            stride: 1,
            core_rows: core_rows(gpu, m) as u32,
            _pad: [0; 2],
        };
        Ok(Self { params, table, key: (rotation.construction(), m, p, rotation.seed()) })
    }

    /// Whether `other` applies the same transform (same construction, factors and signs).
    pub fn same_transform(&self, other: &RotationTable) -> bool {
        self.key == other.key
    }

    /// The rotation's size.
    pub fn size(&self) -> usize {
        self.params.n as usize
    }

    /// Bytes of the table on the GPU.
    pub fn bytes(&self) -> u64 {
        self.table.size()
    }

    /// `(n, m, p)`: the size and its factors `n = m·p`.
    pub fn factors(&self) -> (usize, usize, usize) {
        let p = &self.params;
        (p.n as usize, p.m as usize, p.p as usize)
    }

    /// The table (sign mask, then the core from word `params().core_offset`).
    pub(super) fn table(&self) -> &wgpu::Buffer {
        &self.table
    }

    pub(super) fn params(&self) -> &RotateParams {
        &self.params
    }
}

fn bits_to_words(bits: &[bool]) -> Vec<u32> {
    bits.chunks(32).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | (u32::from(b) << i))).collect()
}

/// `shaders/rotate.wgsl`: `out ← R·data` for `tokens` rows of f32 `[tokens, n]`: signs and
/// butterflies in place in `data` (which is overwritten), in levels of at most
/// [`ROTATE_LEVEL_STAGES`] butterfly stages whose invocations hold their values in registers
/// (level `L` pairs values `16^L·h` apart, `h < 16`; vec4 loads where the block allows), then
/// the core and the scale into `out` (one invocation per four columns of a row's blocks and, on
/// CPU adapters, as many of its `m` outputs as llvmpipe's loop cap allows, on GPUs one; `m·n`
/// adds per row).
pub struct Rotate;

/// Butterfly stages one level of [`Rotate`] runs (an invocation holds `2^` this many values).
pub const ROTATE_LEVEL_STAGES: u32 = 4;

/// Loop steps one invocation of the core may take (`m` per output; far below llvmpipe's cap).
const CORE_STEPS: usize = 16384;

/// Outputs per column one invocation of the core computes for a core of order `m` on `gpu`: as
/// many as the loop cap allows on CPU adapters (fewer, longer invocations), one on GPUs (a decode
/// step's `36·16` rotation would otherwise be four invocations of 36 outputs each). Each output
/// is the same sum either way.
fn core_rows(gpu: &Gpu, m: usize) -> usize {
    if gpu.caps.cpu { (CORE_STEPS / m.max(1)).clamp(1, m.max(1)) } else { 1 }
}

/// One of the dispatches of [`Rotate`] (see `rotate.wgsl`); `lanes` is 4 where each
/// invocation moves vec4s (four neighbouring columns), else 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RotateStage {
    /// Signs and the butterflies h = 1 … 8 on 16 consecutive values (p ≥ 16).
    LevelFirst,
    /// Butterflies on `width` values (vec4 columns at a stride ≥ 16), or, at stride 1 on a small
    /// block (p < 16), signs and all its butterflies on `width` = p scalars.
    Level { width: usize, lanes: usize },
    /// Core and scale, on four columns (p % 4 = 0) or one per invocation.
    Core { lanes: usize },
}

impl Kernel for RotateStage {
    const SHADER: &'static str = "rotate";
    fn defines(&self) -> Defines {
        let flag = |name: &str| (name.to_string(), String::new());
        let mut defines = match self {
            Self::LevelFirst => BTreeMap::from([flag("LEVEL_FIRST")]),
            Self::Level { width, .. } => {
                BTreeMap::from([flag("LEVEL"), ("WIDTH".to_string(), width.to_string())])
            }
            Self::Core { .. } => BTreeMap::from([flag("CORE")]),
        };
        if self.lanes() == 4 {
            defines.insert("VEC4".to_string(), String::new());
        }
        defines
    }
}

impl RotateStage {
    /// Values each of the stage's loads and stores moves.
    fn lanes(&self) -> usize {
        match self {
            Self::LevelFirst => 4,
            Self::Level { lanes, .. } | Self::Core { lanes } => *lanes,
        }
    }

    /// Whether the stage reads the table (signs or core).
    fn reads_table(&self) -> bool {
        !matches!(self, Self::Level { lanes: 4, .. })
    }

    /// The dispatches of a rotation of `n = m·p` values (`p` a power of two) whose core computes
    /// `core_rows` outputs per invocation, with the stride of each and its work items per row.
    fn plan(n: usize, m: usize, p: usize, core_rows: usize) -> Vec<(RotateStage, usize, usize)> {
        let stages = p.trailing_zeros();
        let per = ROTATE_LEVEL_STAGES;
        let mut plan: Vec<_> = (0..stages.div_ceil(per).max(1))
            .map(|level| {
                let stride = 1usize << (per * level);
                let width = 1usize << stages.saturating_sub(per * level).min(per);
                match (stride, width) {
                    (1, 16) => (RotateStage::LevelFirst, 1, n / 16),
                    (1, _) => (RotateStage::Level { width, lanes: 1 }, 1, n / width),
                    _ => (RotateStage::Level { width, lanes: 4 }, stride, n / (4 * width)),
                }
            })
            .collect();
        let chunks = m.div_ceil(core_rows);
        let lanes = if p.is_multiple_of(4) { 4 } else { 1 };
        plan.push((RotateStage::Core { lanes }, 1, p / lanes * chunks));
        plan
    }
}

impl Rotate {
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        rotation: &RotationTable,
        data: &wgpu::Buffer,
        out: &wgpu::Buffer,
        tokens: usize,
    ) -> Result<()> {
        let bytes = (tokens * rotation.size() * 4) as u64;
        require_size(data, bytes, "rotated rows")?;
        require_size(out, bytes, "rotated rows' output")?;
        check_binding(gpu, "rotated rows", bytes)?;
        distinct(data, out, "a rotation's input and output")?;
        let table = slice(&rotation.table, 0, rotation.table.size());
        let RotateParams { n, m, p, core_rows, .. } = rotation.params;
        let plan = RotateStage::plan(n as usize, m as usize, p as usize, core_rows as usize);
        for (stage, stride, items) in plan {
            let params = RotateParams { tokens: tokens as u32, stride: stride as u32, ..rotation.params };
            // The table holds signs and core: the later butterfly levels read neither.
            let mut resources = vec![slice(data, 0, bytes)];
            if stage.reads_table() {
                resources.push(table.clone());
            }
            if matches!(stage, RotateStage::Core { .. }) {
                resources.push(slice(out, 0, bytes));
            }
            let pipeline = gpu.pipeline(RotateStage::SHADER, &stage.defines()).await?;
            let (gx, gy) = grid(gpu, groups(tokens * items, INVOCATIONS) as u64)?;
            dispatch(gpu, encoder, &pipeline, "rotate", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        }
        Ok(())
    }
}

/// Uniform block of `shaders/quantize.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct QuantizeParams {
    tokens: u32,
    cols: u32,
    words: u32,
    qmax: i32,
    step: f32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<QuantizeParams>() == 32);

/// `shaders/quantize.wgsl`: quantize `tokens` rows of `x` (f32 `[tokens, cols]` from byte
/// `x_offset`) into `q` (u32 `[tokens, activation_words(cols)]`) and `scales` (f32 `[tokens]`),
/// spread over invocations as [`QuantizeLayout::for_gpu`] says (the same bits either way).
pub struct Quantize;

/// How [`Quantize`] spreads a token's row over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizeLayout {
    /// One invocation per token, walking its row: no workgroup memory, no barriers.
    PerToken,
    /// One 64-invocation workgroup per token: strided maxima reduced in workgroup memory (one
    /// barrier; through subgroups where the device has them), then every invocation packs every
    /// 64th word.
    Workgroup,
}

impl QuantizeLayout {
    /// The faster layout on `gpu`: per token on CPU adapters, whose barriers are slow; a
    /// workgroup per token on GPUs, where one invocation walking a decode step's only row
    /// would leave the device idle.
    pub fn for_gpu(gpu: &Gpu) -> Self {
        if gpu.caps.cpu { Self::PerToken } else { Self::Workgroup }
    }
}

impl Kernel for QuantizeLayout {
    const SHADER: &'static str = "quantize";
    fn defines(&self) -> Defines {
        match self {
            Self::PerToken => Defines::new(),
            Self::Workgroup => BTreeMap::from([("WORKGROUP".to_string(), String::new())]),
        }
    }
}

impl Quantize {
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        act: &ActivationQuant,
        x: (&wgpu::Buffer, u64),
        tokens: usize,
        cols: usize,
        q: &wgpu::Buffer,
        scales: &wgpu::Buffer,
    ) -> Result<()> {
        let stride = activation_words(cols);
        self.encode_strided(gpu, encoder, act, x, tokens, cols, (q, stride), scales).await
    }

    /// [`Quantize::encode`] with `q.1` words per row: at least `⌈cols/4⌉` for INT8 activations
    /// (the latent cache's rows, `r` bytes each when `4 | r`), [`activation_words`] for INT4.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_strided(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        act: &ActivationQuant,
        x: (&wgpu::Buffer, u64),
        tokens: usize,
        cols: usize,
        q: (&wgpu::Buffer, usize),
        scales: &wgpu::Buffer,
    ) -> Result<()> {
        let (q, words) = q;
        let least = if act.bits() == Bits::Int8 { cols.div_ceil(4) } else { activation_words(cols) };
        if words < least {
            return Err(RuntimeError::Shape(format!("{words} activation words per row for {cols} columns")));
        }
        let (x_bytes, q_bytes, s_bytes) =
            ((tokens * cols * 4) as u64, (tokens * words * 4) as u64, tokens as u64 * 4);
        require_size(x.0, x.1 + x_bytes, "quantized activations' input")?;
        require_size(q, q_bytes, "activation integers")?;
        require_size(scales, s_bytes, "activation scales")?;
        for (what, bytes) in [("activation input", x_bytes), ("activation integers", q_bytes)] {
            check_binding(gpu, what, bytes)?;
        }
        distinct(x.0, q, "activation input and integers")?;
        distinct(x.0, scales, "activation input and scales")?;
        let layout = QuantizeLayout::for_gpu(gpu);
        let defines = match layout {
            QuantizeLayout::PerToken => layout.defines(),
            QuantizeLayout::Workgroup => with_subgroups(gpu, layout.defines()),
        };
        let pipeline = gpu.pipeline(QuantizeLayout::SHADER, &defines).await?;
        let params = QuantizeParams {
            tokens: tokens as u32,
            cols: cols as u32,
            words: words as u32,
            qmax: act.bits().qmax(),
            step: act.step(),
            _pad: [0; 3],
        };
        let resources = vec![slice(x.0, x.1, x_bytes), slice(q, 0, q_bytes), slice(scales, 0, s_bytes)];
        let workgroups = match layout {
            QuantizeLayout::PerToken => groups(tokens, INVOCATIONS),
            QuantizeLayout::Workgroup => tokens as u32,
        };
        let (gx, gy) = grid(gpu, workgroups as u64)?;
        dispatch(gpu, encoder, &pipeline, "quantize", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        Ok(())
    }
}

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

/// The packed weights of a quantized layer on the GPU: integers `[out, cols]` (`i8` or `i4`,
/// in column [`tile`]s, in panels), their scales (`[out]` or `[out, cols / group]`, `f32`
/// or `f16`, row-major as stored) and the input columns per scale.
///
/// Layers that read one input may share the buffers ([`QuantWeightsGpu::stack`]): each is then a
/// view of its columns (from [`QuantWeightsGpu::first`] on) of the stacked weight, bound at
/// their offset, and one product can write all of them ([`QMatmul::encode_parts`]).
pub struct QuantWeightsGpu {
    /// `[out, cols]` as stored (this layer's).
    pub shape: Vec<usize>,
    /// `i8` or `i4`, as stored.
    pub encoding: Encoding,
    /// The integers in column [`tile`]s (perhaps shared with the layers stacked with it).
    words: TiledWords,
    /// The scales; `shape` and `encoding` as stored (this layer's), the buffer perhaps shared.
    pub scales: Tensor,
    pub group: usize,
    /// Columns per panel: a multiple of 4, all of them (rounded up to 4) when one storage
    /// binding holds the weight.
    pub panel: usize,
    layout: WeightLayout,
    /// This layer's first column in the buffers (0 unless stacked after others).
    first: usize,
}

/// Where a quantized weight's [`tile`]d words live. On CPU adapters
/// ([`crate::Capabilities::weight_textures`]) they go into a texture, 16 bytes a texel
/// ([`TEXTURE_WIDTH`] a row, texel `t` the 16-byte word `t`), elsewhere into a storage buffer;
/// the integers and the products' bits are the same either way. Lavapipe (Mesa 22's llvmpipe)
/// loads a storage buffer one SIMD lane and one 32-bit component at a time, each behind its own
/// bounds check, but fetches texels with vector gathers: the one-token product over weights
/// streamed from memory runs 1.1–1.4× faster from a texture there, and 1.1× in Chromium's
/// SwiftShader (BENCHMARKS.md, Speed XI). A weight larger than a texture holds stays in a buffer.
#[derive(Clone, Debug)]
pub enum TiledWords {
    Buffer(DeviceBuffer),
    Texture(DeviceTexture),
}

/// Texels per row of a [`TiledWords::Texture`]: a power of two; a weight of up to 128 MiB fits
/// WebGPU's 8192 rows, and the last row's padding costs less than 16 KiB (a weight of fewer
/// texels takes one row just as wide as it needs, rounded up to 16 texels:
/// [`Gpu::words_texture`]).
pub const TEXTURE_WIDTH: u32 = 1024;

impl TiledWords {
    /// The words `words` as `gpu` reads them fastest ([`TiledWords`]; a buffer for words more
    /// than a texture holds).
    async fn upload(gpu: &Gpu, label: &str, words: &[u32]) -> Result<Self> {
        let fits = gpu.words_texture_extent(words.len().div_ceil(4), TEXTURE_WIDTH).is_some();
        if gpu.caps.weight_textures && fits {
            return Ok(Self::Texture(gpu.words_texture(label, words, TEXTURE_WIDTH).await?));
        }
        Ok(Self::Buffer(gpu.storage_buffer(label, bytemuck::cast_slice(words)).await?))
    }

    fn same(&self, other: &TiledWords) -> bool {
        match (self, other) {
            (Self::Buffer(a), Self::Buffer(b)) => **a == **b,
            (Self::Texture(a), Self::Texture(b)) => a.view == b.view,
            _ => false,
        }
    }
}

/// The defines of a kernel reading a weight's [`TiledWords::Texture`] (`lib/tiles.wgsl`).
pub(super) fn texture_defines() -> Defines {
    BTreeMap::from([
        ("WEIGHT_TEXTURE".to_string(), String::new()),
        ("TEXTURE_WIDTH".to_string(), TEXTURE_WIDTH.to_string()),
    ])
}

/// The narrowest column [`WeightLayout`] pads (words): the padding then costs at most 3/32 of
/// the weight's bytes (at the demo model's ranks, 317–382 values, at most 1 %); narrower columns
/// (the tiny test models') stay as stored and are read one word at a time.
pub const PAD_FROM_WORDS: usize = 32;

/// How a quantized weight's columns are packed on the GPU: words per column, scale groups per
/// column, words per group and bytes of scales per column. A column with one scale (per channel)
/// of at least [`PAD_FROM_WORDS`] words is padded with zero words to a multiple of four words, so
/// the products can read it four words at a time whatever its width (e.g. the up-projections of
/// a latent of rank 330: 83 words, 84 on the GPU); a zero weight word adds nothing to any integer
/// sum, so the products' bits do not change. (The contract's scale groups, 64 or 128 columns,
/// are whole groups of four words already.)
#[derive(Clone, Copy, Debug)]
pub struct WeightLayout {
    /// Words per column on the GPU (`stored` padded, per channel).
    ww: usize,
    /// Words per column as the format stores them.
    stored: usize,
    groups_per_row: usize,
    group_words: usize,
    scale_row: u64,
}

impl WeightLayout {
    /// The layout of columns of `cols` integers in `encoding` (`i8` or `i4`) with one scale in
    /// `scale_encoding` per `group` of them (all `cols` when `None`); a group must divide `cols`
    /// and fill whole 32-bit words.
    pub fn new(
        cols: usize,
        encoding: Encoding,
        group: Option<usize>,
        scale_encoding: Encoding,
    ) -> Result<Self> {
        let bad = |reason: String| RuntimeError::UnsupportedModel(reason);
        let bits = encoding
            .packed_bits()
            .ok_or_else(|| bad(format!("a quantized weight is i8 or i4, not {}", encoding.tag())))?;
        let size = group.unwrap_or(cols);
        if size == 0
            || !cols.is_multiple_of(size)
            || (group.is_some() && !(size * bits.bits() as usize).is_multiple_of(32))
        {
            return Err(bad(format!("group of {size} columns for {cols} {}-bit columns", bits.bits())));
        }
        let stored = encoding.byte_len(&[1, cols]) / 4;
        let groups_per_row = cols / size;
        let ww =
            if groups_per_row == 1 && stored >= PAD_FROM_WORDS { stored.next_multiple_of(4) } else { stored };
        Ok(Self {
            ww,
            stored,
            groups_per_row,
            group_words: if groups_per_row == 1 { ww } else { size * bits.bits() as usize / 32 },
            scale_row: scale_encoding.byte_len(&[groups_per_row]) as u64,
        })
    }
}

impl QuantWeightsGpu {
    /// Check packed `rows` (`shape` `[out, cols]` in `encoding`, as the format stores them) and
    /// `scales` against each other, then upload the integers in column [`tile`]s, in panels that
    /// each fit one storage binding.
    pub async fn upload(
        gpu: &Gpu,
        label: &str,
        shape: Vec<usize>,
        encoding: Encoding,
        rows: &[u8],
        scales: Tensor,
        group: Option<usize>,
    ) -> Result<Self> {
        let bad = |reason: String| RuntimeError::UnsupportedModel(reason);
        let [out, cols] = shape[..] else {
            return Err(bad(format!("a quantized weight is 2-D, shape {shape:?}")));
        };
        let layout = WeightLayout::new(cols, encoding, group, scales.encoding)?;
        let want = match group {
            Some(_) => vec![out, layout.groups_per_row],
            None => vec![out],
        };
        if scales.shape != want || !matches!(scales.encoding, Encoding::F32 | Encoding::F16) {
            return Err(bad(format!(
                "weight scales {:?} in {} (expected {want:?} in f32 or f16)",
                scales.shape,
                scales.encoding.tag()
            )));
        }
        if out == 0 || rows.len() != encoding.byte_len(&shape) {
            return Err(RuntimeError::Shape(format!(
                "{label}: {} bytes for a {} weight of shape {shape:?}",
                rows.len(),
                encoding.tag()
            )));
        }
        let panel = panel_width(gpu, label, out, layout.ww, layout.scale_row)?;
        let words =
            TiledWords::upload(gpu, label, &tile(rows, out, (layout.stored, layout.ww), panel)).await?;
        let group = group.unwrap_or(cols);
        Ok(Self { shape, encoding, words, scales, group, panel, layout, first: 0 })
    }

    /// Whether layers of `outs` columns each, stacked in this order into one weight packed as
    /// `layout`, can be views of it: the whole fits one binding, and every layer starts on a tile
    /// boundary (so its columns are tiled exactly as alone) at offsets a binding may start at.
    pub fn stackable(gpu: &Gpu, outs: &[usize], layout: &WeightLayout) -> bool {
        let (ww, scale_row) = (layout.ww as u64, layout.scale_row);
        let total: usize = outs.iter().sum();
        let align = u64::from(gpu.caps.storage_offset_alignment.max(4));
        let limit = gpu.caps.max_storage_binding;
        let fits = total.next_multiple_of(4) as u64 * ww * 4 <= limit && total as u64 * scale_row <= limit;
        let mut first = 0u64;
        let aligned = outs.iter().all(|&out| {
            let ok = first.is_multiple_of(4 * TILE_QUADS as u64)
                && (first * ww * 4).is_multiple_of(align)
                && (first * scale_row).is_multiple_of(align);
            first += out as u64;
            ok
        });
        outs.len() > 1 && fits && aligned
    }

    /// Split a weight uploaded as the layers of `outs` columns each, stacked, into one view per
    /// layer ([`QuantWeightsGpu::stackable`] must hold).
    pub fn stack(self, outs: &[usize]) -> Result<Vec<QuantWeightsGpu>> {
        if outs.iter().sum::<usize>() != self.out() || self.panel < self.out() {
            return Err(RuntimeError::Shape(format!(
                "layers of {outs:?} columns stacked as a [{}, {}] weight in panels of {}",
                self.out(),
                self.cols(),
                self.panel
            )));
        }
        let mut first = 0;
        let mut views = Vec::with_capacity(outs.len());
        for &out in outs {
            views.push(self.view(first, out));
            first += out;
        }
        Ok(views)
    }

    /// The columns `first .. first + out` of this weight's buffers as a weight of its own.
    fn view(&self, first: usize, out: usize) -> QuantWeightsGpu {
        let mut scale_shape = self.scales.shape.clone();
        scale_shape[0] = out;
        QuantWeightsGpu {
            shape: vec![out, self.cols()],
            encoding: self.encoding,
            words: self.words.clone(),
            scales: Tensor { shape: scale_shape, ..self.scales.clone() },
            group: self.group,
            panel: self.panel,
            layout: self.layout,
            first,
        }
    }

    /// One view of consecutive stacked layers' columns together (`layers` in stacking order,
    /// [`QuantWeightsGpu::followed_by`] each the next).
    fn spanning<'a>(mut layers: impl Iterator<Item = &'a QuantWeightsGpu>) -> Result<QuantWeightsGpu> {
        let first = layers.next().ok_or_else(|| RuntimeError::Shape("no stacked layers".into()))?;
        let mut out = first.out();
        let mut last = first;
        for next in layers {
            if !last.followed_by(next) {
                return Err(RuntimeError::Shape("layers written together must be stacked in order".into()));
            }
            out += next.out();
            last = next;
        }
        Ok(first.view(first.first, out))
    }

    /// This layer's first column in the buffers it may share with layers stacked before it.
    pub fn first(&self) -> usize {
        self.first
    }

    /// Whether `next` is the layer stacked right after this one, in the same buffers.
    pub fn followed_by(&self, next: &QuantWeightsGpu) -> bool {
        self.words.same(&next.words) && next.first == self.first + self.out()
    }

    /// The binding of this layer's columns `c0 .. c0 + nc` (one panel) of the tiled integers,
    /// and the texel of their first word in a texture (bound whole; 0 for a buffer, bound from
    /// there).
    pub(super) fn weight_binding(&self, c0: usize, nc: usize) -> (wgpu::BindingResource<'_>, u32) {
        let ww = self.layout.ww as u64 * 4;
        let start = (self.first + c0) as u64 * ww;
        match &self.words {
            TiledWords::Buffer(b) => (slice(b, start, nc.next_multiple_of(4) as u64 * ww), 0),
            TiledWords::Texture(t) => (wgpu::BindingResource::TextureView(&t.view), (start / 16) as u32),
        }
    }

    /// Whether the tiled integers are a texture ([`TiledWords`]).
    pub fn in_texture(&self) -> bool {
        matches!(self.words, TiledWords::Texture(_))
    }

    /// The storage buffer holding the tiled integers, if they are in one.
    fn buffer(&self) -> Option<&wgpu::Buffer> {
        match &self.words {
            TiledWords::Buffer(b) => Some(b),
            TiledWords::Texture(_) => None,
        }
    }

    /// The binding of the scales of this layer's columns `c0 .. c0 + nc`.
    pub(super) fn scale_binding(&self, c0: usize, nc: usize) -> wgpu::BindingResource<'_> {
        let row = self.layout.scale_row;
        slice(&self.scales.buffer, (self.first + c0) as u64 * row, (nc as u64 * row).next_multiple_of(4))
    }

    /// Packed words per column (row of the stored `[out, cols]` weight).
    pub fn words_per_column(&self) -> usize {
        self.layout.ww
    }

    pub fn bits(&self) -> Bits {
        self.encoding.packed_bits().unwrap_or(Bits::Int8)
    }

    pub fn out(&self) -> usize {
        self.shape[0]
    }

    pub fn cols(&self) -> usize {
        self.shape[1]
    }

    /// Bytes of this layer on the GPU (the tiled integers with their padding columns, and the
    /// scales).
    pub fn bytes(&self) -> u64 {
        (self.out().next_multiple_of(4) * self.layout.ww * 4) as u64 + self.scales.bytes()
    }

    /// Bytes of the buffer or texture holding the tiled integers (shared with the layers stacked
    /// with this one; a texture's last row padded).
    pub fn storage_bytes(&self) -> u64 {
        match &self.words {
            TiledWords::Buffer(b) => b.size(),
            TiledWords::Texture(t) => t.bytes,
        }
    }

    /// The panels: `(first column, columns)` each.
    pub fn panels(&self) -> impl Iterator<Item = (usize, usize)> {
        chunks(self.out(), self.panel)
    }
}

/// Column quads (four columns, one 16-byte word each) per tile of [`tile`]'s layout: 128 bytes of
/// one word of 32 columns, a CPU adapter's 8 SIMD lanes (256-bit vectors) or a quarter of a
/// 32-lane GPU subgroup, each lane loading 16 bytes.
pub const TILE_QUADS: usize = 8;

/// A packed weight's words in column tiles, in panels: `rows` holds `n` rows of `stored`
/// little-endian words (the format's layout), each column padded with zero words to `ww`
/// (`ww ≥ stored`). Panel `p` holds columns `c0 = p·panel .. c0 + nc`
/// (their words from `c0·ww` on) as `nc` rounded up to 4 columns (zero padding columns) in
/// quads; quad `q` of the panel and its neighbours up to [`TILE_QUADS`] form a tile, stored word
/// by word: word `k` of column `c` of quad `q` lies at `first·4·ww + (k·step + q − first)·4 +
/// c mod 4`, `first` the tile's first quad and `step` its quads (the last tile may hold fewer).
/// So one 16-byte load reads one word of four neighbouring columns, neighbouring quads' word `k`
/// lie side by side, and a tile read word after word is one contiguous stream
/// (`shaders/lib/tiles.wgsl`). `panel` is a multiple of 4 (or at least `n`); `rows` holds
/// `n·stored` words.
pub fn tile(rows: &[u8], n: usize, (stored, ww): (usize, usize), panel: usize) -> Vec<u32> {
    let mut out = vec![0u32; n.next_multiple_of(4) * ww];
    for (c0, nc) in chunks(n, panel) {
        let quads = nc.div_ceil(4);
        for c in c0..c0 + nc {
            let q = (c - c0) / 4;
            let first = q - q % TILE_QUADS;
            let step = TILE_QUADS.min(quads - first);
            let start = c0 * ww + first * 4 * ww + (q - first) * 4 + (c - c0) % 4;
            let column = rows[c * stored * 4..(c + 1) * stored * 4].chunks_exact(4);
            for (k, b) in column.enumerate() {
                out[start + k * step * 4] = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
    out
}

/// Columns per panel of an `[out, ww words]` weight whose scales take `scale_row` bytes per
/// column: all of them (rounded up to 4) when one storage binding holds them, else the most that
/// fit one binding, a multiple of 4 with every panel's offset aligned for binding.
fn panel_width(gpu: &Gpu, what: &str, out: usize, ww: usize, scale_row: u64) -> Result<usize> {
    let padded = out.next_multiple_of(4);
    let chunk =
        rows_per_chunk(gpu, &format!("the quantized weight {what}"), padded, &[ww as u64 * 4, scale_row])?;
    if chunk >= padded {
        return Ok(padded);
    }
    // `chunk` is a multiple of a power-of-two alignment step; so is a multiple of 4 below it.
    match chunk / 4 * 4 {
        0 => Err(RuntimeError::BindingTooLarge {
            what: format!("four columns of the quantized weight {what}"),
            bytes: 4 * ww as u64 * 4,
            limit: gpu.caps.max_storage_binding,
        }),
        panel => Ok(panel),
    }
}

/// `shaders/qmatmul.wgsl`: `y = dequant(W q_a)` for `tokens` quantized activation rows, four
/// output columns of the [`tile`]d weight per invocation for one token (GEMV) or four —
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
    /// The weight's words are a texture ([`TiledWords`]).
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
/// The stride is [`activation_words`] of the layer's columns, or (INT8 activations, e.g. the
/// latent cache) as little as `⌈cols/4⌉`: the last activation words a product reads for a row
/// (up to [`activation_words`]) may then be the next row's first (or words past the last row,
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
