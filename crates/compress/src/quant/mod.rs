//! Low-bit quantization on the compressor's side. The arithmetic contract (packed layouts,
//! activation quantization, the reference quantized linear) lives in
//! [`pocketvlm_format::quant`]; this module chooses the weight integers and scales and turns a
//! float model into a quantized one ([`model`]), also from a written float model directory
//! ([`dir`]).

pub mod dir;
pub mod gptq;
pub mod model;
pub mod moments;
pub mod weights;
pub mod widths;

pub use dir::quantize_dir;
pub use model::{QuantOptions, QuantParts, QuantizedModel, quantize_model, quantize_tensors};
pub use weights::{ClipSearch, quantize_weights};
