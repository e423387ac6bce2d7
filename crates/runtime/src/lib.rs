//! The PocketVLM runtime: a wgpu engine whose WGSL kernels (in `shaders/`) run unchanged natively
//! (Vulkan, Metal, DX12) and in the browser (WebGPU).

pub mod device;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod model;
pub mod pipelines;
pub mod shader;

pub use device::{Capabilities, DeviceOptions, Gpu};
pub use error::{Result, RuntimeError};
