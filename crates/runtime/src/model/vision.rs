//! The SigLIP vision tower and the Idefics3 connector.
//!
//! For `T = tiles·N²` patch tokens of width `Dv`:
//! `x = PatchEmbed(pixels) + pos`; per layer `x += out_proj(Attn(LN1(x)))`,
//! `x += fc2(gelu_tanh(fc1(LN2(x))))` (bidirectional attention within each tile, all projections
//! biased); `x = post_layernorm(x)`; then the connector: pixel shuffle by `s` and a bias-free
//! linear map to the text width, giving `tiles · (N/s)²` image features.

use pocketvlm_format::ModelConfig;

use super::scratch::f32_buffer;
use super::weights::Weights;
use crate::device::Gpu;
use crate::error::Result;
use crate::kernels::attention::{Attention, AttentionShape};
use crate::kernels::elementwise::{Add, GeluTanh};
use crate::kernels::matmul::{Matmul, MatmulShape};
use crate::kernels::norm::{LayerNorm, NormShape};
use crate::kernels::patch_embed::{PatchEmbed, PatchEmbedShape};
use crate::kernels::pixel_shuffle::{PixelShuffle, PixelShuffleShape};

/// Record the vision tower and connector for `tiles` tiles of pixel values (f32
/// `[tiles, channels, S, S]` in `pixels`); returns the image features f32 `[tiles·seq, D_text]`.
pub async fn encode_image(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &ModelConfig,
    w: &Weights,
    pixels: &wgpu::Buffer,
    tiles: usize,
) -> Result<wgpu::Buffer> {
    let v = &cfg.vision;
    let d = v.hidden_size;
    let n = v.num_patches();
    let t = tiles * n;
    let p = "model.vision_model";
    let x = f32_buffer(gpu, "vision x", t * d).await?;
    let shape = PatchEmbedShape {
        tiles,
        channels: v.num_channels,
        image_size: v.image_size,
        patch: v.patch_size,
        hidden: d,
    };
    PatchEmbed
        .encode(
            gpu,
            encoder,
            shape,
            pixels,
            w.get(&format!("{p}.embeddings.patch_embedding.weight"))?,
            w.get(&format!("{p}.embeddings.patch_embedding.bias"))?,
            w.get(&format!("{p}.embeddings.position_embedding.weight"))?,
            &x,
        )
        .await?;

    let normed = f32_buffer(gpu, "vision norm", t * d).await?;
    let q = f32_buffer(gpu, "vision q", t * d).await?;
    let k = f32_buffer(gpu, "vision k", t * d).await?;
    let vv = f32_buffer(gpu, "vision v", t * d).await?;
    let attn = f32_buffer(gpu, "vision attn", t * d).await?;
    let out = f32_buffer(gpu, "vision out", t * d).await?;
    let mlp = f32_buffer(gpu, "vision mlp", t * v.intermediate_size).await?;
    let ln = LayerNorm { eps: v.layer_norm_eps as f32 };
    let rows = NormShape { rows: t, d };
    let linear = Matmul { bias: true };
    let square = MatmulShape { m: t, n: d, k: d };
    let attention_shape = AttentionShape::bidirectional(tiles, n, v.num_attention_heads, v.head_dim());
    for i in 0..v.num_hidden_layers {
        let l = format!("{p}.encoder.layers.{i}");
        let wt = |s: &str| w.get(&format!("{l}.{s}"));
        ln.encode(gpu, encoder, rows, &x, wt("layer_norm1.weight")?, wt("layer_norm1.bias")?, &normed)
            .await?;
        for (proj, dst) in [("q_proj", &q), ("k_proj", &k), ("v_proj", &vv)] {
            let (wp, bp) = (wt(&format!("self_attn.{proj}.weight"))?, wt(&format!("self_attn.{proj}.bias"))?);
            linear.encode(gpu, encoder, square, &normed, wp, Some(bp), dst).await?;
        }
        Attention::for_shape(&attention_shape)
            .encode(gpu, encoder, attention_shape, &q, &k, &vv, &attn)
            .await?;
        let (wo, bo) = (wt("self_attn.out_proj.weight")?, wt("self_attn.out_proj.bias")?);
        linear.encode(gpu, encoder, square, &attn, wo, Some(bo), &out).await?;
        Add.encode(gpu, encoder, t * d, t * d, &x, &out).await?;

        ln.encode(gpu, encoder, rows, &x, wt("layer_norm2.weight")?, wt("layer_norm2.bias")?, &normed)
            .await?;
        let up = MatmulShape { m: t, n: v.intermediate_size, k: d };
        linear
            .encode(gpu, encoder, up, &normed, wt("mlp.fc1.weight")?, Some(wt("mlp.fc1.bias")?), &mlp)
            .await?;
        GeluTanh.encode(gpu, encoder, t * v.intermediate_size, &mlp).await?;
        let down = MatmulShape { m: t, n: d, k: v.intermediate_size };
        linear
            .encode(gpu, encoder, down, &mlp, wt("mlp.fc2.weight")?, Some(wt("mlp.fc2.bias")?), &out)
            .await?;
        Add.encode(gpu, encoder, t * d, t * d, &x, &out).await?;
    }
    ln.encode(
        gpu,
        encoder,
        rows,
        &x,
        w.get(&format!("{p}.post_layernorm.weight"))?,
        w.get(&format!("{p}.post_layernorm.bias"))?,
        &normed,
    )
    .await?;

    let s = cfg.connector.scale_factor;
    let seq = cfg.image_seq_len();
    let shuffled = f32_buffer(gpu, "pixel shuffle", t * d).await?;
    let shuffle = PixelShuffleShape { tiles, side: v.patches_per_side(), d, scale: s };
    PixelShuffle.encode(gpu, encoder, shuffle, &normed, &shuffled).await?;
    let dt = cfg.text.hidden_size;
    let features = f32_buffer(gpu, "image features", tiles * seq * dt).await?;
    let proj = MatmulShape { m: tiles * seq, n: dt, k: d * s * s };
    Matmul { bias: false }
        .encode(
            gpu,
            encoder,
            proj,
            &shuffled,
            w.get("model.connector.modality_projection.proj.weight")?,
            None,
            &features,
        )
        .await?;
    Ok(features)
}
