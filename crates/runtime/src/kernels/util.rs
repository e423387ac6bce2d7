//! Helpers shared by the kernels: shape and binding checks, splitting tensors that exceed one
//! storage binding into aligned chunks, 2-D dispatch grids for large element counts, and
//! recording one dispatch.

use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::pipelines::Pipeline;
use crate::shader::Defines;

/// Threads per workgroup of the row-wise and elementwise kernels.
pub const WORKGROUP: u32 = 256;

/// `defines` plus `SUBGROUPS` where `gpu` reduces through subgroups
/// ([`crate::Capabilities::subgroup_reductions`]): the kernel's workgroup reductions then go
/// through them (`shaders/lib/subgroups.wgsl`: one or two barriers instead of a tree's).
pub fn with_subgroups(gpu: &Gpu, mut defines: Defines) -> Defines {
    if gpu.caps.subgroup_reductions() {
        defines.insert("SUBGROUPS".into(), String::new());
    }
    defines
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `Err(Shape)` unless `buffer` holds at least `bytes` bytes.
pub fn require_size(buffer: &wgpu::Buffer, bytes: u64, what: &str) -> Result<()> {
    if buffer.size() < bytes {
        return Err(RuntimeError::Shape(format!(
            "{what} needs {bytes} bytes but its buffer holds {}",
            buffer.size()
        )));
    }
    Ok(())
}

/// `Err(BindingTooLarge)` if one binding of `bytes` exceeds the device limit.
pub fn check_binding(gpu: &Gpu, what: &str, bytes: u64) -> Result<()> {
    let limit = gpu.caps.max_storage_binding;
    if bytes > limit {
        return Err(RuntimeError::BindingTooLarge { what: what.into(), bytes, limit });
    }
    Ok(())
}

/// `Err(Shape)` if `a` and `b` are the same buffer (one dispatch may not bind a buffer both
/// read-only and read-write).
pub fn distinct(a: &wgpu::Buffer, b: &wgpu::Buffer, what: &str) -> Result<()> {
    if a == b {
        return Err(RuntimeError::Shape(format!("{what} must be different buffers")));
    }
    Ok(())
}

/// Rows per chunk when several tensors with `row_bytes` bytes per row are split into the same
/// row ranges: every binding of a chunk fits the device limit, and every chunk's byte offset
/// (`r0 · row_bytes`) is a multiple of the storage offset alignment. Returns `rows` when no
/// split is needed.
pub fn rows_per_chunk(gpu: &Gpu, what: &str, rows: usize, row_bytes: &[u64]) -> Result<usize> {
    let limit = gpu.caps.max_storage_binding;
    if row_bytes.iter().all(|&b| b * rows as u64 <= limit) {
        return Ok(rows);
    }
    let align = u64::from(gpu.caps.storage_offset_alignment.max(4));
    let mut step = 1u64;
    let mut fit = u64::MAX;
    for &b in row_bytes {
        let s = align / gcd(b, align);
        step = step / gcd(step, s) * s;
        fit = fit.min(limit / b.max(1));
    }
    let chunk = fit / step * step;
    if chunk == 0 {
        let widest = row_bytes.iter().copied().max().unwrap_or(0);
        return Err(RuntimeError::BindingTooLarge {
            what: format!("one aligned chunk of {what}"),
            bytes: step * widest,
            limit,
        });
    }
    Ok((chunk as usize).min(rows))
}

/// Iterate `(start, len)` over `0..total` in steps of `chunk`.
pub fn chunks(total: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..total).step_by(chunk.max(1)).map(move |s| (s, chunk.min(total - s)))
}

/// A grid of `workgroups` groups laid out in two dimensions when one dimension is not enough.
/// Shaders recover the linear index as `wg.y · num_workgroups.x + wg.x` (`workgroup_index` in
/// `shaders/lib/grid.wgsl`) and must ignore indices past their work.
pub fn grid(gpu: &Gpu, workgroups: u64) -> Result<(u32, u32)> {
    let max = u64::from(gpu.caps.max_workgroups_per_dimension);
    if workgroups <= max {
        return Ok((workgroups as u32, 1));
    }
    let y = workgroups.div_ceil(max);
    if y > max {
        return Err(RuntimeError::Shape(format!("{workgroups} workgroups exceed the dispatch limit")));
    }
    Ok((max as u32, y as u32))
}

/// A binding of `size` bytes of `buffer` starting at `offset`.
pub fn slice(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(size.next_multiple_of(4)),
    })
}

/// Record one dispatch of `pipeline`: `params` as the uniform at binding 0 and `resources` at
/// bindings 1, 2, … (see [`Encoder::dispatch`]).
pub fn dispatch(
    gpu: &Gpu,
    encoder: &mut Encoder,
    pipeline: &Pipeline,
    label: &str,
    params: &[u8],
    resources: Vec<wgpu::BindingResource<'_>>,
    workgroups: (u32, u32, u32),
) {
    encoder.dispatch(gpu, pipeline, label, params, resources, workgroups);
}
