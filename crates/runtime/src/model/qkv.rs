//! The attention input projections: separate `q_proj`, `k_proj`, `v_proj`, or a shared latent of
//! [`pocketvlm_format::compression`] — joint: `c = qkv_down · x` once per token, then
//! `q = q_up · c`, `k = k_up · c`, `v = v_up · c` (GQA split `[d_q, d_kv, d_kv]`); or for K and V
//! only: `c = kv_down · x`, `k = k_up · c`, `v = v_up · c`, and `q = q_proj · x` (which reads the
//! same input as `kv_down`, so a quantized model rotates and quantizes it once for both).
//!
//! In a quantized model the ups share their input quantization (the contract's "latent K/V
//! cache": INT8, no online transforms, one clip ratio), so the latent is quantized once and the
//! integer products read the same integers — which are also what a latent KV cache stores
//! ([`super::kv_cache`]). The ups are loaded stacked in one weight where the layout allows, so
//! one product writes all of them where they read the same rows (the plain cache's K and V).

use pocketvlm_format::compression::{kv_factor_names, qkv_factor_names};

use super::linear::{LayerInput, Linear, Matrix, QuantLinear, forward_shared, products};
use super::scratch::Scratch;
use super::weights::WeightLoader;
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::quant::QuantizedRows;

/// Words per token of a quantized latent of rank `r`: its `r` INT8 values, four per word, in
/// whole groups of four words (16 values; the manifest counts `r` bytes), so that the ups'
/// products over many cached rows (the key rebuild) read them four words at a time.
pub fn latent_words(r: usize) -> usize {
    4 * r.div_ceil(16)
}

/// Q, K and V of one attention block.
pub enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Joint(JointQkv),
}

/// A shared latent and its up-projections (all float or all quantized), and where the queries
/// come from.
pub struct JointQkv {
    pub down: Linear,
    pub q: Queries,
    pub k_up: Matrix,
    pub v_up: Matrix,
}

/// Where a latent layer's queries come from.
pub enum Queries {
    /// `q_up · c`: the latent is Q's too (`qkv_down`).
    Up(Matrix),
    /// `q_proj · x`: the latent is K and V's only (`kv_down`).
    Proj(Linear),
}

/// The ups' shared input quantization (a quantized model) or none (float ups); `q` is `q_up`
/// when the latent computes the queries.
pub enum Ups<'a> {
    Float,
    Quant { q: Option<&'a QuantLinear>, k: &'a QuantLinear, v: &'a QuantLinear },
}

impl Qkv {
    /// The projections of attention block `prefix` (ending in `self_attn`), with the dense
    /// biases `{q,k,v}_proj.bias` when `biases` (the vision tower).
    pub async fn load(w: &WeightLoader<'_>, prefix: &str, biases: bool) -> Result<Self> {
        let bias = |n: &str| biases.then(|| format!("{prefix}.{n}_proj.bias"));
        let ([kv_down, kv_k_up, kv_v_up], [qkv_down, q_up, k_up, v_up]) =
            (kv_factor_names(prefix), qkv_factor_names(prefix));
        // the latent's down factor, where the queries come from, and the K and V ups
        let proj = |n: &str| format!("{prefix}.{n}_proj.weight");
        // the layers reading the block's input are loaded together, and so are the ups reading
        // the latent (stacked where they allow)
        let joint = if w.has(&kv_down) {
            let (q_proj, down) = if biases {
                (
                    Linear::load(w, &proj("q"), bias("q").as_deref()).await?,
                    Linear::load(w, &kv_down, None).await?,
                )
            } else {
                let [q_proj, down] = Linear::load_group(w, [&proj("q"), &kv_down]).await?;
                (q_proj, down)
            };
            let [k_up, v_up] = Self::load_ups(w, [&kv_k_up, &kv_v_up], [bias("k"), bias("v")]).await?;
            JointQkv { down, q: Queries::Proj(q_proj), k_up, v_up }
        } else if w.has(&qkv_down) {
            let down = Linear::load(w, &qkv_down, None).await?;
            let names = [&*q_up, &k_up, &v_up];
            let [q_up, k_up, v_up] = Self::load_ups(w, names, [bias("q"), bias("k"), bias("v")]).await?;
            JointQkv { down, q: Queries::Up(q_up), k_up, v_up }
        } else if biases {
            let linear = |n: &'static str| {
                let (weight, bias) = (proj(n), bias(n));
                async move { Linear::load(w, &weight, bias.as_deref()).await }
            };
            return Ok(Qkv::Separate { q: linear("q").await?, k: linear("k").await?, v: linear("v").await? });
        } else {
            let [q, k, v] = Linear::load_group(w, [&proj("q"), &proj("k"), &proj("v")]).await?;
            return Ok(Qkv::Separate { q, k, v });
        };
        joint.check(prefix)?;
        Ok(Qkv::Joint(joint))
    }

    /// The up-projections `names` of one latent with their biases: stacked in one weight where
    /// none has a bias and [`Matrix::load_group`] stacks them, so one product writes them all.
    async fn load_ups<const N: usize>(
        w: &WeightLoader<'_>,
        names: [&str; N],
        biases: [Option<String>; N],
    ) -> Result<[Matrix; N]> {
        if biases.iter().all(Option::is_none) {
            return Matrix::load_group(w, names).await;
        }
        let mut ups = Vec::with_capacity(N);
        for (name, bias) in names.into_iter().zip(biases) {
            ups.push(Matrix::load(w, name, bias.as_deref()).await?);
        }
        ups.try_into().map_err(|_| RuntimeError::Shape(format!("{N} ups loaded as another number")))
    }

    /// The layers that read the block's input `x`.
    pub fn input_readers(&self) -> Vec<&Linear> {
        match self {
            Qkv::Separate { q, k, v } => vec![q, k, v],
            Qkv::Joint(JointQkv { down, q: Queries::Up(_), .. }) => vec![down],
            Qkv::Joint(JointQkv { down, q: Queries::Proj(q_proj), .. }) => vec![q_proj, down],
        }
    }

    /// Record `q, k, v` (f32 `[rows, d_q]`, `[rows, d_kv]`, `[rows, d_kv]`) of `rows` rows of `x`.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        rows: usize,
        x: LayerInput<'_>,
        outs: [&wgpu::Buffer; 3],
    ) -> Result<()> {
        match self {
            Qkv::Separate { q, k, v } => {
                let layers = [(q, outs[0]), (k, outs[1]), (v, outs[2])];
                forward_shared(gpu, encoder, scratch, rows, x, &layers).await
            }
            Qkv::Joint(j) => {
                let c = scratch.f32(gpu, "qkv latent", rows * j.rank()).await?;
                j.project(gpu, encoder, scratch, rows, x, &c, outs[0]).await?;
                let q_up = match &j.q {
                    Queries::Up(q_up) => Some(q_up),
                    Queries::Proj(_) => None,
                };
                match j.ups() {
                    Ups::Float => {
                        for (up, y) in [(q_up, outs[0]), (Some(&j.k_up), outs[1]), (Some(&j.v_up), outs[2])] {
                            if let Some(up) = up {
                                up.forward(gpu, encoder, scratch, rows, &c, y).await?;
                            }
                        }
                    }
                    Ups::Quant { q, k, v } => {
                        let stride = j.latent_words();
                        let (words, scales) = scratch.latent_rows(gpu, rows, stride, j.rank()).await?;
                        k.quantize(gpu, encoder, rows, &c, (&words, stride), &scales).await?;
                        let a = QuantizedRows::new(&words, &scales, rows, stride);
                        let ups = [(q, outs[0]), (Some(k), outs[1]), (Some(v), outs[2])];
                        let ups: Vec<_> = ups.into_iter().filter_map(|(up, y)| Some((up?, (y, 0)))).collect();
                        products(gpu, encoder, &a, &ups).await?;
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

    /// Record the latent `c` (f32 `[rows, r]`) of `rows` rows of `x` and, when the queries are
    /// `q_proj`'s, the queries into `q` (the two read `x` through one rotation and quantization
    /// where their input steps agree); a joint latent's queries come later, from `c`.
    #[allow(clippy::too_many_arguments)]
    pub async fn project(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        rows: usize,
        x: LayerInput<'_>,
        c: &wgpu::Buffer,
        q: &wgpu::Buffer,
    ) -> Result<()> {
        match &self.q {
            Queries::Up(_) => forward_shared(gpu, encoder, scratch, rows, x, &[(&self.down, c)]).await,
            Queries::Proj(q_proj) => {
                forward_shared(gpu, encoder, scratch, rows, x, &[(q_proj, q), (&self.down, c)]).await
            }
        }
    }

    /// Whether the ups are quantized (then with one shared input quantization).
    pub fn ups(&self) -> Ups<'_> {
        match (&self.q, &self.k_up, &self.v_up) {
            (Queries::Up(Matrix::Quant(q)), Matrix::Quant(k), Matrix::Quant(v)) => {
                Ups::Quant { q: Some(q), k, v }
            }
            (Queries::Proj(_), Matrix::Quant(k), Matrix::Quant(v)) => Ups::Quant { q: None, k, v },
            _ => Ups::Float,
        }
    }

    /// Words per token of the quantized latent ([`latent_words`] of its rank).
    pub fn latent_words(&self) -> usize {
        latent_words(self.rank())
    }

    /// The ups read the rank-wide latent, all float or all quantized with one input
    /// quantization (the contract's latent rule).
    fn check(&self, prefix: &str) -> Result<()> {
        let bad =
            |why: String| Err(RuntimeError::UnsupportedModel(format!("latent attention {prefix:?}: {why}")));
        let r = self.rank();
        let mut ups = vec![&self.k_up, &self.v_up];
        if let Queries::Up(q_up) = &self.q {
            ups.push(q_up);
        }
        if let Some(up) = ups.iter().find(|u| u.in_features() != r) {
            return bad(format!("an up-projection reads {} values, the latent has {r}", up.in_features()));
        }
        let quantized = ups.iter().filter(|u| matches!(u, Matrix::Quant(_))).count();
        match (quantized, self.ups()) {
            (0, _) => Ok(()),
            (n, Ups::Quant { q, k, v }) if n == ups.len() => {
                let all = [Some(k), Some(v), q];
                let same = all.iter().flatten().all(|o| o.activation == k.activation && o.online.is_empty());
                if !same {
                    return bad("the ups' activation quantization differs or has online transforms".into());
                }
                Ok(())
            }
            _ => bad("the ups are partly quantized".into()),
        }
    }
}
