//! Elementwise activations and the residual add.
//!
//! * [`GeluTanh`] (in place): `x[i] = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, PyTorch's
//!   `gelu(approximate="tanh")` (SigLIP's `gelu_pytorch_tanh`). Evaluated as the identical
//!   `x / (1 + exp(−2·√(2/π)·(x + 0.044715·x³)))`, which cannot overflow or produce NaN for large
//!   `|x|`; `|x| > 10` saturates to `x` / `−0` as f32 tanh does.
//! * [`SiluMul`] / [`SiluMulFused`]: `out = silu(gate) · up` with `silu(g) = g / (1 + exp(−g))`
//!   (Llama's MLP). [`SiluMul`]: `gate`, `up`, `out` f32 `[n]`. [`SiluMulFused`]: `gu` f32
//!   `[rows, 2·width]` holding gate in columns `0..width` and up in `width..2·width`, `out` f32
//!   `[rows, width]`.
//! * [`Add`] (in place): `acc[i] += x[i mod period]` for `i < n`; `period = n` is the plain
//!   residual add, a smaller period broadcasts `x` (e.g. a position embedding `[P, D]` added to
//!   every tile of `[tiles, P, D]`).
//!
//! Tensors larger than one storage binding are processed in chunks bound at aligned offsets.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};

use super::Kernel;
use super::util::{
    WORKGROUP, check_binding, chunks, dispatch, distinct, grid, require_size, rows_per_chunk, slice,
};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/elementwise.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    n: u32,
    width: u32,
    start: u32,
    period: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

fn define(name: &str) -> Defines {
    BTreeMap::from([(name.to_string(), String::new())])
}

fn check_len(n: usize, what: &str) -> Result<()> {
    if n == 0 || n > u32::MAX as usize / 2 {
        return Err(RuntimeError::Shape(format!("{what} over {n} elements")));
    }
    Ok(())
}

fn groups_for(gpu: &Gpu, n: usize) -> Result<(u32, u32, u32)> {
    let (x, y) = grid(gpu, (n as u64).div_ceil(u64::from(WORKGROUP)))?;
    Ok((x, y, 1))
}

/// In-place tanh-approximated GELU.
#[derive(Clone, Copy, Debug, Default)]
pub struct GeluTanh;

impl Kernel for GeluTanh {
    const SHADER: &'static str = "elementwise";
    fn defines(&self) -> Defines {
        define("GELU")
    }
}

impl GeluTanh {
    /// Record `x[i] = gelu_tanh(x[i])` for `i < n`.
    pub async fn encode(&self, gpu: &Gpu, encoder: &mut Encoder, n: usize, x: &wgpu::Buffer) -> Result<()> {
        check_len(n, "gelu")?;
        require_size(x, (n * 4) as u64, "gelu input")?;
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let chunk = rows_per_chunk(gpu, "gelu's input", n, &[4])?;
        for (e0, ne) in chunks(n, chunk) {
            let params = Params { n: ne as u32, width: 1, start: 0, period: 1 };
            let resources = vec![slice(x, (e0 * 4) as u64, (ne * 4) as u64)];
            dispatch(
                gpu,
                encoder,
                &pipeline,
                "gelu",
                bytemuck::bytes_of(&params),
                resources,
                groups_for(gpu, ne)?,
            );
        }
        Ok(())
    }
}

/// `silu(gate) · up` on separate `gate` and `up` buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SiluMul;

impl Kernel for SiluMul {
    const SHADER: &'static str = "elementwise";
    fn defines(&self) -> Defines {
        define("SILU_MUL")
    }
}

impl SiluMul {
    /// Record `out[i] = silu(gate[i]) · up[i]` for `i < n`.
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        n: usize,
        gate: &wgpu::Buffer,
        up: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        check_len(n, "silu_mul")?;
        let bytes = (n * 4) as u64;
        require_size(gate, bytes, "silu_mul gate")?;
        require_size(up, bytes, "silu_mul up")?;
        require_size(out, bytes, "silu_mul output")?;
        distinct(gate, out, "silu_mul gate and output")?;
        distinct(up, out, "silu_mul up and output")?;
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let chunk = rows_per_chunk(gpu, "silu_mul's inputs", n, &[4])?;
        for (e0, ne) in chunks(n, chunk) {
            let params = Params { n: ne as u32, width: 1, start: 0, period: 1 };
            let (off, size) = ((e0 * 4) as u64, (ne * 4) as u64);
            let resources = vec![slice(gate, off, size), slice(up, off, size), slice(out, off, size)];
            let groups = groups_for(gpu, ne)?;
            dispatch(gpu, encoder, &pipeline, "silu_mul", bytemuck::bytes_of(&params), resources, groups);
        }
        Ok(())
    }
}

/// `silu(gate) · up` where gate and up are the two halves of each row of one buffer (the output
/// of a fused gate|up projection).
#[derive(Clone, Copy, Debug, Default)]
pub struct SiluMulFused;

impl Kernel for SiluMulFused {
    const SHADER: &'static str = "elementwise";
    fn defines(&self) -> Defines {
        define("SILU_MUL_FUSED")
    }
}

impl SiluMulFused {
    /// Record `out[r, c] = silu(gu[r, c]) · gu[r, width + c]` for `r < rows`, `c < width`.
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        rows: usize,
        width: usize,
        gu: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        if rows == 0 || width == 0 {
            return Err(RuntimeError::Shape(format!("silu_mul over [{rows}, {width}]")));
        }
        check_len(rows * width * 2, "silu_mul")?;
        let (in_row, out_row) = ((width * 8) as u64, (width * 4) as u64);
        require_size(gu, rows as u64 * in_row, "silu_mul gate|up")?;
        require_size(out, rows as u64 * out_row, "silu_mul output")?;
        distinct(gu, out, "silu_mul input and output")?;
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let chunk = rows_per_chunk(gpu, "silu_mul's rows", rows, &[in_row, out_row])?;
        for (r0, nr) in chunks(rows, chunk) {
            let params = Params { n: (nr * width) as u32, width: width as u32, start: 0, period: 1 };
            let resources = vec![
                slice(gu, r0 as u64 * in_row, nr as u64 * in_row),
                slice(out, r0 as u64 * out_row, nr as u64 * out_row),
            ];
            let groups = groups_for(gpu, nr * width)?;
            dispatch(gpu, encoder, &pipeline, "silu_mul", bytemuck::bytes_of(&params), resources, groups);
        }
        Ok(())
    }
}

/// In-place (broadcasting) add.
#[derive(Clone, Copy, Debug, Default)]
pub struct Add;

impl Kernel for Add {
    const SHADER: &'static str = "elementwise";
    fn defines(&self) -> Defines {
        define("ADD")
    }
}

impl Add {
    /// Record `acc[i] += x[i mod period]` for `i < n`; `period` must divide `n`.
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        n: usize,
        period: usize,
        acc: &wgpu::Buffer,
        x: &wgpu::Buffer,
    ) -> Result<()> {
        check_len(n, "add")?;
        if period == 0 || !n.is_multiple_of(period) {
            return Err(RuntimeError::Shape(format!("add: period {period} does not divide {n}")));
        }
        require_size(acc, (n * 4) as u64, "add accumulator")?;
        require_size(x, (period * 4) as u64, "add input")?;
        distinct(acc, x, "add accumulator and input")?;
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let chunk = rows_per_chunk(gpu, "add's inputs", n, &[4])?;
        let broadcast = period < n;
        if broadcast {
            check_binding(gpu, "a broadcast add's input", (period * 4) as u64)?;
        }
        for (e0, ne) in chunks(n, chunk) {
            let (off, size) = ((e0 * 4) as u64, (ne * 4) as u64);
            let (params, x_binding) = if broadcast {
                let p = Params { n: ne as u32, width: 1, start: e0 as u32, period: period as u32 };
                (p, slice(x, 0, (period * 4) as u64))
            } else {
                (Params { n: ne as u32, width: 1, start: 0, period: ne as u32 }, slice(x, off, size))
            };
            let resources = vec![slice(acc, off, size), x_binding];
            dispatch(
                gpu,
                encoder,
                &pipeline,
                "add",
                bytemuck::bytes_of(&params),
                resources,
                groups_for(gpu, ne)?,
            );
        }
        Ok(())
    }
}

/// CPU reference of [`GeluTanh`] (f64), for tests: `0.5·x·(1 + tanh(u))`, where for `u < 0`
/// the factor `1 + tanh(u)` is evaluated as the equal `2 / (1 + e^(−2u))`, since f64 `1 + tanh(u)`
/// cancels to nothing once `u < −19`.
pub fn gelu_tanh_reference(x: &[f32]) -> Vec<f32> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    x.iter()
        .map(|&v| {
            let v = f64::from(v);
            let u = k * (v + 0.044715 * v * v * v);
            let one_plus_tanh = if u < 0.0 { 2.0 / (1.0 + (-2.0 * u).exp()) } else { 1.0 + u.tanh() };
            (0.5 * v * one_plus_tanh) as f32
        })
        .collect()
}

/// CPU reference of [`SiluMul`] on separate inputs (f64), for tests.
pub fn silu_mul_reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            (g / (1.0 + (-g).exp()) * f64::from(u)) as f32
        })
        .collect()
}

/// CPU reference of [`Add`]: `acc[i] + x[i mod period]`, for tests.
pub fn add_reference(acc: &[f32], x: &[f32]) -> Vec<f32> {
    acc.iter().enumerate().map(|(i, &a)| a + x[i % x.len()]).collect()
}
