//! A quantized layer's weights on the GPU ([`QuantWeightsGpu`]): the stored integers in column
//! [`tile`]s and panels ([`WeightLayout`]), in a storage buffer or a texture ([`TiledWords`]),
//! and their scales as stored.

use std::collections::BTreeMap;

use pocketvlm_format::Encoding;
use pocketvlm_format::quant::Bits;

use crate::device::Gpu;
use crate::error::{Result, RuntimeError};
use crate::kernels::util::{chunks, rows_per_chunk, slice};
use crate::memory::{DeviceBuffer, DeviceTexture};
use crate::shader::Defines;
use crate::tensor::Tensor;

/// The packed weights of a quantized layer on the GPU: integers `[out, cols]` (`i8` or `i4`,
/// in column [`tile`]s, in panels), their scales (`[out]` or `[out, cols / group]`, `f32`
/// or `f16`, row-major as stored) and the input columns per scale.
///
/// Layers that read one input may share the buffers ([`QuantWeightsGpu::stack`]): each is then a
/// view of its columns (from [`QuantWeightsGpu::first`] on) of the stacked weight, bound at
/// their offset, and one product can write all of them ([`QMatmul::encode_parts`](super::QMatmul::encode_parts)).
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
    pub(super) layout: WeightLayout,
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
pub(in crate::kernels) fn texture_defines() -> Defines {
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
    pub(super) ww: usize,
    /// Words per column as the format stores them.
    stored: usize,
    pub(super) groups_per_row: usize,
    pub(super) group_words: usize,
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
    pub(super) fn spanning<'a>(
        mut layers: impl Iterator<Item = &'a QuantWeightsGpu>,
    ) -> Result<QuantWeightsGpu> {
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
    pub(in crate::kernels) fn weight_binding(
        &self,
        c0: usize,
        nc: usize,
    ) -> (wgpu::BindingResource<'_>, u32) {
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
    pub(super) fn buffer(&self) -> Option<&wgpu::Buffer> {
        match &self.words {
            TiledWords::Buffer(b) => Some(b),
            TiledWords::Texture(_) => None,
        }
    }

    /// The binding of the scales of this layer's columns `c0 .. c0 + nc`.
    pub(in crate::kernels) fn scale_binding(&self, c0: usize, nc: usize) -> wgpu::BindingResource<'_> {
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
