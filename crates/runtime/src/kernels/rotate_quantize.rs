//! `shaders/rotate_quantize.wgsl`: a quantized layer's one online rotation and its activation
//! quantization (the contract's steps 1–5) in one dispatch, a 64-invocation workgroup per token —
//! for a decode step's token, where [`Rotate`]'s levels and core and [`Quantize`] are four or
//! five dispatches (a copy included) of a few microseconds of work each, every one paying the
//! adapter's fixed cost per dispatch. `bench --kernels` times both at the decoder's widths
//! (BENCHMARKS.md, Speed X): natively on lavapipe the one dispatch is about 3× faster for one
//! token, in Chromium's SwiftShader as fast or faster; at 16 tokens the two are even, at 64 the
//! levels are as fast, and over a tile's 1024 patches the levels are faster.
//!
//! **Exactness.** Each value goes through the operations of [`Rotate`] and [`Quantize`] on the
//! same operands, stage after stage, so the integers and scales equal theirs, and the CPU
//! reference's, bit for bit (`tests/quant.rs` compares them).
//!
//! **When.** [`RotateQuantize::fits`]: at most [`RotateQuantize::MAX_TOKENS`] tokens, blocks `p`
//! of at least four values (vec4 butterflies) and loop steps per invocation within
//! `MAX_STEPS`; otherwise the caller rotates with [`Rotate`] and quantizes with [`Quantize`],
//! which gives the same bits.
//!
//! **Where the row is worked on.** In workgroup memory where the adapter does that faster
//! ([`crate::Capabilities::workgroup_rows`]: lavapipe and GPUs, not SwiftShader) and
//! its `n` f32 fit there beside the reductions' slots ([`RotateQuantize::shares_work`]; with
//! WebGPU's 16 KiB, every SmolVLM width up to 3840), else in the caller's `work` rows in storage:
//! the same values in the same order either way.
//!
//! [`Rotate`]: super::quant::Rotate
//! [`Quantize`]: super::quant::Quantize

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::quant::ActivationQuant;

use super::Kernel;
use super::quant::RotationTable;
use super::util::{check_binding, dispatch, distinct, grid, require_size, slice, with_subgroups};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/rotate_quantize.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    tokens: u32,
    n: u32,
    m: u32,
    p: u32,
    has_signs: u32,
    core_offset: u32,
    scale: f32,
    has_core: u32,
    words: u32,
    qmax: i32,
    step: f32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 48);

/// Invocations per workgroup (one token per workgroup).
const INVOCATIONS: usize = 64;

/// Loop steps one invocation may take: half of llvmpipe's cap, which stops every loop of an
/// invocation after 65 535 iterations in total.
const MAX_STEPS: usize = 32_768;

/// One online rotation and the activation quantization per token, in one dispatch: of rows read
/// as they are, or of the rows `silu(gate) · up` (an MLP's down-projection input, computed as
/// [`SiluMul`](super::elementwise::SiluMul) does) when [`RotateQuantize::encode`] gets `up`.
pub struct RotateQuantize;

/// Bytes of workgroup memory kept for the reductions' slots beside a shared row (64 f32 each).
const SLOT_BYTES: usize = 1024;

/// Where the shader works on a token's row.
#[derive(Clone, Copy)]
enum RowPlace {
    /// In workgroup memory, this many vec4s.
    Shared(usize),
    /// In the `work` rows, bound at this binding (the last one).
    Storage(usize),
}

/// The shader variant: whether it computes `silu(x) · up` first, and where it works on the row.
struct Variant {
    silu_mul: bool,
    row: RowPlace,
}

impl Kernel for Variant {
    const SHADER: &'static str = "rotate_quantize";
    fn defines(&self) -> Defines {
        let mut d = Defines::new();
        if self.silu_mul {
            d.insert("SILU_MUL".into(), String::new());
        }
        match self.row {
            RowPlace::Shared(vec4s) => d.insert("WORK_SHARED".into(), vec4s.to_string()),
            RowPlace::Storage(binding) => d.insert("WORK".into(), binding.to_string()),
        };
        d
    }
}

impl RotateQuantize {
    /// Most tokens a layer rotates and quantizes in one dispatch (a decode step's one; the
    /// module doc says why).
    pub const MAX_TOKENS: usize = 8;

    /// Whether a layer should rotate `tokens` rows with `rotation` and quantize them into
    /// `words` words per row in one dispatch (see the module doc).
    pub fn fits(rotation: &RotationTable, words: usize, tokens: usize) -> bool {
        tokens <= Self::MAX_TOKENS && Self::supports(rotation, words)
    }

    /// Whether the kernel can compute `rotation` with `words` words per row: blocks of at least
    /// four values, and loop steps within `MAX_STEPS`.
    pub fn supports(rotation: &RotationTable, words: usize) -> bool {
        let (_, _, p) = rotation.factors();
        p.is_multiple_of(4) && Self::loop_steps(rotation, words) <= MAX_STEPS
    }

    /// Whether the kernel works on an `n`-wide row in workgroup memory on `gpu` (else in the
    /// `work` rows): where the adapter does that faster and the row's f32 and the reductions'
    /// slots fit its workgroup storage.
    pub fn shares_work(gpu: &Gpu, n: usize) -> bool {
        gpu.caps.workgroup_rows && n * 4 + SLOT_BYTES <= gpu.caps.max_workgroup_storage_bytes as usize
    }

    /// The shader's loop steps per invocation, at most (its header comment counts them).
    fn loop_steps(rotation: &RotationTable, words: usize) -> usize {
        let (n, m, p) = rotation.factors();
        let per = |items: usize| items.div_ceil(INVOCATIONS);
        let stages = (p.trailing_zeros() as usize).saturating_sub(2);
        let core = if rotation.params().has_core != 0 { m } else { 1 };
        per(n / 4) * (1 + core) + stages * (1 + per(n / 8)) + per(words) + INVOCATIONS + 24
    }

    /// Rotate `tokens` rows of `x` (f32 `[tokens, n]` from byte `x.1`; given `up`, the rows
    /// `silu(x) · up`, `up` f32 `[tokens, n]` from byte `up.1`) with `rotation` into
    /// `rotated` (through `work`, both f32 `[tokens, n]`, overwritten; `work` unused where the
    /// row fits workgroup memory, [`RotateQuantize::shares_work`]) and quantize them into `q`
    /// (u32 `[tokens, words]`) and `scales` (f32 `[tokens]`).
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        rotation: &RotationTable,
        act: &ActivationQuant,
        x: (&wgpu::Buffer, u64),
        up: Option<(&wgpu::Buffer, u64)>,
        tokens: usize,
        (work, rotated): (&wgpu::Buffer, &wgpu::Buffer),
        (q, words): (&wgpu::Buffer, usize),
        scales: &wgpu::Buffer,
    ) -> Result<()> {
        let (n, m, p) = rotation.factors();
        if !Self::supports(rotation, words) {
            return Err(RuntimeError::UnsupportedModel(format!(
                "a {n}-wide rotation ({m}·{p}) with {words} activation words in one workgroup per token"
            )));
        }
        let rows = (tokens * n * 4) as u64;
        let (q_bytes, s_bytes) = ((tokens * words * 4) as u64, tokens as u64 * 4);
        require_size(x.0, x.1 + rows, "rotated activations' input")?;
        if let Some(up) = up {
            require_size(up.0, up.1 + rows, "rotated activations' up input")?;
            distinct(up.0, work, "a rotation's up input and work rows")?;
        }
        require_size(work, rows, "rotated activations' work rows")?;
        require_size(rotated, rows, "rotated activations")?;
        require_size(q, q_bytes, "activation integers")?;
        require_size(scales, s_bytes, "activation scales")?;
        for (what, bytes) in [("rotated activations", rows), ("activation integers", q_bytes)] {
            check_binding(gpu, what, bytes)?;
        }
        distinct(work, rotated, "a rotation's work rows and output")?;
        distinct(x.0, work, "a rotation's input and work rows")?;
        let table = rotation.table();
        let r = rotation.params();
        let params = Params {
            tokens: tokens as u32,
            n: n as u32,
            m: m as u32,
            p: p as u32,
            has_signs: r.has_signs,
            core_offset: r.core_offset,
            scale: r.scale,
            has_core: r.has_core,
            words: words as u32,
            qmax: act.bits().qmax(),
            step: act.step(),
            _pad: 0,
        };
        let mut resources = vec![
            slice(x.0, x.1, rows),
            slice(table, 0, table.size()),
            slice(rotated, 0, rows),
            slice(q, 0, q_bytes),
            slice(scales, 0, s_bytes),
        ];
        if let Some(up) = up {
            resources.push(slice(up.0, up.1, rows));
        }
        let row = if Self::shares_work(gpu, n) {
            RowPlace::Shared(n / 4)
        } else {
            // binding 0 is the uniform block, the resources follow it in order
            resources.push(slice(work, 0, rows));
            RowPlace::Storage(resources.len())
        };
        let variant = Variant { silu_mul: up.is_some(), row };
        let pipeline = gpu.pipeline(Variant::SHADER, &with_subgroups(gpu, variant.defines())).await?;
        let (gx, gy) = grid(gpu, tokens as u64)?;
        dispatch(
            gpu,
            encoder,
            &pipeline,
            "rotate_quantize",
            bytemuck::bytes_of(&params),
            resources,
            (gx, gy, 1),
        );
        Ok(())
    }
}
