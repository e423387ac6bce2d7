//! Row-wise argmax on the GPU, so greedy decoding reads back 4 bytes instead of the vocabulary.
//!
//! `idx[r] = min { i : x[r, i] = max_j x[r, j] }` — `torch.argmax` semantics: the first index on
//! ties, and NaN counts as larger than every number (the first NaN wins).
//!
//! Buffers: `x` f32 `[rows, n]` row-major, `idx` u32 `[rows]`. One 256-invocation workgroup per
//! row reduces in workgroup memory.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};

use super::Kernel;
use super::util::{check_binding, dispatch, distinct, grid, require_size, slice, with_subgroups};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/argmax.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// The argmax kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Argmax;

impl Kernel for Argmax {
    const SHADER: &'static str = "argmax";
    fn defines(&self) -> Defines {
        BTreeMap::new()
    }
}

impl Argmax {
    /// Record `idx[r] = argmax(x[r, ..n])` for `r < rows`.
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        rows: usize,
        n: usize,
        x: &wgpu::Buffer,
        idx: &wgpu::Buffer,
    ) -> Result<()> {
        if rows == 0 || n == 0 || n >= u32::MAX as usize || rows as u64 * n as u64 > u64::from(u32::MAX) {
            return Err(RuntimeError::Shape(format!("argmax over [{rows}, {n}]")));
        }
        let x_bytes = (rows * n * 4) as u64;
        require_size(x, x_bytes, "argmax input")?;
        require_size(idx, (rows * 4) as u64, "argmax output")?;
        distinct(x, idx, "argmax input and output")?;
        check_binding(gpu, "argmax input", x_bytes)?;
        let pipeline = gpu.pipeline(Self::SHADER, &with_subgroups(gpu, self.defines())).await?;
        let params = Params { rows: rows as u32, n: n as u32, _pad: [0; 2] };
        let resources = vec![slice(x, 0, x_bytes), slice(idx, 0, (rows * 4) as u64)];
        let (gx, gy) = grid(gpu, rows as u64)?;
        dispatch(gpu, encoder, &pipeline, "argmax", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        Ok(())
    }
}

/// CPU reference of [`Argmax`] for one row, for tests.
pub fn argmax_reference(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        let b = x[best];
        if !b.is_nan() && (v.is_nan() || v > b) {
            best = i;
        }
    }
    best as u32
}
