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

use super::Kernel;
use super::util::{check_binding, chunks, dispatch, distinct, grid, require_size, rows_per_chunk, slice};
use crate::device::Gpu;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

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

/// The embedding kernel; `image` selects the variant with the image scatter.
#[derive(Clone, Copy, Debug)]
pub struct Embed {
    pub image: bool,
}

impl Kernel for Embed {
    const SHADER: &'static str = "embed";
    fn defines(&self) -> Defines {
        let mut d = BTreeMap::new();
        if self.image {
            d.insert("IMAGE".to_string(), String::new());
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
        encoder: &mut wgpu::CommandEncoder,
        shape: EmbedShape,
        ids: &wgpu::Buffer,
        table: &wgpu::Buffer,
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
        let row_bytes = (d * 4) as u64;
        let out_bytes = tokens as u64 * row_bytes;
        if out_bytes / 4 > u64::from(u32::MAX) {
            return Err(RuntimeError::Shape(format!("embedding {shape:?} is too large")));
        }
        require_size(ids, (tokens * 4) as u64, "token ids")?;
        require_size(table, vocab as u64 * row_bytes, "embedding table")?;
        require_size(out, out_bytes, "embedding output")?;
        check_binding(gpu, "token ids", (tokens * 4) as u64)?;
        check_binding(gpu, "embedding output", out_bytes)?;
        for (buffer, what) in [(ids, "token ids"), (table, "embedding table")] {
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
        let pipeline = gpu.pipelines.get(gpu, Self::SHADER, &self.defines()).await?;
        let chunk = rows_per_chunk(gpu, "the embedding table", vocab, &[row_bytes])?;
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
                slice(table, r0 as u64 * row_bytes, nr as u64 * row_bytes),
                slice(out, 0, out_bytes),
            ];
            if let Some((features, bytes)) = image_binding {
                resources.push(slice(features, 0, bytes));
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
