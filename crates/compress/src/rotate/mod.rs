//! Offline rotations (QuaRot-style) that leave the float model exactly equivalent.
//!
//! **Residual stream.** For an orthogonal `R` (`d × d`, a randomized Hadamard rotation from
//! [`pocketvlm_format::quant::rotation`]) the decoder can carry `h' = R h` instead of `h`:
//!
//! * RMSNorm without its gain commutes with `R` (`‖R h‖ = ‖h‖`), so each gain `γ` is first
//!   folded into the weights that read the normalised vector: `W ← W diag(γ)`, `γ ← 1`
//!   (`input_layernorm` into Q/K/V, the joint `qkv_down`, or `q_proj` and `kv_down`, `post_attention_layernorm` into
//!   `gate_proj`/`up_proj` or their `down` factors, the final `norm` into `lm_head`);
//! * writers of the residual get `W ← R W` (each column rotated): token embeddings (rows
//!   `e ← R e`), the connector projection, `o_proj`, and `down_proj` (its `up` factor when
//!   factored);
//! * readers get `W ← W Rᵀ` (each row rotated): Q/K/V (or `qkv_down`, or `q_proj` and `kv_down`), `gate_proj`/`up_proj`
//!   (or their `down` factors) and `lm_head`.
//!
//! Then every layer computes `W Rᵀ · R n(h) = W n(h)`: logits are unchanged up to float rounding.
//! With tied embeddings the shared tensor is rotated once and serves both ends when the final
//! gain is all ones; otherwise `lm_head` is untied first (a gain cannot be folded into a shared
//! tensor without changing the embeddings).
//!
//! **Latents.** A factored layer `up · down` computes the latent `c = down · x`; for any
//! orthogonal `U` (`r × r`), `down ← U down`, `up ← up Uᵀ` gives the same layer while mixing the
//! latent's coordinates (spreading its outliers before it is quantized). `U` is Haar-random:
//! the `Q` of a QR factorisation of a Gaussian matrix, columns signed so `diag(R) > 0`.
//!
//! The vision tower (LayerNorm, whose mean subtraction does not commute with a rotation) is left
//! in its own basis; its quantized layers use online rotations instead.

use faer::Mat;
use pocketvlm_format::architecture::{EMBED_TOKENS, LM_HEAD};
use pocketvlm_format::compression::{
    Latent, LayerRanks, kv_factor_names, linear_factor_names, qkv_factor_names, text_layer_prefix,
};
use pocketvlm_format::quant::rotation::SplitMix64;
use pocketvlm_format::quant::{Construction, Rotation, RotationSpec};
use pocketvlm_format::{Compression, ModelConfig};

use crate::error::Result;
use crate::model::weights::{MemoryStore, stored, stored_mut};

/// How to rotate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RotateOptions {
    pub construction: Construction,
    /// Seed of the residual rotation's signs; latent rotations use `seed + 1 + layer index`.
    pub seed: u32,
    /// Rotate the low-rank latents too.
    pub latents: bool,
}

impl Default for RotateOptions {
    fn default() -> Self {
        Self { construction: Construction::Kronecker, seed: 0, latents: true }
    }
}

/// `W ← W Rᵀ`: rotate every row of a `[rows, d]` tensor (in f64).
pub(crate) fn rotate_rows(store: &mut MemoryStore, name: &str, r: &Rotation) -> Result<()> {
    let (_, values) = stored_mut(store, name)?;
    rotate_values(values, r)
}

/// `W ← W Rᵀ` on row-major values whose rows are `r.size()` wide (in f64).
pub(crate) fn rotate_values(values: &mut [f32], r: &Rotation) -> Result<()> {
    let mut row = vec![0f64; r.size()];
    for chunk in values.chunks_exact_mut(r.size()) {
        row.iter_mut().zip(chunk.iter()).for_each(|(o, v)| *o = *v as f64);
        r.apply(&mut row)?;
        chunk.iter_mut().zip(&row).for_each(|(o, v)| *o = *v as f32);
    }
    Ok(())
}

/// `W ← R W`: rotate every column of a `[d, cols]` tensor (in f64).
fn rotate_cols(store: &mut MemoryStore, name: &str, r: &Rotation) -> Result<()> {
    let (shape, values) = stored_mut(store, name)?;
    let cols = shape.get(1).copied().unwrap_or(1);
    let mut col = vec![0f64; r.size()];
    for j in 0..cols {
        col.iter_mut().enumerate().for_each(|(i, o)| *o = values[i * cols + j] as f64);
        r.apply(&mut col)?;
        col.iter().enumerate().for_each(|(i, v)| values[i * cols + j] = *v as f32);
    }
    Ok(())
}

/// `W ← W diag(γ)` and `γ ← 1`.
fn fold_gain(store: &mut MemoryStore, gain: &str, weights: &[String]) -> Result<()> {
    let (_, g) = stored_mut(store, gain)?;
    let g = std::mem::replace(g, vec![1.0; g.len()]);
    for w in weights {
        let (_, values) = stored_mut(store, w)?;
        for row in values.chunks_exact_mut(g.len()) {
            row.iter_mut().zip(&g).for_each(|(v, s)| *v *= s);
        }
    }
    Ok(())
}

/// A Haar-random orthogonal `n × n` matrix from `seed`.
pub fn random_orthogonal(n: usize, seed: u32) -> Mat<f64> {
    // Gaussians by Box–Muller from SplitMix64 uniforms
    let mut rng = SplitMix64(seed as u64 ^ 0xD1B5_4A32_D192_ED03);
    let mut uniform = move || rng.next_open01();
    let g = Mat::from_fn(n, n, |_, _| {
        let (u1, u2) = (uniform(), uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    });
    let qr = g.qr();
    let (q, r) = (qr.compute_Q(), qr.R());
    Mat::from_fn(n, n, |i, j| if r[(j, j)] < 0.0 { -q[(i, j)] } else { q[(i, j)] })
}

/// `down ← U down` (`[r, in]`) and every `up ← up Uᵀ` (`[out, r]`).
fn rotate_latent(store: &mut MemoryStore, down: &str, ups: &[String], u: &Mat<f64>) -> Result<()> {
    let r = u.nrows();
    let (shape, values) = stored_mut(store, down)?;
    let cols = shape[1];
    let d = Mat::from_fn(r, cols, |i, j| values[i * cols + j] as f64);
    let rotated = u * &d;
    values.iter_mut().enumerate().for_each(|(k, v)| *v = rotated[(k / cols, k % cols)] as f32);
    for up in ups {
        let (shape, values) = stored_mut(store, up)?;
        let rows = shape[0];
        let m = Mat::from_fn(rows, r, |i, j| values[i * r + j] as f64);
        let rotated = &m * u.transpose();
        values.iter_mut().enumerate().for_each(|(k, v)| *v = rotated[(k / r, k % r)] as f32);
    }
    Ok(())
}

/// Rotate a text decoder's residual stream (and, optionally, its latents) in `store`, which
/// holds Hugging Face names (and the factor names of `compression`). Returns the residual
/// rotation as the manifest records it; `cfg` is untied when `lm_head` had to be split off.
pub fn rotate_model(
    cfg: &mut ModelConfig,
    store: &mut MemoryStore,
    compression: Option<&Compression>,
    opts: &RotateOptions,
) -> Result<RotationSpec> {
    let d = cfg.text.hidden_size;
    let spec =
        RotationSpec { construction: opts.construction.available_for(d), size: d, seed: Some(opts.seed) };
    let r = spec.build()?;
    let embed = EMBED_TOKENS;
    let final_norm = "model.text_model.norm.weight";
    if cfg.text.tie_word_embeddings {
        let gain_is_one = stored(store, final_norm)?.1.iter().all(|&g| g == 1.0);
        if !gain_is_one {
            let shared = stored(store, embed)?.clone();
            store.insert(LM_HEAD.into(), shared);
            cfg.text.tie_word_embeddings = false;
        }
    }
    rotate_rows(store, embed, &r)?;
    if !cfg.text.tie_word_embeddings {
        fold_gain(store, final_norm, &[LM_HEAD.to_string()])?;
        rotate_rows(store, LM_HEAD, &r)?;
    }
    rotate_cols(store, "model.connector.modality_projection.proj.weight", &r)?;
    let mlp_names = ["gate_proj", "up_proj", "down_proj"];
    for i in 0..cfg.text.num_hidden_layers {
        let p = text_layer_prefix(i);
        let ranks = compression.and_then(|c| c.text_layers.get(i));
        let attn = format!("{p}.self_attn");
        let (readers, latent) = match ranks.and_then(LayerRanks::latent_kind) {
            Some(Latent::Qkv) => {
                let [down, q, k, v] = qkv_factor_names(&attn);
                (vec![down.clone()], Some((down, vec![q, k, v])))
            }
            Some(Latent::Kv) => {
                let [down, k, v] = kv_factor_names(&attn);
                (vec![format!("{attn}.q_proj.weight"), down.clone()], Some((down, vec![k, v])))
            }
            None => (["q_proj", "k_proj", "v_proj"].map(|n| format!("{attn}.{n}.weight")).to_vec(), None),
        };
        fold_gain(store, &format!("{p}.input_layernorm.weight"), &readers)?;
        for w in &readers {
            rotate_rows(store, w, &r)?;
        }
        rotate_cols(store, &format!("{attn}.o_proj.weight"), &r)?;
        let mut latents = latent.into_iter().collect::<Vec<_>>();
        // (the tensor reading the input, the tensor writing the output) of each MLP linear
        let mut mlp = |name: &str| -> (String, String) {
            let base = format!("{p}.mlp.{name}");
            if ranks.is_some_and(|l| l.mlp.contains_key(name)) {
                let (down, up) = linear_factor_names(&base);
                latents.push((down.clone(), vec![up.clone()]));
                (down, up)
            } else {
                (format!("{base}.weight"), format!("{base}.weight"))
            }
        };
        let [gate, up, down] = mlp_names.map(&mut mlp);
        let readers = [gate.0, up.0];
        fold_gain(store, &format!("{p}.post_attention_layernorm.weight"), &readers)?;
        for w in &readers {
            rotate_rows(store, w, &r)?;
        }
        rotate_cols(store, &down.1, &r)?;
        if opts.latents {
            for (k, (down, ups)) in latents.iter().enumerate() {
                let rank = stored(store, down)?.0[0];
                let seed = opts.seed.wrapping_add(1 + (4 * i + k) as u32);
                rotate_latent(store, down, ups, &random_orthogonal(rank, seed))?;
            }
        }
    }
    Ok(spec)
}
