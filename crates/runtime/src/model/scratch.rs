//! GPU scratch: zeroed activation buffers, and [`Scratch`], the buffers of a pass kept for the
//! next one.

use std::collections::BTreeMap;

use crate::device::Gpu;
use crate::error::Result;
use crate::kernels::quant::rows_words;
use crate::memory::DeviceBuffer;

/// A zeroed f32 buffer of `len` elements.
pub async fn f32_buffer(gpu: &Gpu, label: &str, len: usize) -> Result<DeviceBuffer> {
    gpu.zeroed_buffer(label, (len.max(1) * 4) as u64).await
}

/// Buffers by role (a pass's activations, the quantized layers' rotated rows, activation integers
/// and scales, factored layers' rank-wide intermediate, …), each grown when a pass needs more and
/// otherwise reused: by consecutive layers of one pass (the dispatches of one encoder run in
/// order) and, kept by a generation, by every decode step after it, which then allocates nothing.
/// A reused buffer holds what the last user left; every kernel writes what it later reads.
#[derive(Default)]
pub struct Scratch {
    buffers: BTreeMap<&'static str, DeviceBuffer>,
}

impl Scratch {
    /// A buffer of at least `bytes` bytes for `role`.
    pub async fn bytes(&mut self, gpu: &Gpu, role: &'static str, bytes: u64) -> Result<DeviceBuffer> {
        match self.buffers.get(role) {
            Some(b) if b.size() >= bytes => Ok(b.clone()),
            _ => {
                let b = gpu.zeroed_buffer(role, bytes).await?;
                self.buffers.insert(role, b.clone());
                Ok(b)
            }
        }
    }

    /// An f32 buffer of at least `len` values for `role`.
    pub async fn f32(&mut self, gpu: &Gpu, role: &'static str, len: usize) -> Result<DeviceBuffer> {
        self.bytes(gpu, role, (len.max(1) * 4) as u64).await
    }

    /// Integers (`stride` words per row, and the words past the last row that products over its
    /// `cols` values read, [`rows_words`]) and scales of `rows` quantized latent rows.
    pub async fn latent_rows(
        &mut self,
        gpu: &Gpu,
        rows: usize,
        stride: usize,
        cols: usize,
    ) -> Result<(DeviceBuffer, DeviceBuffer)> {
        let words = (rows_words(rows.max(1), stride, cols) * 4) as u64;
        Ok((
            self.bytes(gpu, "latent integers", words).await?,
            self.bytes(gpu, "latent scales", (rows.max(1) * 4) as u64).await?,
        ))
    }

    /// Bytes of all buffers held.
    pub fn held_bytes(&self) -> u64 {
        self.buffers.values().map(|b| b.size()).sum()
    }
}
