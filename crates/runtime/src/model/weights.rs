//! Dense weights on the GPU: every tensor of a model widened to f32 and uploaded once.

use std::collections::HashMap;

use pocketvlm_format::ModelData;

use crate::device::Gpu;
use crate::error::{Result, RuntimeError};

/// GPU buffers of a model's tensors, by Hugging Face name.
pub struct Weights {
    buffers: HashMap<String, wgpu::Buffer>,
    bytes: u64,
}

impl Weights {
    /// Upload every tensor of `data` as f32 (f16/bf16 widen exactly).
    pub async fn upload(gpu: &Gpu, data: &ModelData) -> Result<Self> {
        let mut buffers = HashMap::new();
        let mut bytes = 0;
        for entry in &data.manifest.tensors {
            let values = data.tensor_f32(&entry.name).map_err(|e| RuntimeError::Shape(e.to_string()))?;
            let buffer = gpu.storage_buffer(&entry.name, bytemuck::cast_slice(&values)).await?;
            bytes += buffer.size();
            buffers.insert(entry.name.clone(), buffer);
        }
        Ok(Self { buffers, bytes })
    }

    /// The buffer of tensor `name`.
    pub fn get(&self, name: &str) -> Result<&wgpu::Buffer> {
        self.buffers.get(name).ok_or_else(|| RuntimeError::Shape(format!("no weight named {name:?}")))
    }

    /// Bytes held on the GPU.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
