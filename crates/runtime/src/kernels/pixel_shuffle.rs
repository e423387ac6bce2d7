//! The Idefics3 connector's pixel shuffle (the reshape before its `modality_projection`).
//!
//! Input `x` f32 `[tiles, W·W, D]` (patch index `py·W + px`), scale `s` dividing `W`; output `y`
//! f32 `[tiles, (W/s)², s²·D]` with
//! `y[t, I·(W/s) + J, dy·s·D + dx·D + d] = x[t, (I·s + dy)·W + (J·s + dx), d]`,
//! which is what `Idefics3Connector.pixel_shuffle` computes (checked against transformers' own
//! view/permute/reshape sequence).

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};

use super::Kernel;
use super::util::{WORKGROUP, chunks, dispatch, distinct, grid, require_size, rows_per_chunk, slice};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/pixel_shuffle.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    n: u32,
    side: u32,
    d: u32,
    scale: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// Shapes of one pixel shuffle.
#[derive(Clone, Copy, Debug)]
pub struct PixelShuffleShape {
    pub tiles: usize,
    /// Patches per side `W` (the input has `W²` patches per tile).
    pub side: usize,
    /// Features per patch `D`.
    pub d: usize,
    /// Scale factor `s` (divides `W`).
    pub scale: usize,
}

/// The pixel-shuffle kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct PixelShuffle;

impl Kernel for PixelShuffle {
    const SHADER: &'static str = "pixel_shuffle";
    fn defines(&self) -> Defines {
        BTreeMap::new()
    }
}

impl PixelShuffle {
    /// Record `y = pixel_shuffle(x)`.
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: PixelShuffleShape,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let PixelShuffleShape { tiles, side, d, scale } = shape;
        if tiles == 0 || side == 0 || d == 0 || scale == 0 || side % scale != 0 {
            return Err(RuntimeError::Shape(format!("pixel shuffle {shape:?}")));
        }
        let tile_bytes = (side * side * d * 4) as u64;
        if tiles as u64 * tile_bytes / 4 > u64::from(u32::MAX) {
            return Err(RuntimeError::Shape(format!("pixel shuffle {shape:?} is too large")));
        }
        require_size(x, tiles as u64 * tile_bytes, "pixel shuffle input")?;
        require_size(y, tiles as u64 * tile_bytes, "pixel shuffle output")?;
        distinct(x, y, "pixel shuffle input and output")?;
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let chunk = rows_per_chunk(gpu, "the pixel shuffle's tiles", tiles, &[tile_bytes])?;
        for (t0, nt) in chunks(tiles, chunk) {
            let n = nt * side * side * d;
            let params = Params { n: n as u32, side: side as u32, d: d as u32, scale: scale as u32 };
            let (off, size) = (t0 as u64 * tile_bytes, nt as u64 * tile_bytes);
            let resources = vec![slice(x, off, size), slice(y, off, size)];
            let (gx, gy) = grid(gpu, (n as u64).div_ceil(u64::from(WORKGROUP)))?;
            dispatch(
                gpu,
                encoder,
                &pipeline,
                "pixel_shuffle",
                bytemuck::bytes_of(&params),
                resources,
                (gx, gy, 1),
            );
        }
        Ok(())
    }
}

/// CPU reference of [`PixelShuffle`], written as the formula above, for tests.
pub fn pixel_shuffle_reference(x: &[f32], shape: PixelShuffleShape) -> Vec<f32> {
    let PixelShuffleShape { tiles, side: w, d, scale: s } = shape;
    let ws = w / s;
    let width = s * s * d;
    let mut y = vec![0f32; tiles * w * w * d];
    for t in 0..tiles {
        for i in 0..ws {
            for j in 0..ws {
                for dy in 0..s {
                    for dx in 0..s {
                        for f in 0..d {
                            let src = (t * w * w + (i * s + dy) * w + (j * s + dx)) * d + f;
                            let dst = (t * ws * ws + i * ws + j) * width + dy * s * d + dx * d + f;
                            y[dst] = x[src];
                        }
                    }
                }
            }
        }
    }
    y
}
