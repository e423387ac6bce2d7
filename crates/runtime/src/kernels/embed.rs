//! Token embedding with the image-feature scatter Idefics3 does before its text model.
//!
//! `out[t, :] = table[ids[t], :]`, except that the k-th token (in prompt order, counting from 0)
//! whose id equals the image token id takes `image[k, :]` instead. Ids `≥ vocab`, and image
//! tokens beyond the image-feature rows, produce zero rows (a GPU kernel cannot fail; check ids
//! on the CPU where that matters).
//!
//! Buffers: `ids` u32 `[tokens]`, `table` f32 `[vocab, d]`, `image` f32 `[image_rows, d]`, `out`
//! f32 `[tokens, d]` (all row-major). A table larger than one storage binding (SmolVLM-500M's is
//! 189 MB) is bound in aligned row chunks, one dispatch per chunk.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::Encoding;

use super::Kernel;
use super::util::{check_binding, chunks, dispatch, distinct, grid, require_size, rows_per_chunk, slice};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;
use crate::tensor::Tensor;

/// Uniform block of `shaders/embed.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    tokens: u32,
    d: u32,
    row0: u32,
    rows: u32,
    vocab: u32,
    image_token: u32,
    image_rows: u32,
    first: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

/// Shapes of one embedding lookup.
#[derive(Clone, Copy, Debug)]
pub struct EmbedShape {
    pub tokens: usize,
    pub vocab: usize,
    /// Embedding width.
    pub d: usize,
}

/// Image features to scatter into the image-token positions.
#[derive(Clone, Copy, Debug)]
pub struct ImageFeatures<'a> {
    /// f32 `[rows, d]`.
    pub features: &'a wgpu::Buffer,
    pub rows: usize,
    /// Id of the `<image>` token.
    pub token_id: u32,
}

/// An embedding table on the GPU: `values` `[vocab, d]` in f32, f16 or bf16, or packed `i8` or
/// `i4` with one scale per row in `scales` (`[vocab]`, f32 or f16): the integer contract's quantized
/// table, row `t` read as `f32(q[t][j]) · s[t]`.
pub struct EmbedTable {
    pub values: Tensor,
    pub scales: Option<Tensor>,
}

impl EmbedTable {
    /// Check the table's shape and encodings.
    pub fn new(values: Tensor, scales: Option<Tensor>) -> Result<Self> {
        let [vocab, _] = values.shape[..] else {
            return Err(RuntimeError::Shape(format!("an embedding table is 2-D, shape {:?}", values.shape)));
        };
        let ok = match (&values.encoding, &scales) {
            (Encoding::F32 | Encoding::F16 | Encoding::BF16, None) => true,
            (Encoding::I8 | Encoding::I4, Some(s)) => {
                s.shape == [vocab] && matches!(s.encoding, Encoding::F32 | Encoding::F16)
            }
            _ => false,
        };
        if !ok {
            return Err(RuntimeError::UnsupportedModel(format!(
                "an embedding table in {} with {} (the kernel reads f32, f16 or bf16 tables, or i8 / i4 with one f32 or f16 scale per row)",
                values.encoding.tag(),
                scales.as_ref().map_or("no scales".to_string(), |s| format!(
                    "{} scales {:?}",
                    s.encoding.tag(),
                    s.shape
                )),
            )));
        }
        Ok(Self { values, scales })
    }

    pub fn bytes(&self) -> u64 {
        self.values.bytes() + self.scales.as_ref().map_or(0, |s| s.bytes())
    }
}

/// The embedding kernel; `image` selects the variant with the image scatter, the table's
/// encodings the way it reads rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embed {
    pub image: bool,
    pub table: Encoding,
    pub f16_scales: bool,
}

impl Embed {
    /// The variant for `table`.
    pub fn for_table(table: &EmbedTable, image: bool) -> Self {
        Self {
            image,
            table: table.values.encoding,
            f16_scales: table.scales.as_ref().is_some_and(|s| s.encoding == Encoding::F16),
        }
    }
}

impl Kernel for Embed {
    const SHADER: &'static str = "embed";
    fn defines(&self) -> Defines {
        let mut d = BTreeMap::new();
        if self.image {
            d.insert("IMAGE".to_string(), String::new());
        }
        let table = match self.table {
            Encoding::F16 => "TABLE_F16",
            Encoding::BF16 => "TABLE_BF16",
            Encoding::I8 => "TABLE_I8",
            Encoding::I4 => "TABLE_I4",
            _ => "TABLE_F32",
        };
        d.insert(table.to_string(), String::new());
        if self.table.packed_bits().is_some() {
            d.insert("TABLE_INT".to_string(), String::new());
        }
        // the scales follow the image features when there are any (bindings are consecutive)
        d.insert("SCALE_BINDING".to_string(), if self.image { "5" } else { "4" }.to_string());
        if self.f16_scales {
            d.insert("SCALE_F16".to_string(), String::new());
        }
        d
    }
}

impl Embed {
    /// Record the lookup of `ids` into `out`.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: EmbedShape,
        ids: &wgpu::Buffer,
        table: &EmbedTable,
        image: Option<ImageFeatures<'_>>,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let EmbedShape { tokens, vocab, d } = shape;
        if image.is_some() != self.image {
            return Err(RuntimeError::Shape("image features do not match the kernel variant".into()));
        }
        if tokens == 0 || vocab == 0 || d == 0 || vocab >= u32::MAX as usize {
            return Err(RuntimeError::Shape(format!("embedding {shape:?}")));
        }
        if *self != Self::for_table(table, self.image) {
            return Err(RuntimeError::Shape("the embedding table does not match the kernel variant".into()));
        }
        table.values.expect_shape("embedding table", &[vocab, d])?;
        let row_bytes = (d * 4) as u64;
        let table_row = table.values.row_bytes();
        let scale_row = table.scales.as_ref().map(|s| s.encoding.byte_len(&[1]) as u64);
        let out_bytes = tokens as u64 * row_bytes;
        if out_bytes / 4 > u64::from(u32::MAX) {
            return Err(RuntimeError::Shape(format!("embedding {shape:?} is too large")));
        }
        require_size(ids, (tokens * 4) as u64, "token ids")?;
        require_size(&table.values.buffer, vocab as u64 * table_row, "embedding table")?;
        require_size(out, out_bytes, "embedding output")?;
        check_binding(gpu, "token ids", (tokens * 4) as u64)?;
        check_binding(gpu, "embedding output", out_bytes)?;
        for (buffer, what) in [(ids, "token ids"), (&table.values.buffer, "embedding table")] {
            distinct(buffer, out, &format!("{what} and embedding output"))?;
        }
        let image_binding = match image {
            Some(img) => {
                let rows = img.rows.max(1) as u64;
                require_size(img.features, rows * row_bytes, "image features")?;
                check_binding(gpu, "image features", rows * row_bytes)?;
                distinct(img.features, out, "image features and embedding output")?;
                Some((img.features, rows * row_bytes))
            }
            None => None,
        };
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let row_bytes: Vec<u64> = [Some(table_row), scale_row].into_iter().flatten().collect();
        let chunk = rows_per_chunk(gpu, "the embedding table", vocab, &row_bytes)?;
        let (gx, gy) = grid(gpu, tokens as u64)?;
        for (r0, nr) in chunks(vocab, chunk) {
            let params = Params {
                tokens: tokens as u32,
                d: d as u32,
                row0: r0 as u32,
                rows: nr as u32,
                vocab: vocab as u32,
                image_token: image.map_or(u32::MAX, |i| i.token_id),
                image_rows: image.map_or(0, |i| i.rows as u32),
                first: u32::from(r0 == 0),
            };
            let mut resources = vec![
                slice(ids, 0, (tokens * 4) as u64),
                slice(&table.values.buffer, r0 as u64 * table_row, nr as u64 * table_row),
                slice(out, 0, out_bytes),
            ];
            if let Some((features, bytes)) = image_binding {
                resources.push(slice(features, 0, bytes));
            }
            if let (Some(scales), Some(row)) = (&table.scales, scale_row) {
                resources.push(slice(&scales.buffer, r0 as u64 * row, nr as u64 * row));
            }
            dispatch(gpu, encoder, &pipeline, "embed", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        }
        Ok(())
    }
}

/// CPU reference of [`Embed`], for tests.
pub fn embed_reference(
    ids: &[u32],
    table: &[f32],
    image: Option<(&[f32], u32)>,
    shape: EmbedShape,
) -> Vec<f32> {
    let EmbedShape { tokens, vocab, d } = shape;
    let mut out = vec![0f32; tokens * d];
    let mut k = 0;
    for (t, &id) in ids.iter().enumerate().take(tokens) {
        let row = &mut out[t * d..(t + 1) * d];
        match image {
            Some((features, token_id)) if id == token_id => {
                if (k + 1) * d <= features.len() {
                    row.copy_from_slice(&features[k * d..(k + 1) * d]);
                }
                k += 1;
            }
            _ if (id as usize) < vocab => row.copy_from_slice(&table[id as usize * d..(id as usize + 1) * d]),
            _ => {}
        }
    }
    out
}
