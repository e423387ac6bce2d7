//! The SigLIP vision tower and the Idefics3 connector.
//!
//! For `T = tiles·N²` patch tokens of width `Dv`:
//! `x = PatchEmbed(pixels) + pos`; per layer `x += out_proj(Attn(LN1(x)))`,
//! `x += fc2(gelu_tanh(fc1(LN2(x))))` (bidirectional attention within each tile, all projections
//! biased); `x = post_layernorm(x)`; then the connector: pixel shuffle by `s` and a bias-free
//! linear map to the text width, giving `tiles · (N/s)²` image features.

use pocketvlm_format::ModelConfig;

use super::interrupt::Interrupt;
use super::linear::Linear;
use super::qkv::Qkv;
use super::scratch::Scratch;
use super::scratch::f32_buffer;
use super::weights::WeightLoader;
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::Result;
use crate::kernels::attention::{Attention, AttentionShape};
use crate::kernels::elementwise::GeluTanh;
use crate::kernels::norm::{LayerNorm, NormLayout, NormShape};
use crate::kernels::patch_embed::{PatchEmbed, PatchEmbedShape};
use crate::kernels::pixel_shuffle::{PixelShuffle, PixelShuffleShape};
use crate::memory::DeviceBuffer;
use crate::tensor::Tensor;

/// One encoder layer's weights.
pub struct VisionLayer {
    pub ln1: (Tensor, Tensor),
    pub qkv: Qkv,
    pub out: Linear,
    pub ln2: (Tensor, Tensor),
    pub fc1: Linear,
    pub fc2: Linear,
}

/// The vision tower's and the connector's weights.
pub struct VisionModel {
    pub patch_weight: Tensor,
    pub patch_bias: Tensor,
    pub position: Tensor,
    pub layers: Vec<VisionLayer>,
    pub post_norm: (Tensor, Tensor),
    pub connector: Linear,
}

impl VisionModel {
    pub async fn load(w: &WeightLoader<'_>, cfg: &ModelConfig) -> Result<Self> {
        let p = "model.vision_model";
        let norm = |n: String| async move {
            Ok::<_, crate::RuntimeError>((
                w.f32(&format!("{n}.weight")).await?,
                w.f32(&format!("{n}.bias")).await?,
            ))
        };
        let mut layers = Vec::with_capacity(cfg.vision.num_hidden_layers);
        for i in 0..cfg.vision.num_hidden_layers {
            let l = format!("{p}.encoder.layers.{i}");
            let linear = |s: &str| {
                let (weight, bias) = (format!("{l}.{s}.weight"), format!("{l}.{s}.bias"));
                async move { Linear::load(w, &weight, Some(&bias)).await }
            };
            layers.push(VisionLayer {
                ln1: norm(format!("{l}.layer_norm1")).await?,
                qkv: Qkv::load(w, &format!("{l}.self_attn"), true).await?,
                out: linear("self_attn.out_proj").await?,
                ln2: norm(format!("{l}.layer_norm2")).await?,
                fc1: linear("mlp.fc1").await?,
                fc2: linear("mlp.fc2").await?,
            });
        }
        Ok(Self {
            patch_weight: w.f32(&format!("{p}.embeddings.patch_embedding.weight")).await?,
            patch_bias: w.f32(&format!("{p}.embeddings.patch_embedding.bias")).await?,
            position: w.f32(&format!("{p}.embeddings.position_embedding.weight")).await?,
            layers,
            post_norm: norm(format!("{p}.post_layernorm")).await?,
            connector: Linear::load(w, "model.connector.modality_projection.proj.weight", None).await?,
        })
    }
}

/// Record the vision tower and connector for `tiles` tiles of pixel values (f32
/// `[tiles, channels, S, S]` in `pixels`); returns the image features f32 `[tiles·seq, D_text]`.
/// Each half of a layer (attention, MLP) is a part of the pass for `interrupt`.
pub async fn encode_image(
    gpu: &Gpu,
    encoder: &mut Encoder,
    interrupt: &mut Interrupt<'_>,
    cfg: &ModelConfig,
    model: &VisionModel,
    pixels: &wgpu::Buffer,
    tiles: usize,
) -> Result<DeviceBuffer> {
    let v = &cfg.vision;
    let d = v.hidden_size;
    let n = v.num_patches();
    let t = tiles * n;
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
            &model.patch_weight.buffer,
            &model.patch_bias.buffer,
            &model.position.buffer,
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
    let mut scratch = Scratch::default();
    let ln = LayerNorm { eps: v.layer_norm_eps as f32 };
    let rows = NormShape { rows: t, d };
    let layout = NormLayout::for_gpu(gpu, t);
    let attention_shape = AttentionShape::bidirectional(tiles, n, v.num_attention_heads, v.head_dim());
    // Each residual add is recorded with the norm that follows it (the next layer's first norm,
    // after the last layer the post-layernorm).
    let first = model.layers.first().map_or(&model.post_norm, |l| &l.ln1);
    ln.encode(gpu, encoder, layout, rows, (&x, None), (&*first.0.buffer, &*first.1.buffer), &normed).await?;
    for (i, l) in model.layers.iter().enumerate() {
        l.qkv.forward(gpu, encoder, &mut scratch, t, (&*normed).into(), [&q, &k, &vv]).await?;
        Attention::for_shape(gpu, &attention_shape)
            .encode(gpu, encoder, attention_shape, &q, &k, &vv, &attn)
            .await?;
        l.out.forward(gpu, encoder, &mut scratch, t, &attn, &out).await?;
        let ln2 = (&*l.ln2.0.buffer, &*l.ln2.1.buffer);
        ln.encode(gpu, encoder, layout, rows, (&*x, Some(&*out)), ln2, &normed).await?;
        interrupt.point(gpu, encoder).await?;

        l.fc1.forward(gpu, encoder, &mut scratch, t, &normed, &mlp).await?;
        GeluTanh.encode(gpu, encoder, t * v.intermediate_size, &mlp).await?;
        l.fc2.forward(gpu, encoder, &mut scratch, t, &mlp, &out).await?;
        let next = model.layers.get(i + 1).map_or(&model.post_norm, |n| &n.ln1);
        ln.encode(gpu, encoder, layout, rows, (&x, Some(&out)), (&*next.0.buffer, &*next.1.buffer), &normed)
            .await?;
        interrupt.point(gpu, encoder).await?;
    }

    let s = cfg.connector.scale_factor;
    let seq = cfg.image_seq_len();
    let shuffled = f32_buffer(gpu, "pixel shuffle", t * d).await?;
    let shuffle = PixelShuffleShape { tiles, side: v.patches_per_side(), d, scale: s };
    PixelShuffle.encode(gpu, encoder, shuffle, &normed, &shuffled).await?;
    let dt = cfg.text.hidden_size;
    let features = f32_buffer(gpu, "image features", tiles * seq * dt).await?;
    model.connector.forward(gpu, encoder, &mut scratch, tiles * seq, &shuffled, &features).await?;
    Ok(features)
}
