//! The attention input projections: separate `q_proj`, `k_proj`, `v_proj`, or the joint-QKV
//! latent of [`pocketvlm_format::compression`]: `c = qkv_down · x` once per token, then
//! `q = q_up · c`, `k = k_up · c`, `v = v_up · c` (GQA split `[d_q, d_kv, d_kv]`).
//!
//! In a quantized model the three ups share their input quantization (the contract's "latent
//! K/V cache": INT8, no online transforms, one clip ratio), so the latent is quantized once and
//! the three integer products read the same integers — which are also what a latent KV cache
//! stores ([`super::kv_cache`]).

use pocketvlm_format::compression::qkv_factor_names;

use super::linear::{Linear, Matrix, QuantLinear, forward_shared};
use super::scratch::Scratch;
use super::weights::WeightLoader;
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::quant::QuantizedRows;

/// Q, K and V of one attention block.
pub enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Joint(JointQkv),
}

/// The joint-QKV latent and its three up-projections (all float or all quantized).
pub struct JointQkv {
    pub down: Linear,
    pub q_up: Matrix,
    pub k_up: Matrix,
    pub v_up: Matrix,
}

/// The ups' shared input quantization (a quantized model) or none (float ups).
pub enum Ups<'a> {
    Float,
    Quant { q: &'a QuantLinear, k: &'a QuantLinear, v: &'a QuantLinear },
}

impl Qkv {
    /// The projections of attention block `prefix` (ending in `self_attn`), with the dense
    /// biases `{q,k,v}_proj.bias` when `biases` (the vision tower).
    pub async fn load(w: &WeightLoader<'_>, prefix: &str, biases: bool) -> Result<Self> {
        let bias = |n: &str| biases.then(|| format!("{prefix}.{n}_proj.bias"));
        let [down, q_up, k_up, v_up] = qkv_factor_names(prefix);
        if !w.has(&down) {
            let linear = |n: &'static str| {
                let (weight, bias) = (format!("{prefix}.{n}_proj.weight"), bias(n));
                async move { Linear::load(w, &weight, bias.as_deref()).await }
            };
            return Ok(Qkv::Separate { q: linear("q").await?, k: linear("k").await?, v: linear("v").await? });
        }
        let joint = JointQkv {
            down: Linear::load(w, &down, None).await?,
            q_up: Matrix::load(w, &q_up, bias("q").as_deref()).await?,
            k_up: Matrix::load(w, &k_up, bias("k").as_deref()).await?,
            v_up: Matrix::load(w, &v_up, bias("v").as_deref()).await?,
        };
        joint.check(prefix)?;
        Ok(Qkv::Joint(joint))
    }

    /// Record `q, k, v` (f32 `[rows, d_q]`, `[rows, d_kv]`, `[rows, d_kv]`) of `rows` rows of `x`.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        rows: usize,
        x: &wgpu::Buffer,
        outs: [&wgpu::Buffer; 3],
    ) -> Result<()> {
        match self {
            Qkv::Separate { q, k, v } => {
                let layers = [(q, outs[0]), (k, outs[1]), (v, outs[2])];
                forward_shared(gpu, encoder, scratch, rows, x, &layers).await
            }
            Qkv::Joint(j) => {
                let c = scratch.f32(gpu, "qkv latent", rows * j.rank()).await?;
                j.down.forward(gpu, encoder, scratch, rows, x, &c).await?;
                let ups = [&j.q_up, &j.k_up, &j.v_up];
                match j.ups() {
                    Ups::Float => {
                        for (up, y) in ups.into_iter().zip(outs) {
                            up.forward(gpu, encoder, scratch, rows, &c, y).await?;
                        }
                    }
                    Ups::Quant { q, k, v } => {
                        let stride = j.latent_words();
                        let (words, scales) = scratch.latent_rows(gpu, rows, stride).await?;
                        q.quantize(gpu, encoder, rows, &c, (&words, stride), &scales).await?;
                        let a = QuantizedRows::new(&words, &scales, rows, stride);
                        for (up, y) in [q, k, v].into_iter().zip(outs) {
                            up.product(gpu, encoder, &a, (y, 0)).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

impl JointQkv {
    /// The latent's rank `r`.
    pub fn rank(&self) -> usize {
        self.down.out_features()
    }

    /// Whether the ups are quantized (then with one shared input quantization).
    pub fn ups(&self) -> Ups<'_> {
        match (&self.q_up, &self.k_up, &self.v_up) {
            (Matrix::Quant(q), Matrix::Quant(k), Matrix::Quant(v)) => Ups::Quant { q, k, v },
            _ => Ups::Float,
        }
    }

    /// Words per token of the quantized latent: its `r` INT8 values, four per word (`r` bytes
    /// when `4 | r`, as the manifest counts them).
    pub fn latent_words(&self) -> usize {
        self.rank().div_ceil(4)
    }

    /// The ups read the rank-wide latent, all float or all quantized with one input
    /// quantization (the contract's latent rule).
    fn check(&self, prefix: &str) -> Result<()> {
        let bad = |why: String| Err(RuntimeError::UnsupportedModel(format!("joint QKV {prefix:?}: {why}")));
        let r = self.rank();
        let ups = [&self.q_up, &self.k_up, &self.v_up];
        if let Some(up) = ups.iter().find(|u| u.in_features() != r) {
            return bad(format!("an up-projection reads {} values, the latent has {r}", up.in_features()));
        }
        let quantized = ups.iter().filter(|u| matches!(u, Matrix::Quant(_))).count();
        match (quantized, self.ups()) {
            (0, _) => Ok(()),
            (3, Ups::Quant { q, k, v }) => {
                let same = [k, v].iter().all(|o| o.activation == q.activation && o.online.is_empty());
                if !same || !q.online.is_empty() {
                    return bad("the ups' activation quantization differs or has online transforms".into());
                }
                Ok(())
            }
            _ => bad("the ups are partly quantized".into()),
        }
    }
}
