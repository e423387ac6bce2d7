//! The kernels of the low-bit integer contract ([`pocketvlm_format::quant`]): online rotations
//! ([`Rotate`]), per-token activation quantization ([`Quantize`]) and the integer product with
//! its dequantization ([`QMatmul`]). A decode step's token gets the first two in one dispatch
//! ([`super::rotate_quantize`]).
//!
//! One file each: the rotations (`rotate.rs`), the quantization (`quantize.rs`), the product
//! (`matmul.rs`) and the weights' layout on the GPU that the product reads (`weights.rs`).
//!
//! **Exactness.** Every step follows the contract's order of f32 operations, each one a
//! correctly rounded add, subtract or multiply (WGSL guarantees those), the reciprocal of the
//! activation scale is computed by integer long division and integer-to-float conversions are
//! done in two exact halves, so the activation integers and scales, and the outputs of
//! per-channel and grouped layers, equal the CPU reference bit for bit — on drivers that do not
//! fuse a multiply and a following add into one `fma` (SPIR-V allows it without `NoContraction`,
//! which WGSL cannot express). The tests compare bits on lavapipe and SwiftShader.
//!
//! **Limits.** On CPU adapters all three kernels give each token (rotations, quantization) or
//! each block of output columns (product) to one invocation, with no workgroup memory and no
//! barriers, so any width fits and CPU adapters run them at full width. GPUs, where a decode
//! step's single token would leave all but a few invocations idle, get a 64-invocation workgroup
//! per token for the quantization ([`QuantizeLayout`]) and 16 invocations per column quad for
//! the one-token product ([`QMatmul::split_k`]); each uses at most 1 KiB of workgroup memory
//! whatever the width (WebGPU's default allows 16 KiB and 256 invocations). Buffers larger than
//! one storage binding are split by the caller ([`crate::model::linear`]) into row passes and
//! here into column panels.
//!
//! **Weight layout.** A quantized weight keeps its encoding (`i8`/`i4` words, the scales as
//! stored) but not its row order: [`QuantWeightsGpu::upload`] lays the words out in column
//! [`tile`]s, so the product's invocations, four columns each, read neighbouring memory (CPU
//! adapters run invocations as SIMD lanes; GPUs coalesce such loads), and each run of
//! [`TILE_QUADS`] invocations streams one contiguous piece of memory from its first word to its
//! last. Against row-major weights in Chromium's SwiftShader: the 49 152-column one-token product
//! 0.11 → 0.76 G MAC/s, the vision tower's `[1024, 768]·[768, 768]ᵀ` 0.47 → 1.22 (BENCHMARKS.md,
//! Speed V); against columns interleaved across the whole width (every word `k` of all columns
//! together), weights streamed from memory as a decode step reads them (Speed IX). The tiled
//! words live in a storage buffer, or on CPU adapters in a texture ([`TiledWords`], Speed XI).

mod matmul;
mod quantize;
mod rotate;
mod weights;

pub use matmul::{FLOAT_SUM_QUADS, FLOAT_SUM_TOKENS, MAX_PARTS, QMatmul, QuantizedRows, SPLIT_K_LANES};
pub use quantize::{Quantize, QuantizeLayout};
pub use rotate::{ROTATE_LEVEL_STAGES, Rotate, RotationTable};
pub(super) use weights::texture_defines;
pub use weights::{
    PAD_FROM_WORDS, QuantWeightsGpu, TEXTURE_WIDTH, TILE_QUADS, TiledWords, WeightLayout, tile,
};

/// Invocations per workgroup of the three kernels (one token or column block each).
const INVOCATIONS: usize = 64;

/// Activation words per token for `cols` values: i8 lanes, four per word, rounded up to what a
/// product over `cols` columns reads — an INT8 weight's words per column ([`WeightLayout`]: whole
/// groups of four words, 16 values) or two per INT4 weight word (each of eight values, whole
/// groups of four: 32 values) — so every weight word has its activation words within the row,
/// and rows start on 16 bytes for four-word loads.
pub fn activation_words(cols: usize) -> usize {
    8 * cols.div_ceil(32)
}

/// Words a buffer of `rows` quantized rows of `stride` words must hold for the products over
/// `cols` columns to read them all: the last row's reads reach [`activation_words`]`(cols)`.
pub fn rows_words(rows: usize, stride: usize, cols: usize) -> usize {
    rows * stride + activation_words(cols).saturating_sub(stride)
}
