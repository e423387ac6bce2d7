//! Row copies between buffers, e.g. appending new key/value rows to a KV cache.
//!
//! `dst[dst_row + r, :] = src[src_row + r, :]` for `r < rows`, rows of `width` f32 (or any
//! 4-byte element), both buffers row-major with the same row width. Recorded as a plain buffer
//! copy (no shader, no binding-size limit); both buffers need `COPY_SRC`/`COPY_DST` usage, as
//! [`Gpu::storage_buffer`] and [`Gpu::zeroed_buffer`] give them.

use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};

/// Rows to copy.
#[derive(Clone, Copy, Debug)]
pub struct CopyRows {
    pub rows: usize,
    /// Elements (4 bytes each) per row.
    pub width: usize,
    pub src_row: usize,
    pub dst_row: usize,
}

impl CopyRows {
    /// The copy that appends `rows` new rows (at the start of `src`) to a cache holding `len`.
    pub fn append(rows: usize, width: usize, len: usize) -> Self {
        Self { rows, width, src_row: 0, dst_row: len }
    }

    /// Record the copy.
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
    ) -> Result<()> {
        gpu.check_lost()?;
        let row_bytes = (self.width * 4) as u64;
        let (from, to, size) =
            (self.src_row as u64 * row_bytes, self.dst_row as u64 * row_bytes, self.rows as u64 * row_bytes);
        if size == 0 {
            return Err(RuntimeError::Shape(format!("empty row copy {self:?}")));
        }
        if src == dst {
            return Err(RuntimeError::Shape("row copy within one buffer".into()));
        }
        if from + size > src.size() || to + size > dst.size() {
            return Err(RuntimeError::Shape(format!(
                "row copy {self:?} overruns a buffer ({} -> {} bytes)",
                src.size(),
                dst.size()
            )));
        }
        if !src.usage().contains(wgpu::BufferUsages::COPY_SRC)
            || !dst.usage().contains(wgpu::BufferUsages::COPY_DST)
        {
            return Err(RuntimeError::Shape("row copy needs COPY_SRC / COPY_DST buffers".into()));
        }
        encoder.copy_buffer_to_buffer(src, from, dst, to, size);
        Ok(())
    }
}

/// CPU reference of [`CopyRows`], for tests.
pub fn copy_rows_reference(src: &[f32], dst: &[f32], copy: CopyRows) -> Vec<f32> {
    let mut out = dst.to_vec();
    let w = copy.width;
    out[copy.dst_row * w..(copy.dst_row + copy.rows) * w]
        .copy_from_slice(&src[copy.src_row * w..(copy.src_row + copy.rows) * w]);
    out
}
