//! Per-token activation quantization ([`Quantize`]): a row's integers and scale as the contract
//! computes them, one invocation or one workgroup per token ([`QuantizeLayout`]).

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use pocketvlm_format::quant::{ActivationQuant, Bits};

use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::util::{check_binding, dispatch, distinct, grid, require_size, slice, with_subgroups};
use crate::kernels::{Kernel, groups};
use crate::shader::Defines;

use super::{INVOCATIONS, activation_words};

/// Uniform block of `shaders/quantize.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct QuantizeParams {
    tokens: u32,
    cols: u32,
    words: u32,
    qmax: i32,
    step: f32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<QuantizeParams>() == 32);

/// `shaders/quantize.wgsl`: quantize `tokens` rows of `x` (f32 `[tokens, cols]` from byte
/// `x_offset`) into `q` (u32 `[tokens, activation_words(cols)]`) and `scales` (f32 `[tokens]`),
/// spread over invocations as [`QuantizeLayout::for_gpu`] says (the same bits either way).
pub struct Quantize;

/// How [`Quantize`] spreads a token's row over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizeLayout {
    /// One invocation per token, walking its row: no workgroup memory, no barriers.
    PerToken,
    /// One 64-invocation workgroup per token: strided maxima reduced in workgroup memory (one
    /// barrier; through subgroups where the device has them), then every invocation packs every
    /// 64th word.
    Workgroup,
}

impl QuantizeLayout {
    /// The faster layout on `gpu`: per token on CPU adapters, whose barriers are slow; a
    /// workgroup per token on GPUs, where one invocation walking a decode step's only row
    /// would leave the device idle.
    pub fn for_gpu(gpu: &Gpu) -> Self {
        if gpu.caps.cpu { Self::PerToken } else { Self::Workgroup }
    }
}

impl Kernel for QuantizeLayout {
    const SHADER: &'static str = "quantize";
    fn defines(&self) -> Defines {
        match self {
            Self::PerToken => Defines::new(),
            Self::Workgroup => BTreeMap::from([("WORKGROUP".to_string(), String::new())]),
        }
    }
}

impl Quantize {
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        act: &ActivationQuant,
        x: (&wgpu::Buffer, u64),
        tokens: usize,
        cols: usize,
        q: &wgpu::Buffer,
        scales: &wgpu::Buffer,
    ) -> Result<()> {
        let stride = activation_words(cols);
        self.encode_strided(gpu, encoder, act, x, tokens, cols, (q, stride), scales).await
    }

    /// [`Quantize::encode`] with `q.1` words per row: at least `⌈cols/4⌉` for INT8 activations
    /// (the latent cache's rows, `r` bytes each when `4 | r`), [`activation_words`] for INT4.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_strided(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        act: &ActivationQuant,
        x: (&wgpu::Buffer, u64),
        tokens: usize,
        cols: usize,
        q: (&wgpu::Buffer, usize),
        scales: &wgpu::Buffer,
    ) -> Result<()> {
        let (q, words) = q;
        let least = if act.bits() == Bits::Int8 { cols.div_ceil(4) } else { activation_words(cols) };
        if words < least {
            return Err(RuntimeError::Shape(format!("{words} activation words per row for {cols} columns")));
        }
        let (x_bytes, q_bytes, s_bytes) =
            ((tokens * cols * 4) as u64, (tokens * words * 4) as u64, tokens as u64 * 4);
        require_size(x.0, x.1 + x_bytes, "quantized activations' input")?;
        require_size(q, q_bytes, "activation integers")?;
        require_size(scales, s_bytes, "activation scales")?;
        for (what, bytes) in [("activation input", x_bytes), ("activation integers", q_bytes)] {
            check_binding(gpu, what, bytes)?;
        }
        distinct(x.0, q, "activation input and integers")?;
        distinct(x.0, scales, "activation input and scales")?;
        let layout = QuantizeLayout::for_gpu(gpu);
        let defines = match layout {
            QuantizeLayout::PerToken => layout.defines(),
            QuantizeLayout::Workgroup => with_subgroups(gpu, layout.defines()),
        };
        let pipeline = gpu.pipeline(QuantizeLayout::SHADER, &defines).await?;
        let params = QuantizeParams {
            tokens: tokens as u32,
            cols: cols as u32,
            words: words as u32,
            qmax: act.bits().qmax(),
            step: act.step(),
            _pad: [0; 3],
        };
        let resources = vec![slice(x.0, x.1, x_bytes), slice(q, 0, q_bytes), slice(scales, 0, s_bytes)];
        let workgroups = match layout {
            QuantizeLayout::PerToken => groups(tokens, INVOCATIONS),
            QuantizeLayout::Workgroup => tokens as u32,
        };
        let (gx, gy) = grid(gpu, workgroups as u64)?;
        dispatch(gpu, encoder, &pipeline, "quantize", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        Ok(())
    }
}
