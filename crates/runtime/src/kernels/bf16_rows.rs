//! Rows of f32 values kept as bf16 (`shaders/bf16_rows.wgsl`): the float latent KV cache.
//!
//! A row of `width` values takes `⌈width/2⌉` u32 words, column `2w` in the low half of word `w`
//! and `2w + 1` in the high half. [`Bf16Rows::pack`] rounds f32 to bf16 to nearest, ties to
//! even (NaN stays a quiet NaN), exactly as `half::bf16::from_f32` — the CPU reference's
//! rounding, bit for bit; [`Bf16Rows::widen`] expands them back to f32, exactly. bf16 keeps f32's
//! exponent range, so no finite value overflows (f16 would turn latents beyond 65 504 into ∞).

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};

use super::util::{check_binding, dispatch, distinct, grid, require_size, slice};
use super::{Kernel, groups};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/bf16_rows.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    words: u32,
    dst_row: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// Invocations per workgroup.
const INVOCATIONS: usize = 64;

/// bf16 rows of `width` values.
#[derive(Clone, Copy, Debug)]
pub struct Bf16Rows {
    pub width: usize,
}

/// One of the two directions.
struct Stage {
    pack: bool,
}

impl Kernel for Stage {
    const SHADER: &'static str = "bf16_rows";
    fn defines(&self) -> Defines {
        if self.pack { BTreeMap::from([("PACK".to_string(), String::new())]) } else { Defines::new() }
    }
}

impl Bf16Rows {
    /// u32 words per row.
    pub fn words(&self) -> usize {
        self.width.div_ceil(2)
    }

    /// Round `rows` rows of `src` (f32 `[rows, width]`) to bf16 into rows `dst_row..dst_row + rows`
    /// of `packed` (u32 `[·, words]`).
    pub async fn pack(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        rows: usize,
        src: &wgpu::Buffer,
        packed: &wgpu::Buffer,
        dst_row: usize,
    ) -> Result<()> {
        let (src_bytes, packed_bytes) = self.sizes(rows, dst_row)?;
        require_size(src, src_bytes, "rows to round to bf16")?;
        require_size(packed, packed_bytes, "bf16 rows")?;
        distinct(src, packed, "bf16 packing's input and output")?;
        let items = rows * self.words();
        self.dispatch(
            gpu,
            encoder,
            Stage { pack: true },
            rows,
            dst_row,
            items,
            [(src, src_bytes), (packed, packed_bytes)],
        )
        .await
    }

    /// Widen rows `0..rows` of `packed` (u32 `[·, words]`) to f32 in `dst` (`[rows, width]`).
    pub async fn widen(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        rows: usize,
        packed: &wgpu::Buffer,
        dst: &wgpu::Buffer,
    ) -> Result<()> {
        let (dst_bytes, packed_bytes) = self.sizes(rows, 0)?;
        require_size(packed, packed_bytes, "bf16 rows")?;
        require_size(dst, dst_bytes, "widened bf16 rows")?;
        distinct(packed, dst, "bf16 widening's input and output")?;
        let items = rows * self.width;
        self.dispatch(
            gpu,
            encoder,
            Stage { pack: false },
            rows,
            0,
            items,
            [(packed, packed_bytes), (dst, dst_bytes)],
        )
        .await
    }

    /// Bytes of `rows` f32 rows and of the packed buffer up to row `dst_row + rows`.
    fn sizes(&self, rows: usize, dst_row: usize) -> Result<(u64, u64)> {
        if rows == 0 || self.width == 0 {
            return Err(RuntimeError::Shape(format!("bf16 rows: {rows} rows of {}", self.width)));
        }
        Ok(((rows * self.width * 4) as u64, ((dst_row + rows) * self.words() * 4) as u64))
    }

    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        stage: Stage,
        rows: usize,
        dst_row: usize,
        items: usize,
        buffers: [(&wgpu::Buffer, u64); 2],
    ) -> Result<()> {
        for (_, bytes) in &buffers {
            check_binding(gpu, "bf16 rows", *bytes)?;
        }
        let params = Params {
            rows: rows as u32,
            width: self.width as u32,
            words: self.words() as u32,
            dst_row: dst_row as u32,
        };
        let pipeline = gpu.pipeline(Stage::SHADER, &stage.defines()).await?;
        let resources = buffers.iter().map(|(b, bytes)| slice(b, 0, *bytes)).collect();
        let (gx, gy) = grid(gpu, groups(items, INVOCATIONS) as u64)?;
        dispatch(gpu, encoder, &pipeline, "bf16 rows", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        Ok(())
    }
}
