//! Row normalisations over the last dimension: SigLIP's LayerNorm and Llama's RMSNorm.
//!
//! Layer norm: `y[r, i] = (x[r, i] − μ_r) / √(σ²_r + eps) · γ[i] + β[i]` with
//! `μ_r = mean_i x[r, i]` and the biased variance `σ²_r = mean_i (x[r, i] − μ_r)²` (PyTorch's
//! `nn.LayerNorm`; two passes over the row).
//!
//! RMS norm: `y[r, i] = γ[i] · (x[r, i] / √(mean_i x[r, i]² + eps))` (transformers'
//! `LlamaRMSNorm` in f32: normalise first, then multiply by γ).
//!
//! Residual form (a residual buffer given): `x ← x + r` first (one f32 add per value, written back to
//! `x`, the residual stream), then the norm of the sum into `y`: a transformer block's residual
//! add and the next norm in one dispatch. `x` holds exactly what a separate add would leave.
//!
//! Quantized form (a [`QuantizedOutput`] given): `y`'s rows also quantized for the integer product
//! that reads them, steps 2–5 of the contract ([`pocketvlm_format::quant`]) computed exactly as
//! [`super::quant::Quantize`] computes them from `y` as stored — the same integers and scales, one
//! dispatch fewer.
//!
//! Buffers: `x`, `r` and `y` f32 `[rows, d]` row-major (distinct buffers), `γ` and `β` f32 `[d]`.
//! [`NormLayout`]: one workgroup per row reducing the sums in workgroup memory (256 invocations
//! on GPUs; 32 for a decode step's few rows on lavapipe; through subgroups where the device has
//! them, summed in another order), or one invocation per row summing in order, without barriers
//! (CPU adapters' many rows, and every row on the browser's). Inputs larger than one storage
//! binding are processed in row chunks bound at aligned offsets.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::quant::ActivationQuant;

use super::Kernel;
use super::quant::activation_words;
use super::util::{
    check_binding, chunks, dispatch, distinct, grid, require_size, rows_per_chunk, slice, with_subgroups,
};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/norm.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    /// Words per quantized row, `qmax` and the scale step (with a [`QuantizedOutput`]).
    words: u32,
    qmax: i32,
    step: f32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

/// Rows and width of a normalisation.
#[derive(Clone, Copy, Debug)]
pub struct NormShape {
    pub rows: usize,
    pub d: usize,
}

/// `nn.LayerNorm(d, eps)` over rows.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub eps: f32,
}

/// `LlamaRMSNorm(d, eps)` over rows.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub eps: f32,
}

impl Kernel for LayerNorm {
    const SHADER: &'static str = "norm";
    fn defines(&self) -> Defines {
        BTreeMap::new()
    }
}

impl Kernel for RmsNorm {
    const SHADER: &'static str = "norm";
    fn defines(&self) -> Defines {
        BTreeMap::from([("RMS".to_string(), String::new())])
    }
}

/// How a norm's rows are spread over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormLayout {
    /// One 256-invocation workgroup per row; partial sums of strided slices reduced in
    /// workgroup memory: a tree (9 barriers), or through subgroups where the device has them
    /// (2 barriers; `shaders/lib/subgroups.wgsl`).
    Workgroup,
    /// The same with 32 invocations per row (a tree of 6 barriers, or 2 through subgroups).
    NarrowWorkgroup,
    /// One invocation per row, summing it in order: no barriers.
    PerRow,
}

impl NormLayout {
    /// Most rows [`NormLayout::for_gpu`] gives a narrow workgroup each (a decode step's).
    pub const FEW_ROWS: usize = 8;

    /// Every layout.
    pub const ALL: [Self; 3] = [Self::Workgroup, Self::NarrowWorkgroup, Self::PerRow];

    /// The faster layout on `gpu` for `rows` rows: a 256-invocation workgroup per row on GPUs;
    /// on CPU adapters, whose barriers are slow, one invocation per row, except for a few rows
    /// where the adapter works on a row in a workgroup faster
    /// ([`crate::Capabilities::workgroup_rows`], lavapipe): one invocation per row leaves a
    /// decode step's one row to one thread walking it alone, 32 invocations per row spread it
    /// over the adapter's SIMD lanes (BENCHMARKS.md, Speed XXXIII: a decode step's 61 norms
    /// 3.8–4.2 → 2.9–3.1 ms; over a tile's 1024 rows 105 against 204–359 ms, so many rows stay
    /// one per invocation).
    pub fn for_gpu(gpu: &Gpu, rows: usize) -> Self {
        match (gpu.caps.cpu, gpu.caps.workgroup_rows && rows <= Self::FEW_ROWS) {
            (false, _) => Self::Workgroup,
            (true, true) => Self::NarrowWorkgroup,
            (true, false) => Self::PerRow,
        }
    }

    /// Invocations per workgroup.
    pub fn invocations(self) -> usize {
        match self {
            Self::Workgroup => 256,
            Self::NarrowWorkgroup => 32,
            Self::PerRow => 64,
        }
    }

    /// Rows per workgroup.
    fn rows_per_group(self) -> usize {
        match self {
            Self::Workgroup | Self::NarrowWorkgroup => 1,
            Self::PerRow => self.invocations(),
        }
    }
}

/// Where a norm also writes its output quantized as `activation` says: integers u32 `[rows,
/// stride]` (`stride` = [`activation_words`] of the width) and scales f32 `[rows]`.
#[derive(Clone, Copy)]
pub struct QuantizedOutput<'a> {
    pub activation: &'a ActivationQuant,
    pub words: &'a wgpu::Buffer,
    pub scales: &'a wgpu::Buffer,
}

/// One norm dispatch's inputs besides the kernel: `x` (read, or with a residual updated to
/// `x + residual`), `γ`, `β` (layer norm), the output `y` and perhaps its quantized form.
struct NormBuffers<'a> {
    x: &'a wgpu::Buffer,
    residual: Option<&'a wgpu::Buffer>,
    gamma: &'a wgpu::Buffer,
    beta: Option<&'a wgpu::Buffer>,
    y: &'a wgpu::Buffer,
    quantized: Option<QuantizedOutput<'a>>,
}

async fn encode_norm<K: Kernel>(
    gpu: &Gpu,
    encoder: &mut Encoder,
    (kernel, eps, layout): (&K, f32, NormLayout),
    shape: NormShape,
    b: NormBuffers<'_>,
) -> Result<()> {
    let NormShape { rows, d } = shape;
    if rows == 0 || d == 0 || d > u32::MAX as usize || rows * d > u32::MAX as usize {
        return Err(RuntimeError::Shape(format!("norm over [{rows}, {d}]")));
    }
    let row_bytes = (d * 4) as u64;
    require_size(b.x, rows as u64 * row_bytes, "norm input")?;
    require_size(b.y, rows as u64 * row_bytes, "norm output")?;
    require_size(b.gamma, row_bytes, "norm weight")?;
    check_binding(gpu, "norm weight", row_bytes)?;
    distinct(b.x, b.y, "norm input and output")?;
    if let Some(beta) = b.beta {
        require_size(beta, row_bytes, "norm bias")?;
    }
    let mut defines = kernel.defines();
    if let Some(r) = b.residual {
        require_size(r, rows as u64 * row_bytes, "norm residual")?;
        distinct(r, b.x, "norm residual and input")?;
        distinct(r, b.y, "norm residual and output")?;
        defines.insert("RESIDUAL".into(), String::new());
    }
    match layout {
        NormLayout::PerRow => _ = defines.insert("PER_ROW".into(), String::new()),
        NormLayout::Workgroup | NormLayout::NarrowWorkgroup => defines = with_subgroups(gpu, defines),
    }
    defines.insert("WG".into(), layout.invocations().to_string());
    let words = activation_words(d);
    let word_row = (words * 4) as u64;
    let (mut qmax, mut step) = (0, 0.0);
    if let Some(q) = &b.quantized {
        require_size(q.words, rows as u64 * word_row, "norm output integers")?;
        require_size(q.scales, rows as u64 * 4, "norm output scales")?;
        distinct(q.words, q.scales, "norm output integers and scales")?;
        for buffer in [Some(b.x), b.residual, Some(b.y)].into_iter().flatten() {
            distinct(buffer, q.words, "norm buffers and output integers")?;
            distinct(buffer, q.scales, "norm buffers and output scales")?;
        }
        (qmax, step) = (q.activation.bits().qmax(), q.activation.step());
        // bindings x, γ, (β), y, (residual), then these two
        let first = 4 + usize::from(b.beta.is_some()) + usize::from(b.residual.is_some());
        defines.insert("QUANTIZE".into(), first.to_string());
        defines.insert("QUANTIZE_SCALES".into(), (first + 1).to_string());
    }
    let pipeline = gpu.pipeline(K::SHADER, &defines).await?;
    let row_sizes: &[u64] = if b.quantized.is_some() { &[row_bytes, word_row, 4] } else { &[row_bytes] };
    let chunk = rows_per_chunk(gpu, "a norm's rows", rows, row_sizes)?;
    for (r0, nr) in chunks(rows, chunk) {
        let params =
            Params { rows: nr as u32, d: d as u32, eps, words: words as u32, qmax, step, _pad: [0; 2] };
        let (off, size) = (r0 as u64 * row_bytes, nr as u64 * row_bytes);
        let mut resources = vec![slice(b.x, off, size), slice(b.gamma, 0, row_bytes)];
        if let Some(beta) = b.beta {
            resources.push(slice(beta, 0, row_bytes));
        }
        resources.push(slice(b.y, off, size));
        if let Some(r) = b.residual {
            resources.push(slice(r, off, size));
        }
        if let Some(q) = &b.quantized {
            resources.push(slice(q.words, r0 as u64 * word_row, nr as u64 * word_row));
            resources.push(slice(q.scales, r0 as u64 * 4, nr as u64 * 4));
        }
        let (gx, gy) = grid(gpu, nr.div_ceil(layout.rows_per_group()) as u64)?;
        dispatch(gpu, encoder, &pipeline, "norm", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
    }
    Ok(())
}

impl LayerNorm {
    /// Record `y = layer_norm(x) · γ + β` over `shape.rows` rows of width `shape.d`; with a
    /// residual (`x.1`), `x ← x + residual` first. `weights` are `(γ, β)`.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        layout: NormLayout,
        shape: NormShape,
        x: (&wgpu::Buffer, Option<&wgpu::Buffer>),
        weights: (&wgpu::Buffer, &wgpu::Buffer),
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let b = NormBuffers {
            x: x.0,
            residual: x.1,
            gamma: weights.0,
            beta: Some(weights.1),
            y,
            quantized: None,
        };
        encode_norm(gpu, encoder, (self, self.eps, layout), shape, b).await
    }
}

impl RmsNorm {
    /// Record `y = γ · rms_norm(x)` over `shape.rows` rows of width `shape.d`; with a residual
    /// (`x.1`), `x ← x + residual` first; with `quantized`, `y`'s rows quantized too.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        layout: NormLayout,
        shape: NormShape,
        x: (&wgpu::Buffer, Option<&wgpu::Buffer>),
        gamma: &wgpu::Buffer,
        (y, quantized): (&wgpu::Buffer, Option<QuantizedOutput<'_>>),
    ) -> Result<()> {
        let b = NormBuffers { x: x.0, residual: x.1, gamma, beta: None, y, quantized };
        encode_norm(gpu, encoder, (self, self.eps, layout), shape, b).await
    }
}

/// CPU reference of [`LayerNorm`] (f64 arithmetic, biased variance), for tests.
pub fn layer_norm_reference(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, shape: NormShape) -> Vec<f32> {
    let NormShape { rows, d } = shape;
    let mut y = vec![0f32; rows * d];
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for i in 0..d {
            y[r * d + i] =
                ((f64::from(row[i]) - mean) * inv * f64::from(gamma[i]) + f64::from(beta[i])) as f32;
        }
    }
    y
}

/// CPU reference of [`RmsNorm`] (f64 arithmetic), for tests.
pub fn rms_norm_reference(x: &[f32], gamma: &[f32], eps: f32, shape: NormShape) -> Vec<f32> {
    let NormShape { rows, d } = shape;
    let mut y = vec![0f32; rows * d];
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + f64::from(eps)).sqrt();
        for i in 0..d {
            y[r * d + i] = (f64::from(gamma[i]) * (f64::from(row[i]) * inv)) as f32;
        }
    }
    y
}
