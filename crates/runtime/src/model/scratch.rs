//! Zeroed f32 activation buffers.

use crate::device::Gpu;
use crate::error::Result;

/// A zeroed f32 buffer of `len` elements.
pub async fn f32_buffer(gpu: &Gpu, label: &str, len: usize) -> Result<wgpu::Buffer> {
    gpu.zeroed_buffer(label, (len.max(1) * 4) as u64).await
}
