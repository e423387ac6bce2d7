//! Tiled f32 matmul against a weight in `[out, in]` layout, with optional bias.
//!
//! `y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`. Buffers: `x` f32 `[m, k]` row-major, `w` f32
//! `[n, k]` row-major, `bias` f32 `[n]`, `y` f32 `[m, n]` row-major.
//!
//! A weight larger than the device's storage-binding limit is processed in row chunks: each
//! dispatch binds rows `c0..c0+nc` of `w` at a byte offset (a multiple of the device's offset
//! alignment) and writes columns `c0..c0+nc` of `y`. Likewise an `x` or `y` larger than one
//! binding (e.g. the vision MLP's `[17·1024, 3072]` activations) is processed in row passes
//! `r0..r0+mr` bound at aligned offsets.
//!
//! 16-bit weights stay 16-bit on the GPU and are widened exactly in the kernel: f16 is read as
//! `array<f16>` where the adapter has `shader-f16` ([`Matmul::f16_storage`]), otherwise f16 and bf16
//! as two values per `u32` word (bf16 always: `f16` cannot hold its range). Either way the widened
//! value and so the product are the same, bit for bit.
//!
//! [`Matmul::encode`] runs [`MatVec`] for `m ≤ 4` — decode — and otherwise the 64×64-tiled
//! kernel, or on CPU adapters the register-blocked one (4×4 outputs per invocation straight from
//! storage, no barriers; bit-identical to the tiled kernel: both run each output's fma chain over
//! `k` in order). [`MatVec`] reduces over `k` with 32 invocations per output column, or on CPU
//! adapters ([`crate::Capabilities::cpu`]) with one barrier-free invocation per column.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::Encoding;

use super::util::{check_binding, chunks, dispatch, distinct, grid, require_size, rows_per_chunk, slice};
use super::{Kernel, groups};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/matmul.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k_dim: u32,
    ldy: u32,
    col_offset: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

/// Output tile side of one workgroup (64×64, 16×16 invocations with 4×4 each).
const TILE: usize = 64;

/// The matmul kernel; `bias` and the weight's encoding select the variant.
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    pub bias: bool,
    /// How the weight is stored: f32, or f16 / bf16 (two per `u32`, widened in the kernel).
    pub weights: Encoding,
    /// f16 weights are bound as `array<f16>` (the adapter has `shader-f16`) rather than as `u32`
    /// pairs; ignored for other encodings.
    pub f16_storage: bool,
}

impl Matmul {
    /// The variant for f32 weights.
    pub fn f32(bias: bool) -> Self {
        Self { bias, weights: Encoding::F32, f16_storage: false }
    }

    /// The variant for `weights` on `gpu`: f16 read natively where the adapter allows it.
    pub fn for_weights(gpu: &Gpu, bias: bool, weights: Encoding) -> Self {
        Self { bias, weights, f16_storage: gpu.caps.shader_f16 }
    }
}

/// Defines of a float weight encoding (shared by `matmul.wgsl` and `matvec.wgsl`).
fn weight_defines(d: &mut Defines, weights: Encoding, f16_storage: bool) {
    match weights {
        Encoding::F16 if f16_storage => {
            d.insert("F16_STORAGE".to_string(), String::new());
        }
        Encoding::F16 => {
            d.insert("W16".to_string(), String::new());
        }
        Encoding::BF16 => {
            d.insert("W16".to_string(), String::new());
            d.insert("BF16".to_string(), String::new());
        }
        _ => {}
    }
}

/// Bytes of one float weight element; `Err(UnsupportedModel)` for a packed encoding.
fn element_bytes(weights: Encoding) -> Result<usize> {
    match weights {
        Encoding::F32 => Ok(4),
        Encoding::F16 | Encoding::BF16 => Ok(2),
        other => Err(RuntimeError::UnsupportedModel(format!(
            "the float matmul reads f32, f16 or bf16 weights, not {}",
            other.tag()
        ))),
    }
}

impl Kernel for Matmul {
    const SHADER: &'static str = "matmul";
    fn defines(&self) -> Defines {
        let mut d = BTreeMap::new();
        if self.bias {
            d.insert("BIAS".to_string(), String::new());
        }
        weight_defines(&mut d, self.weights, self.f16_storage);
        d
    }
}

/// Shapes of one matmul.
#[derive(Clone, Copy, Debug)]
pub struct MatmulShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Rows of `w` per dispatch: as many as fit one binding, a multiple of the count that keeps
/// every chunk's byte offset aligned.
pub fn weight_rows_per_chunk(gpu: &Gpu, n: usize, k: usize, element: usize) -> Result<usize> {
    rows_per_chunk(gpu, &format!("a [{n}, {k}] weight"), n, &[(k * element) as u64])
}

/// Rows of `x` (and `y`) per pass: as many as keep both bindings within the device limit, with
/// aligned offsets.
pub fn input_rows_per_chunk(gpu: &Gpu, shape: MatmulShape) -> Result<usize> {
    let MatmulShape { m, n, k } = shape;
    rows_per_chunk(
        gpu,
        &format!("a matmul's [{m}, {k}] input and [{m}, {n}] output"),
        m,
        &[(k * 4) as u64, (n * 4) as u64],
    )
}

/// Matrix-vector variant for at most [`MatVec::MAX_ROWS`] rows (decode): 32 invocations per
/// output column reduce over `k`, instead of a 64×64 tile that would be mostly idle.
/// [`Matmul::encode`] uses it automatically for small `m`.
#[derive(Clone, Copy, Debug)]
pub struct MatVec {
    pub bias: bool,
    /// The weight's encoding (see [`Matmul::weights`]).
    pub weights: Encoding,
    /// Rows of `x` (1..=4), a compile-time constant of the shader.
    pub rows: usize,
    /// One invocation per output column with no workgroup reduction (what CPU adapters run
    /// fastest; [`Matmul::encode`] sets it from [`crate::Capabilities::cpu`]).
    pub per_column: bool,
    /// See [`Matmul::f16_storage`].
    pub f16_storage: bool,
}

impl MatVec {
    pub const MAX_ROWS: usize = 4;

    /// Output columns per workgroup.
    fn columns_per_workgroup(&self) -> usize {
        if self.per_column { 256 } else { 8 }
    }
}

impl Kernel for MatVec {
    const SHADER: &'static str = "matvec";
    fn defines(&self) -> Defines {
        let mut d = BTreeMap::from([("ROWS".to_string(), self.rows.to_string())]);
        if self.bias {
            d.insert("BIAS".to_string(), String::new());
        }
        if self.per_column {
            d.insert("PER_COLUMN".to_string(), String::new());
        }
        weight_defines(&mut d, self.weights, self.f16_storage);
        d
    }
}

/// Shape, size and aliasing checks shared by both matmul kernels.
#[allow(clippy::too_many_arguments)]
fn check(
    shape: MatmulShape,
    with_bias: bool,
    element: usize,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
) -> Result<()> {
    let MatmulShape { m, n, k } = shape;
    if bias.is_some() != with_bias {
        return Err(RuntimeError::Shape("bias buffer does not match the kernel variant".into()));
    }
    if m == 0 || n == 0 || k == 0 {
        return Err(RuntimeError::Shape(format!("empty matmul {m}x{k} · {n}x{k}")));
    }
    let max = u64::from(u32::MAX);
    if (m * k) as u64 > max || (n * k) as u64 > max || (m * n) as u64 > max {
        return Err(RuntimeError::Shape(format!("matmul {m}x{k} · {n}x{k} has too many elements")));
    }
    require_size(x, (m * k * 4) as u64, "matmul input")?;
    require_size(w, (n * k * element) as u64, "matmul weight")?;
    require_size(y, (m * n * 4) as u64, "matmul output")?;
    if let Some(b) = bias {
        require_size(b, (n * 4) as u64, "matmul bias")?;
    }
    for (buffer, what) in [(x, "input"), (w, "weight")] {
        distinct(buffer, y, &format!("matmul {what} and output"))?;
    }
    if let Some(b) = bias {
        distinct(b, y, "matmul bias and output")?;
    }
    Ok(())
}

/// `Err(UnsupportedModel)` when a kernel would read f16 natively on an adapter without `shader-f16`.
fn check_f16_storage(gpu: &Gpu, weights: Encoding, f16_storage: bool) -> Result<()> {
    if weights == Encoding::F16 && f16_storage && !gpu.caps.shader_f16 {
        return Err(RuntimeError::UnsupportedModel(
            "f16 weights bound as array<f16> need the shader-f16 feature, which this adapter lacks".into(),
        ));
    }
    Ok(())
}

impl Matmul {
    fn check_storage(&self, gpu: &Gpu) -> Result<()> {
        check_f16_storage(gpu, self.weights, self.f16_storage)
    }

    /// Record `y = x · wᵀ (+ bias)` into `encoder`: [`MatVec`] for `m ≤ 4`; otherwise on CPU
    /// adapters the register-blocked kernel (when `k % 4 == 0`), else the tiled one (the two are
    /// bit-identical).
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: MatmulShape,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        if (1..=MatVec::MAX_ROWS).contains(&shape.m) {
            let per_column = gpu.caps.cpu;
            MatVec {
                bias: self.bias,
                weights: self.weights,
                rows: shape.m,
                per_column,
                f16_storage: self.f16_storage,
            }
            .encode(gpu, encoder, shape.n, shape.k, x, w, bias, y)
            .await
        } else if gpu.caps.cpu && shape.k.is_multiple_of(4) {
            self.encode_blocked(gpu, encoder, shape, x, w, bias, y).await
        } else {
            self.encode_tiled(gpu, encoder, shape, x, w, bias, y).await
        }
    }

    /// Record `y = x · wᵀ (+ bias)` with the 64×64-tiled kernel, whatever `m`. Inputs and
    /// outputs larger than one binding are split into row passes; weights into column chunks.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_tiled(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: MatmulShape,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        self.encode_rows(gpu, encoder, shape, x, w, bias, y, Tiling::Workgroup).await
    }

    /// Record `y = x · wᵀ (+ bias)` with the register-blocked kernel (`matmul_blocked.wgsl`:
    /// 4×4 outputs per invocation, no workgroup memory, no barriers), whatever `m`; bit-identical
    /// to [`Matmul::encode_tiled`]. Needs `k` a multiple of 4.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_blocked(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: MatmulShape,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        if !shape.k.is_multiple_of(4) {
            return Err(RuntimeError::Shape(format!(
                "the register-blocked matmul needs k % 4 == 0, not {}",
                shape.k
            )));
        }
        self.encode_rows(gpu, encoder, shape, x, w, bias, y, Tiling::Registers).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn encode_rows(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: MatmulShape,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
        tiling: Tiling,
    ) -> Result<()> {
        let element = element_bytes(self.weights)?;
        check(shape, self.bias, element, x, w, bias, y)?;
        let MatmulShape { m, n, k } = shape;
        if bias.is_some() {
            check_binding(gpu, "matmul bias", (n * 4) as u64)?;
        }
        let row_chunk = input_rows_per_chunk(gpu, shape)?;
        let chunk = weight_rows_per_chunk(gpu, n, k, element)?;
        let workgroups = |rows: usize, cols: usize| -> Result<(u32, u32)> {
            match tiling {
                Tiling::Workgroup => {
                    let (gx, gy) = (groups(cols, TILE), groups(rows, TILE));
                    if gx.max(gy) > gpu.caps.max_workgroups_per_dimension {
                        return Err(RuntimeError::Shape(format!(
                            "a [{rows}, {cols}] product exceeds the dispatch limit"
                        )));
                    }
                    Ok((gx, gy))
                }
                Tiling::Registers => {
                    let blocks = rows.div_ceil(4) * cols.div_ceil(4);
                    grid(gpu, groups(blocks, BLOCKED_INVOCATIONS) as u64)
                }
            }
        };
        workgroups(row_chunk, chunk)?;
        self.check_storage(gpu)?;
        let pipeline = gpu.pipeline(tiling.shader(), &self.defines()).await?;
        let (x_row, y_row) = ((k * 4) as u64, (n * 4) as u64);
        for (r0, mr) in chunks(m, row_chunk) {
            for (c0, nc) in chunks(n, chunk) {
                let params = Params {
                    m: mr as u32,
                    n: nc as u32,
                    k_dim: k as u32,
                    ldy: n as u32,
                    col_offset: c0 as u32,
                    _pad: [0; 3],
                };
                let mut resources = vec![
                    slice(x, r0 as u64 * x_row, mr as u64 * x_row),
                    slice(w, (c0 * k * element) as u64, (nc * k * element) as u64),
                    slice(y, r0 as u64 * y_row, mr as u64 * y_row),
                ];
                if let Some(b) = bias {
                    resources.push(slice(b, 0, (n * 4) as u64));
                }
                let (gx, gy) = workgroups(mr, nc)?;
                dispatch(
                    gpu,
                    encoder,
                    &pipeline,
                    tiling.shader(),
                    bytemuck::bytes_of(&params),
                    resources,
                    (gx, gy, 1),
                );
            }
        }
        Ok(())
    }
}

/// How [`Matmul`] lays a product over more than [`MatVec::MAX_ROWS`] rows on workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tiling {
    /// 64×64 tiles staged through workgroup memory (`matmul.wgsl`): what GPUs run fastest.
    Workgroup,
    /// 4×4 blocks per invocation, no barriers (`matmul_blocked.wgsl`): what CPU adapters run fastest.
    Registers,
}

impl Tiling {
    fn shader(self) -> &'static str {
        match self {
            Self::Workgroup => Matmul::SHADER,
            Self::Registers => "matmul_blocked",
        }
    }
}

/// Invocations per workgroup of the register-blocked kernel.
const BLOCKED_INVOCATIONS: usize = 64;

impl MatVec {
    /// Record `y = x · wᵀ (+ bias)` for `x` of `self.rows` rows: `x` f32 `[rows, k]`, `w` f32
    /// `[n, k]`, `y` f32 `[rows, n]`. Weights larger than one binding are processed in chunks.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        n: usize,
        k: usize,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let m = self.rows;
        if !(1..=Self::MAX_ROWS).contains(&m) {
            return Err(RuntimeError::Shape(format!(
                "matvec over {m} rows (1..={} supported)",
                Self::MAX_ROWS
            )));
        }
        let shape = MatmulShape { m, n, k };
        let element = element_bytes(self.weights)?;
        check(shape, self.bias, element, x, w, bias, y)?;
        let (x_bytes, y_bytes) = ((m * k * 4) as u64, (m * n * 4) as u64);
        check_binding(gpu, "matvec input", x_bytes)?;
        check_binding(gpu, "matvec output", y_bytes)?;
        if bias.is_some() {
            check_binding(gpu, "matvec bias", (n * 4) as u64)?;
        }
        check_f16_storage(gpu, self.weights, self.f16_storage)?;
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let chunk = weight_rows_per_chunk(gpu, n, k, element)?;
        for (c0, nc) in chunks(n, chunk) {
            let params = Params {
                m: m as u32,
                n: nc as u32,
                k_dim: k as u32,
                ldy: n as u32,
                col_offset: c0 as u32,
                _pad: [0; 3],
            };
            let mut resources = vec![
                slice(x, 0, x_bytes),
                slice(w, (c0 * k * element) as u64, (nc * k * element) as u64),
                slice(y, 0, y_bytes),
            ];
            if let Some(b) = bias {
                resources.push(slice(b, 0, (n * 4) as u64));
            }
            let (gx, gy) = grid(gpu, nc.div_ceil(self.columns_per_workgroup()) as u64)?;
            dispatch(gpu, encoder, &pipeline, "matvec", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        }
        Ok(())
    }
}

/// CPU reference of the same product (f64 accumulation), for tests.
pub fn matmul_reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, shape: MatmulShape) -> Vec<f32> {
    let MatmulShape { m, n, k } = shape;
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut acc = 0f64;
            for i in 0..k {
                acc += f64::from(x[r * k + i]) * f64::from(w[c * k + i]);
            }
            y[r * n + c] = (acc + bias.map_or(0.0, |b| f64::from(b[c]))) as f32;
        }
    }
    y
}
