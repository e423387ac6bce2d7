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

/// Most query heads one invocation takes in the kernels that share a key/value head's loads
/// between them ([`head_set`]).
const MAX_HEAD_SET: usize = 4;

/// The query heads one invocation takes where the heads reading one key/value head (grouped-query
/// attention) share what it loads: the absorbed `v_up` (`latent`, each weight word loaded and
/// widened once for the set) and the per-query attention over long contexts (`attention`, each
/// key read and rotated and each value row read once for the set). A CPU adapter loads storage
/// lane by lane, so what one invocation loads once it does not load `set` times. The largest
/// divisor of `heads / kv_heads` up to [`MAX_HEAD_SET`] (an invocation keeps each head's
/// accumulators, written out side by side in the shaders); their `HEAD_SET` define. Each head's
/// operations and their order stay those of one head alone, so the results are the same bits.
pub(crate) fn head_set(heads: usize, kv_heads: usize) -> usize {
    let per_kv = (heads / kv_heads.max(1)).max(1);
    (1..=MAX_HEAD_SET.min(per_kv)).rev().find(|n| per_kv.is_multiple_of(*n)).unwrap_or(1)
}
