//! The SigLIP vision tower (transformers' `Idefics3VisionTransformer`) and the pixel-shuffle
//! connector, for full tiles (every patch real, so no patch mask and plain position ids).

use candle_core::{D, Tensor};
use pocketvlm_format::VisionConfig;

use crate::error::Result;
use crate::model::linear::{Linear, Proj, Tape, Target, Tower};
use crate::model::text::softmax;

pub struct VisionLayer {
    pub ln1: (Tensor, Tensor),
    /// `[q; k; v]` stacked along the output, biases concatenated the same way.
    pub qkv: Linear,
    pub out_proj: Linear,
    pub ln2: (Tensor, Tensor),
    /// `fc1`, `fc2`.
    pub mlp: [Linear; 2],
}

pub struct VisionTower {
    pub cfg: VisionConfig,
    /// Patch-embedding convolution as a matrix: `[3·p·p, d]` (input order channel, row, column).
    pub patch_t: Tensor,
    pub patch_bias: Tensor,
    /// `[patches, d]`.
    pub position: Tensor,
    pub layers: Vec<VisionLayer>,
    pub post_norm: (Tensor, Tensor),
}

/// LayerNorm over the last dimension.
pub fn layer_norm(x: &Tensor, (w, b): &(Tensor, Tensor), eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centered.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?.broadcast_mul(w)?.broadcast_add(b)?)
}

impl VisionTower {
    /// Encode tiles `[n, 3, S, S]` (normalised pixels) into `[n·patches, d]` after the post-norm.
    /// The patch grid floors like transformers' strided convolution: when the patch does not
    /// divide `S` (384-px tiles, patch 14), the last `S − ⌊S/P⌋·P` pixel rows and columns are
    /// unused.
    pub fn forward(&self, pixels: &Tensor, mut tape: Option<&mut Tape>) -> Result<Tensor> {
        let c = &self.cfg;
        let (n, ch, side, _) = pixels.dims4()?;
        let (p, per) = (c.patch_size, c.patches_per_side());
        let np = per * per;
        let (d, heads) = (c.hidden_size, c.num_attention_heads);
        let hd = d / heads;
        debug_assert_eq!(side, c.image_size);
        let used = per * p;
        let pixels =
            if side == used { pixels.clone() } else { pixels.narrow(2, 0, used)?.narrow(3, 0, used)? };
        let patches = pixels
            .reshape((n, ch, per, p, per, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n * np, ch * p * p))?;
        let x = patches.matmul(&self.patch_t)?.broadcast_add(&self.patch_bias)?;
        let mut x = x.reshape((n, np, d))?.broadcast_add(&self.position)?.reshape((n * np, d))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let heads_of = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((n, np, heads, hd))?.permute((0, 2, 1, 3))?.reshape((n * heads, np, hd))?)
        };
        for (i, l) in self.layers.iter().enumerate() {
            let t = |proj| Target { tower: Tower::Vision, layer: i, proj };
            let h = layer_norm(&x, &l.ln1, c.layer_norm_eps)?;
            let qkv = l.qkv.forward(&h, t(Proj::Qkv), tape.as_deref_mut())?;
            let q = heads_of(qkv.narrow(1, 0, d)?)?;
            let k = heads_of(qkv.narrow(1, d, d)?)?;
            let v = heads_of(qkv.narrow(1, 2 * d, d)?)?;
            let attn = softmax(&(q.matmul(&k.t()?)? * scale)?)?;
            let o =
                attn.matmul(&v)?.reshape((n, heads, np, hd))?.permute((0, 2, 1, 3))?.reshape((n * np, d))?;
            x = (x + l.out_proj.forward(&o, t(Proj::Out), tape.as_deref_mut())?)?;
            let h = layer_norm(&x, &l.ln2, c.layer_norm_eps)?;
            let h = l.mlp[0].forward(&h, t(Proj::Mlp(0)), tape.as_deref_mut())?.gelu()?;
            x = (x + l.mlp[1].forward(&h, t(Proj::Mlp(1)), tape.as_deref_mut())?)?;
        }
        layer_norm(&x, &self.post_norm, c.layer_norm_eps)
    }
}

/// Idefics3's pixel shuffle: `[n·S², d]` → `[n·(S/s)², s²·d]`; output token `(h, w)` holds the
/// patches `(h·s + i, w·s + j)` with channel index `(i·s + j)·d + c`.
pub fn pixel_shuffle(x: &Tensor, tiles: usize, per_side: usize, s: usize) -> Result<Tensor> {
    let d = x.dim(1)?;
    let o = per_side / s;
    Ok(x.reshape((tiles, o, s, o, s, d))?.permute((0, 1, 3, 2, 4, 5))?.reshape((tiles * o * o, s * s * d))?)
}
