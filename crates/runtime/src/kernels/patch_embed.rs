//! SigLIP's patch embedding: `Conv2d(C, D, kernel = stride = P)` with bias on every tile, plus
//! the learned position embedding (position ids `0..N²` for full tiles).
//!
//! `out[t, py·N + px, o] = bias[o] + Σ_{c, ky, kx} w[o, c, ky, kx] · pixels[t, c, py·P + ky,
//! px·P + kx] + pos[py·N + px, o]` with `N = ⌊S / P⌋`: as transformers' `Conv2d` (stride P,
//! no padding) the grid floors when P does not divide S (SmolVLM-Instruct: 384-px tiles, patch
//! 14, 27×27 patches), and the last `S − N·P` pixel rows and columns are never read.
//!
//! Buffers (row-major f32): `pixels` `[tiles, C, S, S]`, `weight` `[D, C, P, P]` (PyTorch's
//! layout), `bias` `[D]`, `position` `[N², D]`, `out` `[tiles, N², D]`.
//!
//! Implemented as an im2col kernel (`shaders/im2col.wgsl`: patches to rows of a scratch buffer
//! `[tiles·N², C·P²]`, whose column order matches the weight's) followed by the tiled
//! [`Matmul`] with bias and a broadcasting [`Add`] of the position embedding.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};

use super::Kernel;
use super::elementwise::Add;
use super::matmul::{Matmul, MatmulShape};
use super::util::{WORKGROUP, chunks, dispatch, distinct, grid, require_size, rows_per_chunk, slice};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/im2col.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    n: u32,
    channels: u32,
    size: u32,
    patch_size: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// Shapes of one patch embedding.
#[derive(Clone, Copy, Debug)]
pub struct PatchEmbedShape {
    pub tiles: usize,
    pub channels: usize,
    /// Tile side `S` in pixels (at least `patch`; need not be a multiple of it).
    pub image_size: usize,
    /// Patch side `P`.
    pub patch: usize,
    /// Embedding width `D`.
    pub hidden: usize,
}

impl PatchEmbedShape {
    /// Patches per side, `N = ⌊S / P⌋`.
    pub fn side(&self) -> usize {
        self.image_size / self.patch
    }
    /// Patches per tile, `N²`.
    pub fn patches(&self) -> usize {
        self.side() * self.side()
    }
}

/// The patch embedding (im2col + matmul + position add).
#[derive(Clone, Copy, Debug, Default)]
pub struct PatchEmbed;

impl Kernel for PatchEmbed {
    const SHADER: &'static str = "im2col";
    fn defines(&self) -> Defines {
        BTreeMap::new()
    }
}

impl PatchEmbed {
    /// Record the patch embedding of `pixels` into `out`. A scratch buffer of
    /// `tiles·N²·C·P²` f32 is allocated for the patch rows.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: PatchEmbedShape,
        pixels: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        position: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let PatchEmbedShape { tiles, channels, image_size, patch, hidden } = shape;
        if tiles == 0 || channels == 0 || patch == 0 || hidden == 0 || image_size < patch {
            return Err(RuntimeError::Shape(format!("patch embedding {shape:?}")));
        }
        let patches = shape.patches();
        let width = channels * patch * patch;
        let tile_bytes = (channels * image_size * image_size * 4) as u64;
        let cols_tile_bytes = (patches * width * 4) as u64;
        if (tiles as u64) * cols_tile_bytes / 4 > u64::from(u32::MAX)
            || (tiles as u64) * tile_bytes / 4 > u64::from(u32::MAX)
        {
            return Err(RuntimeError::Shape(format!("patch embedding {shape:?} is too large")));
        }
        require_size(pixels, tiles as u64 * tile_bytes, "patch embedding pixels")?;
        require_size(weight, (hidden * width * 4) as u64, "patch embedding weight")?;
        require_size(bias, (hidden * 4) as u64, "patch embedding bias")?;
        require_size(position, (patches * hidden * 4) as u64, "position embedding")?;
        require_size(out, (tiles * patches * hidden * 4) as u64, "patch embedding output")?;
        distinct(position, out, "position embedding and output")?;

        let cols = gpu.zeroed_buffer("im2col", tiles as u64 * cols_tile_bytes).await?;
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let chunk = rows_per_chunk(gpu, "the pixel tiles", tiles, &[tile_bytes, cols_tile_bytes])?;
        for (t0, nt) in chunks(tiles, chunk) {
            let n = nt * patches * width;
            let params = Params {
                n: n as u32,
                channels: channels as u32,
                size: image_size as u32,
                patch_size: patch as u32,
            };
            let resources = vec![
                slice(pixels, t0 as u64 * tile_bytes, nt as u64 * tile_bytes),
                slice(&cols, t0 as u64 * cols_tile_bytes, nt as u64 * cols_tile_bytes),
            ];
            let (gx, gy) = grid(gpu, (n as u64).div_ceil(u64::from(WORKGROUP)))?;
            dispatch(gpu, encoder, &pipeline, "im2col", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        }
        let mm = MatmulShape { m: tiles * patches, n: hidden, k: width };
        Matmul::f32(true).encode(gpu, encoder, mm, &cols, weight, Some(bias), out).await?;
        Add.encode(gpu, encoder, tiles * patches * hidden, patches * hidden, out, position).await
    }
}

/// CPU reference of [`PatchEmbed`] written from the conv definition (f64 sums), for tests.
pub fn patch_embed_reference(
    pixels: &[f32],
    weight: &[f32],
    bias: &[f32],
    position: &[f32],
    shape: PatchEmbedShape,
) -> Vec<f32> {
    let PatchEmbedShape { tiles, channels, image_size: s, patch: p, hidden } = shape;
    let side = shape.side();
    let mut out = vec![0f32; tiles * side * side * hidden];
    for t in 0..tiles {
        for py in 0..side {
            for px in 0..side {
                let token = py * side + px;
                for o in 0..hidden {
                    let mut acc = f64::from(bias[o]);
                    for c in 0..channels {
                        for ky in 0..p {
                            for kx in 0..p {
                                let w = weight[((o * channels + c) * p + ky) * p + kx];
                                let x = pixels[((t * channels + c) * s + py * p + ky) * s + px * p + kx];
                                acc += f64::from(w) * f64::from(x);
                            }
                        }
                    }
                    // The conv (with bias) is rounded to f32 before the position embedding is added.
                    out[(t * side * side + token) * hidden + o] = acc as f32 + position[token * hidden + o];
                }
            }
        }
    }
    out
}
