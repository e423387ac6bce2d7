//! The Llama/SmolLM2 text decoder with a KV cache.
//!
//! For `T` new tokens at positions `p0..p0+T`: `x = Embed(ids)` with image features scattered
//! into the `<image>` positions; per layer `h = RMSNorm(x)`, `q,k,v = h·W_{q,k,v}ᵀ`, RoPE on `q`
//! and `k`, `k, v` appended to the cache, `x += o_proj(CausalGQA(q, K[..p0+T], V[..p0+T]))`,
//! `x += down(silu(gate(RMSNorm(x))) ⊙ up(RMSNorm(x)))`; then the final RMSNorm and `lm_head` on
//! the last position only.

use pocketvlm_format::ModelConfig;

use super::scratch::f32_buffer;
use super::weights::Weights;
use crate::device::Gpu;
use crate::error::{Result, RuntimeError};
use crate::kernels::attention::{Attention, AttentionShape};
use crate::kernels::copy::CopyRows;
use crate::kernels::elementwise::{Add, SiluMul};
use crate::kernels::embed::{Embed, EmbedShape, ImageFeatures};
use crate::kernels::matmul::{Matmul, MatmulShape};
use crate::kernels::norm::{NormShape, RmsNorm};
use crate::kernels::rope::{Rope, RopeShape};

/// Per-layer key and value caches, f32 `[capacity, kv_heads·head_dim]` each.
pub struct KvCache {
    pub keys: Vec<wgpu::Buffer>,
    pub values: Vec<wgpu::Buffer>,
    pub capacity: usize,
    /// Tokens cached so far.
    pub len: usize,
}

impl KvCache {
    pub async fn new(gpu: &Gpu, cfg: &ModelConfig, capacity: usize) -> Result<Self> {
        let width = cfg.text.num_key_value_heads * cfg.text.head_dim;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for _ in 0..cfg.text.num_hidden_layers {
            keys.push(f32_buffer(gpu, "kv cache k", capacity * width).await?);
            values.push(f32_buffer(gpu, "kv cache v", capacity * width).await?);
        }
        Ok(Self { keys, values, capacity, len: 0 })
    }

    /// Bytes held on the GPU.
    pub fn bytes(&self) -> u64 {
        self.keys.iter().chain(&self.values).map(|b| b.size()).sum()
    }

    /// Keep the first `len` cached rows (dropping the rest) and make room for `capacity` rows in
    /// all, moving the kept rows into larger buffers when the current ones are too small.
    pub async fn rewind_and_reserve(
        &mut self,
        gpu: &Gpu,
        cfg: &ModelConfig,
        len: usize,
        capacity: usize,
    ) -> Result<()> {
        if len > self.len {
            return Err(RuntimeError::Shape(format!("cannot keep {len} of {} cached rows", self.len)));
        }
        self.len = len;
        if capacity <= self.capacity {
            return Ok(());
        }
        let mut grown = KvCache::new(gpu, cfg, capacity).await?;
        if len > 0 {
            let width = cfg.text.num_key_value_heads * cfg.text.head_dim;
            let copy = CopyRows { rows: len, width, src_row: 0, dst_row: 0 };
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            for (old, new) in self.keys.iter().chain(&self.values).zip(grown.keys.iter().chain(&grown.values))
            {
                copy.encode(gpu, &mut encoder, old, new)?;
            }
            gpu.queue.submit([encoder.finish()]);
        }
        grown.len = len;
        *self = grown;
        Ok(())
    }
}

/// The decoder's fixed GPU state besides the weights: the RoPE table.
pub struct TextState {
    pub rope_table: wgpu::Buffer,
    pub max_positions: usize,
}

/// Record a decoder pass over `ids` (appending to `cache`) and the logits of the last position
/// into `logits` (f32 `[vocab]`).
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &ModelConfig,
    w: &Weights,
    state: &TextState,
    cache: &mut KvCache,
    ids: &wgpu::Buffer,
    tokens: usize,
    image: Option<ImageFeatures<'_>>,
    logits: &wgpu::Buffer,
) -> Result<()> {
    let c = &cfg.text;
    let (d, hd) = (c.hidden_size, c.head_dim);
    let (dq, dkv, inter) = (c.num_attention_heads * hd, c.num_key_value_heads * hd, c.intermediate_size);
    let p0 = cache.len;
    if p0 + tokens > cache.capacity || p0 + tokens > state.max_positions {
        return Err(RuntimeError::Shape(format!(
            "{} positions exceed the cache capacity {} / position limit {}",
            p0 + tokens,
            cache.capacity,
            state.max_positions
        )));
    }
    let p = "model.text_model";
    let x = f32_buffer(gpu, "text x", tokens * d).await?;
    let shape = EmbedShape { tokens, vocab: c.vocab_size, d };
    let embed = Embed { image: image.is_some() };
    embed.encode(gpu, encoder, shape, ids, w.get(&format!("{p}.embed_tokens.weight"))?, image, &x).await?;

    let normed = f32_buffer(gpu, "text norm", tokens * d).await?;
    let q = f32_buffer(gpu, "text q", tokens * dq).await?;
    let k = f32_buffer(gpu, "text k", tokens * dkv).await?;
    let v = f32_buffer(gpu, "text v", tokens * dkv).await?;
    let attn = f32_buffer(gpu, "text attn", tokens * dq).await?;
    let out = f32_buffer(gpu, "text out", tokens * d).await?;
    let gate = f32_buffer(gpu, "text gate", tokens * inter).await?;
    let up = f32_buffer(gpu, "text up", tokens * inter).await?;
    let act = f32_buffer(gpu, "text act", tokens * inter).await?;
    let rms = RmsNorm { eps: c.rms_norm_eps as f32 };
    let rows = NormShape { rows: tokens, d };
    let linear = Matmul { bias: false };
    let rope = RopeShape {
        tokens,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: hd,
        pos0: p0,
        max_positions: state.max_positions,
    };
    let attention_shape =
        AttentionShape::causal(tokens, c.num_attention_heads, c.num_key_value_heads, hd, p0, cache.capacity);
    let attention = Attention::for_shape(&attention_shape);
    let append = CopyRows::append(tokens, dkv, p0);
    for i in 0..c.num_hidden_layers {
        let l = format!("{p}.layers.{i}");
        let wt = |s: &str| w.get(&format!("{l}.{s}"));
        rms.encode(gpu, encoder, rows, &x, wt("input_layernorm.weight")?, &normed).await?;
        for (proj, dst, n) in [("q_proj", &q, dq), ("k_proj", &k, dkv), ("v_proj", &v, dkv)] {
            let shape = MatmulShape { m: tokens, n, k: d };
            linear
                .encode(gpu, encoder, shape, &normed, wt(&format!("self_attn.{proj}.weight"))?, None, dst)
                .await?;
        }
        Rope.encode(gpu, encoder, rope, &state.rope_table, &q, &k).await?;
        append.encode(gpu, encoder, &k, &cache.keys[i])?;
        append.encode(gpu, encoder, &v, &cache.values[i])?;
        attention.encode(gpu, encoder, attention_shape, &q, &cache.keys[i], &cache.values[i], &attn).await?;
        let o = MatmulShape { m: tokens, n: d, k: dq };
        linear.encode(gpu, encoder, o, &attn, wt("self_attn.o_proj.weight")?, None, &out).await?;
        Add.encode(gpu, encoder, tokens * d, tokens * d, &x, &out).await?;

        rms.encode(gpu, encoder, rows, &x, wt("post_attention_layernorm.weight")?, &normed).await?;
        let gu = MatmulShape { m: tokens, n: inter, k: d };
        linear.encode(gpu, encoder, gu, &normed, wt("mlp.gate_proj.weight")?, None, &gate).await?;
        linear.encode(gpu, encoder, gu, &normed, wt("mlp.up_proj.weight")?, None, &up).await?;
        SiluMul.encode(gpu, encoder, tokens * inter, &gate, &up, &act).await?;
        let down = MatmulShape { m: tokens, n: d, k: inter };
        linear.encode(gpu, encoder, down, &act, wt("mlp.down_proj.weight")?, None, &out).await?;
        Add.encode(gpu, encoder, tokens * d, tokens * d, &x, &out).await?;
    }
    cache.len = p0 + tokens;

    // Only the last position's logits are needed.
    let last = f32_buffer(gpu, "text last", d).await?;
    CopyRows { rows: 1, width: d, src_row: tokens - 1, dst_row: 0 }.encode(gpu, encoder, &x, &last)?;
    let last_normed = f32_buffer(gpu, "text last norm", d).await?;
    let one = NormShape { rows: 1, d };
    rms.encode(gpu, encoder, one, &last, w.get(&format!("{p}.norm.weight"))?, &last_normed).await?;
    let head =
        if c.tie_word_embeddings { format!("{p}.embed_tokens.weight") } else { "lm_head.weight".to_string() };
    let shape = MatmulShape { m: 1, n: c.vocab_size, k: d };
    linear.encode(gpu, encoder, shape, &last_normed, w.get(&head)?, None, logits).await?;
    Ok(())
}
