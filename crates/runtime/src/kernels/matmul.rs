//! Tiled f32 matmul against a weight in `[out, in]` layout, with optional bias.
//!
//! `y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`. Buffers: `x` f32 `[m, k]` row-major, `w` f32
//! `[n, k]` row-major, `bias` f32 `[n]`, `y` f32 `[m, n]` row-major.
//!
//! A weight larger than the device's storage-binding limit is processed in row chunks: each
//! dispatch binds rows `c0..c0+nc` of `w` at a byte offset (a multiple of the device's offset
//! alignment) and writes columns `c0..c0+nc` of `y`.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::{Kernel, groups};
use crate::device::Gpu;
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

/// The matmul kernel; `bias` selects the variant.
pub struct Matmul {
    pub bias: bool,
}

impl Kernel for Matmul {
    const SHADER: &'static str = "matmul";
    fn defines(&self) -> Defines {
        let mut d = BTreeMap::new();
        if self.bias {
            d.insert("BIAS".to_string(), String::new());
        }
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

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Rows of `w` per dispatch: as many as fit one binding, a multiple of the count that keeps
/// every chunk's byte offset aligned.
pub fn weight_rows_per_chunk(gpu: &Gpu, n: usize, k: usize) -> Result<usize> {
    let row_bytes = (k * 4) as u64;
    let limit = gpu.caps.max_storage_binding;
    if row_bytes * n as u64 <= limit {
        return Ok(n);
    }
    let align = u64::from(gpu.caps.storage_offset_alignment.max(4));
    let step = align / gcd(row_bytes, align);
    let rows = (limit / row_bytes) / step * step;
    if rows == 0 {
        return Err(RuntimeError::BindingTooLarge {
            what: format!("one aligned chunk of a [{n}, {k}] weight"),
            bytes: step * row_bytes,
            limit,
        });
    }
    Ok(rows as usize)
}

impl Matmul {
    /// Record `y = x · wᵀ (+ bias)` into `encoder`.
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        shape: MatmulShape,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let MatmulShape { m, n, k } = shape;
        if bias.is_some() != self.bias {
            return Err(RuntimeError::Shape("bias buffer does not match the kernel variant".into()));
        }
        if m == 0 || n == 0 || k == 0 {
            return Err(RuntimeError::Shape(format!("empty matmul {m}x{k} · {n}x{k}")));
        }
        let limit = gpu.caps.max_storage_binding;
        for (what, bytes) in [("matmul input", (m * k * 4) as u64), ("matmul output", (m * n * 4) as u64)] {
            if bytes > limit {
                return Err(RuntimeError::BindingTooLarge { what: what.into(), bytes, limit });
            }
        }
        if groups(m, TILE) > gpu.caps.max_workgroups_per_dimension {
            return Err(RuntimeError::Shape(format!("{m} rows exceed the dispatch limit")));
        }
        let pipeline = gpu.pipelines.get(gpu, Self::SHADER, &self.defines()).await?;
        let layout = pipeline.get_bind_group_layout(0);
        let chunk = weight_rows_per_chunk(gpu, n, k)?;
        let mut c0 = 0;
        while c0 < n {
            let nc = chunk.min(n - c0);
            let params = Params {
                m: m as u32,
                n: nc as u32,
                k_dim: k as u32,
                ldy: n as u32,
                col_offset: c0 as u32,
                _pad: [0; 3],
            };
            let uniform = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("matmul params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let w_binding = wgpu::BufferBinding {
                buffer: w,
                offset: (c0 * k * 4) as u64,
                size: wgpu::BufferSize::new((nc * k * 4) as u64),
            };
            let mut entries = vec![
                wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: x.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: wgpu::BindingResource::Buffer(w_binding) },
                wgpu::BindGroupEntry { binding: 3, resource: y.as_entire_binding() },
            ];
            if let Some(b) = bias {
                entries.push(wgpu::BindGroupEntry { binding: 4, resource: b.as_entire_binding() });
            }
            let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("matmul"),
                layout: &layout,
                entries: &entries,
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("matmul"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups(nc, TILE), groups(m, TILE), 1);
            drop(pass);
            c0 += nc;
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
