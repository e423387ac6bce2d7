//! A typed GPU tensor: a buffer with the shape and element encoding of what it holds.
//!
//! Weights keep the encoding they are stored in (`f32`, `f16`, `bf16`, packed `i8` / `i4` with
//! rows padded to whole `u32` words, see [`pocketvlm_format::quant::pack`]); kernels widen
//! 16-bit floats and unpack integers as they read them. Activations are `f32`.

use pocketvlm_format::Encoding;

use crate::device::Gpu;
use crate::error::{Result, RuntimeError};
use crate::memory::DeviceBuffer;

/// A GPU buffer holding a row-major tensor of `shape` in `encoding`.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buffer: DeviceBuffer,
    pub shape: Vec<usize>,
    pub encoding: Encoding,
}

impl Tensor {
    /// Upload `bytes`, which must be exactly a tensor of `shape` in `encoding`.
    pub async fn upload(
        gpu: &Gpu,
        label: &str,
        shape: Vec<usize>,
        encoding: Encoding,
        bytes: &[u8],
    ) -> Result<Self> {
        let want = encoding.byte_len(&shape);
        if bytes.len() != want {
            return Err(RuntimeError::Shape(format!(
                "{label}: {} bytes for a {} tensor of shape {shape:?} ({want} expected)",
                bytes.len(),
                encoding.tag()
            )));
        }
        let buffer = gpu.storage_buffer(label, bytes).await?;
        Ok(Self { buffer, shape, encoding })
    }

    /// Upload f32 values.
    pub async fn from_f32(gpu: &Gpu, label: &str, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        Self::upload(gpu, label, shape, Encoding::F32, bytemuck::cast_slice(values)).await
    }

    /// A zeroed f32 tensor (activations).
    pub async fn zeros(gpu: &Gpu, label: &str, shape: Vec<usize>) -> Result<Self> {
        let numel: usize = shape.iter().product();
        let buffer = gpu.zeroed_buffer(label, (numel.max(1) * 4) as u64).await?;
        Ok(Self { buffer, shape, encoding: Encoding::F32 })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The last dimension (a matrix's columns; a vector's length).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Rows of the tensor seen as a matrix `[rows, cols]`.
    pub fn rows(&self) -> usize {
        self.numel().checked_div(self.cols()).unwrap_or(0)
    }

    /// Bytes of one row in this encoding (packed rows include their padding).
    pub fn row_bytes(&self) -> u64 {
        self.encoding.byte_len(&[1, self.cols()]) as u64
    }

    /// Bytes of the data (the buffer may be padded to a whole word).
    pub fn bytes(&self) -> u64 {
        self.encoding.byte_len(&self.shape) as u64
    }

    /// `Err(Shape)` unless this tensor has `shape`.
    pub fn expect_shape(&self, what: &str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(RuntimeError::Shape(format!("{what}: shape {:?}, expected {shape:?}", self.shape)));
        }
        Ok(())
    }

    /// `Err(Shape)` unless this tensor holds f32 values.
    pub fn expect_f32(&self, what: &str) -> Result<()> {
        if self.encoding != Encoding::F32 {
            return Err(RuntimeError::Shape(format!("{what} is {}, expected f32", self.encoding.tag())));
        }
        Ok(())
    }
}
