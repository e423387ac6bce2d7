//! Low-rank factorisation of linear layers in a loss-aware coordinate system.
//!
//! Every recipe is the same three steps with a different change of coordinates:
//!
//! 1. transform the weight `W` (`[out, in]`, for QKV the stack `[W_q; W_k; W_v]`) into
//!    `W̃ = P_out · W · P_in`, where the Frobenius norm of a change of `W̃` measures what the
//!    recipe cares about;
//! 2. take the SVD `W̃ = U Σ Vᵀ` and keep a set `S` of components (chosen by [`crate::allocate`]);
//! 3. map back: `W ≈ up · down` with `up = P_out⁻¹ U_S Σ_S^(1−β)` (`[out, r]`) and
//!    `down = Σ_S^β V_Sᵀ P_in⁻¹` (`[r, in]`). At full rank this is `W` exactly.
//!
//! The recipes (`A = E[x xᵀ]` over calibration tokens of the layer input, `G = E[g gᵀ]` of the
//! gradient of the loss with respect to the layer output):
//!
//! * **svd**: `P_in = P_out = I`; minimises `‖ΔW‖_F`.
//! * **asvd** (activation-aware SVD): `P_in = diag(s)`, `s_j = E|x_j|^α` (α = 0.5 by default),
//!   so input channels with large activations weigh more.
//! * **svd-llm**: `P_in = L` with `L Lᵀ = A` (Cholesky, damped when `A` is not positive
//!   definite). Then `‖ΔW L‖_F² = E‖ΔW x‖²`: truncation minimises the output error on the
//!   calibration data, and dropping component `i` costs exactly `σ_i²`.
//! * **qsvd**: the svd-llm whitening applied to the joint `[W_q; W_k; W_v]` (split back by
//!   `[d_q, d_kv, d_kv]` rows), with each singular component scored by its first-order effect on
//!   the loss: `score_i = σ_i · RMS_n(ũ_iᵀ ∂L_n/∂W̃ ṽ_i)` over calibration samples `n`, where
//!   `∂L/∂W̃ = P_out⁻ᵀ ∂L/∂W P_in⁻ᵀ` (so `ũᵀ∂L/∂W̃ ṽ = Σ_t (g_t·P_out⁻¹ũ)(x_t·P_in⁻ᵀṽ)`).
//!   Components are kept by global top-k score across layers (any index set, any rank per layer).
//! * **laser** (curvature-weighted): with the K-FAC approximation of the Fisher,
//!   `F ≈ A ⊗ G`, the loss increase of a change is `½ vec(ΔW)ᵀ F vec(ΔW) = ½‖G^½ ΔW L_A‖_F²`,
//!   so `P_out = G^½` (damped), `P_in = L_A`; truncation of `G^½ W L_A` is loss-optimal under that
//!   model and dropping component `i` costs `½σ_i²`, which is directly comparable across layers:
//!   the allocator minimises the total predicted loss increase under the budget, and may keep a
//!   layer dense when its low-rank form would cost more parameters than the dense matrix.

pub mod decompose;
pub mod linalg;

pub use decompose::{Decomposition, GroupStats, Method, Xf};
