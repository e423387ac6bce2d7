//! The Llama/SmolLM2 text decoder with a KV cache.
//!
//! For `T` new tokens at positions `p0..p0+T`: `x = Embed(ids)` with image features scattered
//! into the `<image>` positions; per layer `h = RMSNorm(x)`, `q,k,v = h·W_{q,k,v}ᵀ`, RoPE on `q`
//! and `k`, `k, v` appended to the cache, `x += o_proj(CausalGQA(q, K[..p0+T], V[..p0+T]))`,
//! `x += down(silu(gate(RMSNorm(x))) ⊙ up(RMSNorm(x)))`; then the final RMSNorm and `lm_head` on
//! the last position only.

use pocketvlm_format::ModelConfig;

use super::linear::{Embedding, Linear, Scratch};
use super::scratch::f32_buffer;
use super::weights::WeightLoader;
use crate::device::Gpu;
use crate::error::{Result, RuntimeError};
use crate::kernels::attention::{Attention, AttentionShape};
use crate::kernels::copy::CopyRows;
use crate::kernels::elementwise::{Add, SiluMul};
use crate::kernels::embed::{Embed, EmbedShape, ImageFeatures};
use crate::kernels::norm::{NormShape, RmsNorm};
use crate::kernels::rope::{Rope, RopeShape, rope_table};
use crate::tensor::Tensor;

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

/// One decoder layer's weights.
pub struct DecoderLayer {
    pub input_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub post_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// The decoder's weights and fixed tables.
pub struct TextModel {
    pub embed: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    pub lm_head: Linear,
    pub rope_table: wgpu::Buffer,
    pub max_positions: usize,
}

impl TextModel {
    pub async fn load(w: &WeightLoader<'_>, cfg: &ModelConfig) -> Result<Self> {
        let c = &cfg.text;
        let p = "model.text_model";
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = format!("{p}.layers.{i}");
            let linear = |s: &str| {
                let name = format!("{l}.{s}.weight");
                async move { Linear::load(w, &name, None).await }
            };
            layers.push(DecoderLayer {
                input_norm: w.f32(&format!("{l}.input_layernorm.weight")).await?,
                q: linear("self_attn.q_proj").await?,
                k: linear("self_attn.k_proj").await?,
                v: linear("self_attn.v_proj").await?,
                o: linear("self_attn.o_proj").await?,
                post_norm: w.f32(&format!("{l}.post_attention_layernorm.weight")).await?,
                gate: linear("mlp.gate_proj").await?,
                up: linear("mlp.up_proj").await?,
                down: linear("mlp.down_proj").await?,
            });
        }
        let embed_name = format!("{p}.embed_tokens.weight");
        let head = if c.tie_word_embeddings { embed_name.clone() } else { "lm_head.weight".to_string() };
        let max_positions = c.max_position_embeddings;
        let table = rope_table(c.rope_theta as f32, c.head_dim, max_positions);
        Ok(Self {
            embed: Embedding::load(w, &embed_name).await?,
            layers,
            norm: w.f32(&format!("{p}.norm.weight")).await?,
            lm_head: Linear::load(w, &head, None).await?,
            rope_table: w.gpu.storage_buffer("rope table", bytemuck::cast_slice(&table)).await?,
            max_positions,
        })
    }
}

/// Record a decoder pass over `ids` (appending to `cache`) and the logits of the last position
/// into `logits` (f32 `[vocab]`).
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &ModelConfig,
    model: &TextModel,
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
    if p0 + tokens > cache.capacity || p0 + tokens > model.max_positions {
        return Err(RuntimeError::Shape(format!(
            "{} positions exceed the cache capacity {} / position limit {}",
            p0 + tokens,
            cache.capacity,
            model.max_positions
        )));
    }
    let x = f32_buffer(gpu, "text x", tokens * d).await?;
    let shape = EmbedShape { tokens, vocab: c.vocab_size, d };
    let table = &model.embed.table;
    Embed::for_table(table, image.is_some()).encode(gpu, encoder, shape, ids, table, image, &x).await?;

    let normed = f32_buffer(gpu, "text norm", tokens * d).await?;
    let q = f32_buffer(gpu, "text q", tokens * dq).await?;
    let k = f32_buffer(gpu, "text k", tokens * dkv).await?;
    let v = f32_buffer(gpu, "text v", tokens * dkv).await?;
    let attn = f32_buffer(gpu, "text attn", tokens * dq).await?;
    let out = f32_buffer(gpu, "text out", tokens * d).await?;
    let gate = f32_buffer(gpu, "text gate", tokens * inter).await?;
    let up = f32_buffer(gpu, "text up", tokens * inter).await?;
    let act = f32_buffer(gpu, "text act", tokens * inter).await?;
    let mut scratch = Scratch::default();
    let rms = RmsNorm { eps: c.rms_norm_eps as f32 };
    let rows = NormShape { rows: tokens, d };
    let rope = RopeShape {
        tokens,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: hd,
        pos0: p0,
        max_positions: model.max_positions,
    };
    let attention_shape =
        AttentionShape::causal(tokens, c.num_attention_heads, c.num_key_value_heads, hd, p0, cache.capacity);
    let attention = Attention::for_shape(&attention_shape);
    let append = CopyRows::append(tokens, dkv, p0);
    for (i, l) in model.layers.iter().enumerate() {
        rms.encode(gpu, encoder, rows, &x, &l.input_norm.buffer, &normed).await?;
        for (linear, dst) in [(&l.q, &q), (&l.k, &k), (&l.v, &v)] {
            linear.forward(gpu, encoder, &mut scratch, tokens, &normed, dst).await?;
        }
        Rope.encode(gpu, encoder, rope, &model.rope_table, &q, &k).await?;
        append.encode(gpu, encoder, &k, &cache.keys[i])?;
        append.encode(gpu, encoder, &v, &cache.values[i])?;
        attention.encode(gpu, encoder, attention_shape, &q, &cache.keys[i], &cache.values[i], &attn).await?;
        l.o.forward(gpu, encoder, &mut scratch, tokens, &attn, &out).await?;
        Add.encode(gpu, encoder, tokens * d, tokens * d, &x, &out).await?;

        rms.encode(gpu, encoder, rows, &x, &l.post_norm.buffer, &normed).await?;
        l.gate.forward(gpu, encoder, &mut scratch, tokens, &normed, &gate).await?;
        l.up.forward(gpu, encoder, &mut scratch, tokens, &normed, &up).await?;
        SiluMul.encode(gpu, encoder, tokens * inter, &gate, &up, &act).await?;
        l.down.forward(gpu, encoder, &mut scratch, tokens, &act, &out).await?;
        Add.encode(gpu, encoder, tokens * d, tokens * d, &x, &out).await?;
    }
    cache.len = p0 + tokens;

    // Only the last position's logits are needed.
    let last = f32_buffer(gpu, "text last", d).await?;
    CopyRows { rows: 1, width: d, src_row: tokens - 1, dst_row: 0 }.encode(gpu, encoder, &x, &last)?;
    let last_normed = f32_buffer(gpu, "text last norm", d).await?;
    let one = NormShape { rows: 1, d };
    rms.encode(gpu, encoder, one, &last, &model.norm.buffer, &last_normed).await?;
    model.lm_head.forward(gpu, encoder, &mut scratch, 1, &last_normed, logits).await?;
    Ok(())
}
