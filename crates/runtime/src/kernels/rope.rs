//! Rotary position embedding as in transformers' Llama (`rotate_half`, non-interleaved), applied
//! in place to queries and keys.
//!
//! For token `t` at position `p = pos0 + t`, each head vector `x` of length `hd = 2·half`
//! becomes `out[i] = x[i]·cos[p, i] − x[i + half]·sin[p, i]` and
//! `out[i + half] = x[i + half]·cos[p, i] + x[i]·sin[p, i]` for `i < half`.
//!
//! Buffers: `q` f32 `[tokens, heads, hd]`, `k` f32 `[tokens, kv_heads, hd]` (row-major, rotated
//! in place), `table` f32 `[max_positions, 2, half]` from [`rope_table`]: row `p` holds
//! `cos(p·inv_freq[0..half])` then `sin(p·inv_freq[0..half])`. Upload the table once. (Keys
//! rebuilt from a latent cache, each at its own position, are rotated by the attention kernel as
//! it reads them: `super::attention::Attention::rope`.)

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};

use super::Kernel;
use super::util::{WORKGROUP, check_binding, dispatch, distinct, grid, require_size, slice};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::shader::Defines;

/// Uniform block of `shaders/rope.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    half: u32,
    pos0: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

/// Shapes of one RoPE application.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    /// Tokens in `q` and `k`, at positions `pos0..pos0 + tokens`.
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Even head dimension.
    pub head_dim: usize,
    pub pos0: usize,
    /// Rows of the cos/sin table.
    pub max_positions: usize,
    /// Tokens' rows of `q` and `k` to bind, at least `tokens` (the buffers must hold them): a
    /// buffer's capacity for tensors that grow by one row each decode step, so every step binds
    /// the same ranges and reuses one bind group.
    pub bound: usize,
}

/// The cos/sin table transformers' `LlamaRotaryEmbedding` (default rope type) produces, in its
/// f32 steps: `inv_freq[i] = 1 / θ^(f32(2i) / hd)` (power and reciprocal rounded to f32),
/// `freq = f32(p) · inv_freq[i]` in f32, then `cos`/`sin` of that f32 argument rounded to f32.
/// Layout `[max_positions, 2, hd/2]`: row `p` is `cos(freq[p, 0..hd/2])` then `sin(…)`.
pub fn rope_table(theta: f32, head_dim: usize, max_positions: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            let power = f64::from(theta).powf(f64::from(exponent)) as f32;
            1.0 / power
        })
        .collect();
    let mut table = vec![0f32; max_positions * head_dim];
    for p in 0..max_positions {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = f64::from(p as f32 * f);
            table[p * 2 * half + i] = angle.cos() as f32;
            table[p * 2 * half + half + i] = angle.sin() as f32;
        }
    }
    table
}

/// The RoPE kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rope;

impl Kernel for Rope {
    const SHADER: &'static str = "rope";
    fn defines(&self) -> Defines {
        BTreeMap::new()
    }
}

impl Rope {
    /// Record the rotation of `q` and `k` (the same tokens) in place.
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: RopeShape,
        table: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
    ) -> Result<()> {
        let RopeShape { tokens, heads, kv_heads, head_dim, pos0, max_positions, bound } = shape;
        if tokens == 0 || heads == 0 || kv_heads == 0 || head_dim == 0 || head_dim % 2 != 0 || bound < tokens
        {
            return Err(RuntimeError::Shape(format!("rope over {shape:?}")));
        }
        let last = pos0 + tokens;
        if last > max_positions {
            return Err(RuntimeError::Shape(format!(
                "rope positions up to {last} exceed the table's {max_positions}"
            )));
        }
        distinct(q, k, "rope queries and keys")?;
        let half = head_dim / 2;
        let rows = tokens as u64 * (heads + kv_heads) as u64;
        let threads = rows * half as u64;
        if threads > u64::from(u32::MAX) || (max_positions * head_dim) as u64 > u64::from(u32::MAX) {
            return Err(RuntimeError::Shape(format!("rope over {shape:?} is too large")));
        }
        let q_bytes = (bound * heads * head_dim * 4) as u64;
        let k_bytes = (bound * kv_heads * head_dim * 4) as u64;
        let table_bytes = (max_positions * head_dim * 4) as u64;
        for (buffer, bytes, what) in
            [(q, q_bytes, "rope queries"), (k, k_bytes, "rope keys"), (table, table_bytes, "rope table")]
        {
            require_size(buffer, bytes, what)?;
            check_binding(gpu, what, bytes)?;
        }
        let resources = vec![slice(table, 0, table_bytes), slice(q, 0, q_bytes), slice(k, 0, k_bytes)];
        let pipeline = gpu.pipeline(Rope::SHADER, &Rope.defines()).await?;
        let params = Params {
            tokens: tokens as u32,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            half: half as u32,
            pos0: pos0 as u32,
            _pad: [0; 3],
        };
        let (gx, gy) = grid(gpu, threads.div_ceil(u64::from(WORKGROUP)))?;
        dispatch(gpu, encoder, &pipeline, "rope", bytemuck::bytes_of(&params), resources, (gx, gy, 1));
        Ok(())
    }
}

/// CPU reference of [`Rope`] on one tensor `x` `[tokens, heads, hd]` (f64 arithmetic on the
/// table's f32 values), for tests.
pub fn rope_reference(
    x: &[f32],
    table: &[f32],
    tokens: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for t in 0..tokens {
        let row = (pos0 + t) * head_dim;
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for i in 0..half {
                let (c, s) = (f64::from(table[row + i]), f64::from(table[row + half + i]));
                let (a, b) = (f64::from(x[base + i]), f64::from(x[base + half + i]));
                out[base + i] = (a * c - b * s) as f32;
                out[base + half + i] = (b * c + a * s) as f32;
            }
        }
    }
    out
}
