//! GPU kernels. Each kernel is a small type implementing [`Kernel`] (its shader and variant) plus
//! an `encode` method that records its dispatches; buffer layouts are documented on each type.

pub mod argmax;
pub mod attention;
pub mod bf16_rows;
pub mod copy;
pub mod elementwise;
pub mod embed;
pub mod latent;
pub mod matmul;
pub mod norm;
pub mod patch_embed;
pub mod pixel_shuffle;
pub mod quant;
pub mod rope;
pub mod rotate_quantize;
pub mod util;

use crate::shader::Defines;

/// A kernel: which shader it runs and with which preprocessor defines.
pub trait Kernel {
    /// File stem of the shader in `shaders/`.
    const SHADER: &'static str;
    /// The variant's defines (the pipeline cache key together with [`Kernel::SHADER`]).
    fn defines(&self) -> Defines;
}

/// Number of workgroups needed to cover `n` items with `per_group` items each.
pub fn groups(n: usize, per_group: usize) -> u32 {
    n.div_ceil(per_group) as u32
}
