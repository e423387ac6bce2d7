//! The low-bit arithmetic contract: packed integer weights, their scales, online rotations and
//! the exact computation of a quantized linear layer. The compressor writes models that follow
//! it, the GPU kernels implement it, and [`linear::QuantLinear::forward`] is its CPU reference.
//!
//! # A quantized linear layer, `y = W x + b`, per input token `x` (`cols` f32 values)
//!
//! Weights are symmetric integers `q_w[o][j] ∈ [−qmax_w, qmax_w]` (`qmax` = 127 for INT8, 7 for
//! INT4) with f32 scales `s_w[o][g]`, one per output channel `o` (`g = 0`, group = `cols`) or per
//! group of 64 or 128 input columns (INT4 only), so `W[o][j] ≈ s_w[o][j / group] · q_w[o][j]`.
//! Packed layouts: [`pack`]. Scales may be stored as f16 and are widened exactly to f32.
//!
//! 1. **Online transforms.** For each of the layer's online rotations, in the order listed,
//!    `x ← R x` with the exact order of f32 operations in [`rotation`].
//! 2. **Token range.** `M = max_j |x_j|` (exact).
//! 3. **Activation scale.** `s_a = M · k` in f32 (one multiply, round to nearest even), where
//!    `k = f32(ρ / qmax_a)` is the layer's constant for clip ratio `ρ ∈ (0, 1]`
//!    ([`activation::ActivationQuant::step`]). If `s_a` is zero or subnormal the token's
//!    integers are all 0 and `s_a = 0` (so `y = b`).
//! 4. **Reciprocal.** `r = 1 / s_a`, **correctly rounded** f32 (WGSL's `/` allows 2.5 ULP, so
//!    a kernel computes this exactly — e.g. refine with an exact Dekker product, or divide the
//!    24-bit mantissas with integer long division — or receives it from the host).
//! 5. **Activation integers.** `q_a[j] = clamp(roundTiesEven(x_j · r), −qmax_a, qmax_a)`: the
//!    product is one correctly rounded f32 multiply, and the rounding mode is **round half to
//!    even** (WGSL's `round`, Rust's `f32::round_ties_even`).
//! 6. **Integer accumulation.** For each output `o` and group `g`,
//!    `acc[o][g] = Σ_{j ∈ g} q_w[o][j] · q_a[j]` in i32. It is exact (products and sums of
//!    integers, in any order): the manifest only admits layers with
//!    `group · qmax_w · qmax_a ≤ 2³¹ − 1`.
//! 7. **Dequantization**, in this order, every step one correctly rounded f32 operation:
//!    `t_g = f32(acc[o][g]) · s_w[o][g]` (conversion round to nearest even; exact while
//!    `|acc| < 2²⁴`), `u = t_0 + t_1 + … ` left to right (per-channel: `u = t_0`),
//!    `y_o = u · s_a`, then `y_o = y_o + b_o` when the layer has a bias.
//!
//! A kernel that follows these steps matches the reference bit for bit for per-channel scales;
//! one that reduces groups in another order is within a few float roundings of step 7.
//!
//! # A quantized lookup table (the token embeddings)
//!
//! Row `t` of a table `[rows, cols]` with integers `q[t][j]` and one f32 scale `s[t]` per row
//! is `e[j] = f32(q[t][j]) · s[t]`: the integer converts exactly and the product is one
//! correctly rounded f32 multiply ([`section::QuantizedTable::lookup`]).
//!
//! # The latent K/V cache
//!
//! A joint-QKV layer's latent `c = down · x` is the input of its `q_up`, `k_up` and `v_up`
//! factors, which are quantized layers with INT8 activations in every scheme (W4A4 included),
//! no online transforms and the same clip ratio: steps 2–5 give all three the same integers
//! `q_a` and scale `s_a`. Those (`rank` i8 values and one f32 per token) are the cache entry;
//! K and V of a past token are steps 6–7 of `k_up` / `v_up` applied to the cached pair.
//!
//! Values need not be rebuilt per token: with softmax weights `p_t` (`Σ p_t = 1`), attention's
//! `Σ_t p_t v_t` equals `v_up` applied to the float latent `ĉ = Σ_t p_t s_a,t f32(q_a,t)`, per
//! group `Σ_{j∈g} f32(q_w[o][j]) ĉ_j` times `s_w[o][g]`, groups summed left to right, then the bias
//! ([`linear::QuantLinear::absorbed`]). That "absorbed" form is exact in real arithmetic; its f32
//! roundings differ from the per-token form (and between implementations that sum in another
//! order), so it is compared within a tolerance, not bit for bit.
//!
//! # What is where
//!
//! * [`pack`]: [`pack::Bits`] and the INT8 / INT4 word layouts (feeding `dot4I8Packed`);
//! * [`hadamard`]: Hadamard matrices (Sylvester, Paley I and II);
//! * [`rotation`]: the fast orthogonal rotations (Kronecker or block-diagonal, seeded signs);
//! * [`activation`]: steps 2–5;
//! * [`linear`]: the reference layer (all steps) and the weight-side checks;
//! * [`section`]: the manifest's `quantization` section;
//! * [`error`]: the typed errors ([`QuantError`]).

pub mod activation;
pub mod dot;
pub mod error;
pub mod hadamard;
pub mod linear;
pub mod pack;
pub mod rotation;
pub mod section;

pub use activation::ActivationQuant;
pub use error::QuantError;
pub use linear::{QuantLinear, QuantWeights};
pub use pack::Bits;
pub use rotation::{Construction, Rotation};
pub use section::{
    ActivationSpec, Quantization, QuantizedLayer, QuantizedTable, RotationSpec, Scheme, scale_name,
};
