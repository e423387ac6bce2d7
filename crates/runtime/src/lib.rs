//! The PocketVLM runtime: a wgpu engine whose WGSL kernels (in `shaders/`) run unchanged natively
//! (Vulkan, Metal, DX12) and in the browser (WebGPU).

pub mod bench;
pub mod device;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod parity;
pub mod pipelines;
pub mod shader;
pub mod tensor;

pub use device::{Capabilities, DeviceOptions, Gpu, Pretend};
pub use encoder::Encoder;
pub use error::{Result, RuntimeError};
pub use memory::DeviceBuffer;
