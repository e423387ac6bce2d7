//! The Llama/SmolLM2 text decoder with a KV cache.
//!
//! For `T` new tokens at positions `p0..p0+T`: `x = Embed(ids)` with image features scattered
//! into the `<image>` positions; per layer `h = RMSNorm(x)`, `q,k,v = h·W_{q,k,v}ᵀ` ([`Qkv`]),
//! `k, v` appended to the cache, `x += o_proj(CausalGQA(RoPE(q), RoPE(K[..p0+T]), V[..p0+T]))`
//! — or, for a layer with a latent cache ([`super::kv_cache`]), the latent appended, `K` rebuilt
//! from it (every cached key each step, or the new ones once and kept) and `V` absorbed by a
//! decode step (rebuilt by a pass of several new tokens: [`rebuilds_values`]). Every
//! cache keeps its keys before RoPE: attention rotates the queries and keys as it reads them;
//! `x += down(silu(gate(RMSNorm(x))) ⊙ up(RMSNorm(x)))`; then the final RMSNorm and `lm_head` on
//! the last position only.

use pocketvlm_format::architecture::{EMBED_TOKENS, LM_HEAD};
use pocketvlm_format::{ModelConfig, TextConfig};

use super::interrupt::Interrupt;
use super::kv_cache::{CacheKind, CacheLayout, KvCache, LayerCache};
use super::linear::{Embedding, LayerInput, Linear, Matrix, forward_shared, input_quantization, products};
use super::qkv::{Qkv, Queries, Ups};
use super::scratch::Scratch;
use super::weights::WeightLoader;
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::attention::{Attention, AttentionShape, RopeTable, ValueKind, Values};
use crate::kernels::bf16_rows::Bf16Rows;
use crate::kernels::copy::CopyRows;
use crate::kernels::embed::{Embed, EmbedShape, ImageFeatures};
use crate::kernels::latent::{LatentUp, LatentUpShape, UpWeights};
use crate::kernels::norm::{NormLayout, NormShape, QuantizedOutput, RmsNorm};
use crate::kernels::quant::QuantizedRows;
use crate::kernels::quant::activation_words;
use crate::kernels::rope::rope_table;
use crate::memory::DeviceBuffer;
use crate::tensor::Tensor;

/// One decoder layer's weights.
pub struct DecoderLayer {
    pub input_norm: Tensor,
    pub qkv: Qkv,
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
    pub rope_table: DeviceBuffer,
    pub max_positions: usize,
}

impl TextModel {
    /// What a cache of `kind` holds per token for this model's layers.
    pub fn cache_layout(&self, cfg: &ModelConfig, kind: CacheKind) -> CacheLayout {
        CacheLayout::new(cfg, self.layers.iter().map(|l| &l.qkv), kind)
    }

    /// Bytes of the embedding table's buffers that no other layer reads: all of them, unless the
    /// LM head is the table itself (a float tied head binds the same buffer).
    pub fn embedding_only_bytes(&self) -> u64 {
        let table = &self.embed.table;
        let head_reads_table = matches!(&self.lm_head, Linear { down: None, up: Matrix::Float { weight, .. } }
            if *weight.buffer == *table.values.buffer);
        match head_reads_table {
            true => 0,
            false => table.values.buffer.size() + table.scales.as_ref().map_or(0, |s| s.buffer.size()),
        }
    }

    pub async fn load(w: &WeightLoader<'_>, cfg: &ModelConfig) -> Result<Self> {
        let c = &cfg.text;
        let p = "model.text_model";
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = format!("{p}.layers.{i}");
            let name = |s: &str| format!("{l}.{s}.weight");
            // gate and up read one input: loaded together (stacked where they allow)
            let [gate, up] = Linear::load_group(w, [&name("mlp.gate_proj"), &name("mlp.up_proj")]).await?;
            layers.push(DecoderLayer {
                input_norm: w.f32(&format!("{l}.input_layernorm.weight")).await?,
                qkv: Qkv::load(w, &format!("{l}.self_attn"), false).await?,
                o: Linear::load(w, &name("self_attn.o_proj"), None).await?,
                post_norm: w.f32(&format!("{l}.post_attention_layernorm.weight")).await?,
                gate,
                up,
                down: Linear::load(w, &name("mlp.down_proj"), None).await?,
            });
        }
        let embed_name = EMBED_TOKENS.to_string();
        let head = if c.tie_word_embeddings { embed_name.clone() } else { LM_HEAD.to_string() };
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
/// into `logits` (f32 `[vocab]`); the pass's activations come from `scratch` (a generation keeps
/// one for its decode steps, which then allocate no buffers). Each decoder layer is a part of
/// the pass for `interrupt` (a decode step's is [`Interrupt::never`]).
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    gpu: &Gpu,
    encoder: &mut Encoder,
    interrupt: &mut Interrupt<'_>,
    scratch: &mut Scratch,
    cfg: &ModelConfig,
    model: &TextModel,
    cache: &mut KvCache,
    ids: &wgpu::Buffer,
    tokens: usize,
    image: Option<ImageFeatures<'_>>,
    logits: &wgpu::Buffer,
) -> Result<()> {
    let c = &cfg.text;
    let (d, inter) = (c.hidden_size, c.intermediate_size);
    let p0 = cache.len;
    if p0 + tokens > cache.capacity || p0 + tokens > model.max_positions {
        return Err(RuntimeError::Shape(format!(
            "{} positions exceed the cache capacity {} / position limit {}",
            p0 + tokens,
            cache.capacity,
            model.max_positions
        )));
    }
    let x = scratch.f32(gpu, "text x", tokens * d).await?;
    let shape = EmbedShape { tokens, vocab: c.vocab_size, d };
    let table = &model.embed.table;
    Embed::for_table(table, image.is_some()).encode(gpu, encoder, shape, ids, table, image, &x).await?;

    let out = scratch.f32(gpu, "text out", tokens * d).await?;
    let gate = scratch.f32(gpu, "text gate", tokens * inter).await?;
    let up = scratch.f32(gpu, "text up", tokens * inter).await?;
    let act = scratch.f32(gpu, "text act", tokens * inter).await?;
    let norm = NormStep::new(gpu, scratch, c, tokens).await?;
    let mut pass = AttentionPass::new(gpu, scratch, cfg, model, cache, tokens).await?;
    // Each residual add is recorded with the norm that follows it (the next layer's input norm,
    // after the last layer the final norm, of every row: rows are normalised independently).
    let first = model.layers.first().map_or(&model.norm, |l| &l.input_norm);
    let first_readers = model.layers.first().map(|l| l.qkv.input_readers()).unwrap_or_default();
    let mut normed = norm.encode(gpu, encoder, (&x, None), first, &first_readers).await?;
    for (i, l) in model.layers.iter().enumerate() {
        pass.encode(gpu, encoder, scratch, &l.qkv, &cache.layers[i], normed).await?;
        l.o.forward(gpu, encoder, scratch, tokens, &pass.attn, &out).await?;
        let mlp = norm.encode(gpu, encoder, (&x, Some(&out)), &l.post_norm, &[&l.gate, &l.up]).await?;
        forward_shared(gpu, encoder, scratch, tokens, mlp, &[(&l.gate, &gate), (&l.up, &up)]).await?;
        l.down.forward_silu_mul(gpu, encoder, scratch, tokens, (&gate, &up), &act, &out).await?;
        let (next, readers) = match model.layers.get(i + 1) {
            Some(n) => (&n.input_norm, n.qkv.input_readers()),
            // only the last position's logits are needed: the head reads all rows of one token
            None => (&model.norm, if tokens == 1 { vec![&model.lm_head] } else { vec![] }),
        };
        normed = norm.encode(gpu, encoder, (&x, Some(&out)), next, &readers).await?;
        interrupt.point(gpu, encoder).await?;
    }
    cache.len = p0 + tokens;

    if tokens == 1 {
        return forward_shared(gpu, encoder, scratch, 1, normed, &[(&model.lm_head, logits)]).await;
    }
    let last_normed = scratch.f32(gpu, "text last norm", d).await?;
    let last = CopyRows { rows: 1, width: d, src_row: tokens - 1, dst_row: 0 };
    last.encode(gpu, encoder, normed.x, &last_normed)?;
    model.lm_head.forward(gpu, encoder, scratch, 1, &last_normed, logits).await
}

/// The decoder's RMSNorms of one pass (each with the residual add before it) and their output
/// buffers: the normed rows, and their integers and scales where the layers reading them quantize
/// their input without online transforms (the norm then quantizes it for them, one dispatch
/// fewer per norm).
struct NormStep {
    rms: RmsNorm,
    layout: NormLayout,
    rows: NormShape,
    normed: DeviceBuffer,
    words: DeviceBuffer,
    scales: DeviceBuffer,
}

impl NormStep {
    async fn new(gpu: &Gpu, scratch: &mut Scratch, c: &TextConfig, tokens: usize) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            rms: RmsNorm { eps: c.rms_norm_eps as f32 },
            layout: NormLayout::for_gpu(gpu, tokens),
            rows: NormShape { rows: tokens, d },
            normed: scratch.f32(gpu, "text norm", tokens * d).await?,
            words: scratch
                .bytes(gpu, "text norm integers", (tokens * activation_words(d) * 4) as u64)
                .await?,
            scales: scratch.f32(gpu, "text norm scales", tokens).await?,
        })
    }

    /// Record `x ← x + x.1` (when given) and the norm of `x` with weight `gamma`, for the layers
    /// `readers`.
    async fn encode<'a>(
        &'a self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        x: (&wgpu::Buffer, Option<&wgpu::Buffer>),
        gamma: &Tensor,
        readers: &[&'a Linear],
    ) -> Result<LayerInput<'a>> {
        let quantized = input_quantization(readers).map(|activation| QuantizedOutput {
            activation,
            words: &self.words,
            scales: &self.scales,
        });
        let y = (&*self.normed, quantized);
        self.rms.encode(gpu, encoder, self.layout, self.rows, x, &gamma.buffer, y).await?;
        Ok(LayerInput { x: &self.normed, quantized })
    }
}

/// Whether a pass of `tokens` new tokens rebuilds the values of a latent cache instead of
/// absorbing `v_up`: every pass of several tokens (a prompt's prefill, a chat follow-up) rebuilds,
/// a decode step absorbs.
///
/// Rebuilding is `v = v_up · c` for every cached token — the contract's steps 6–7 on the cached
/// INT8 pair, exactly the plain cache's values (or the float ups on the widened bf16 latents) —
/// `ctx · d_kv · r` multiply-adds per layer in the block product that rebuilds the keys (the ups
/// are stacked), then attention over per-head values: `heads · head_dim` per (query, key) pair.
/// Absorbing sums `ĉ = Σ_t p_t c_t` per query head, reading `r`-wide latent rows (`heads · r` per
/// pair), and applies `v_up` to each sum: `tokens · heads · head_dim · r` more. For one token the
/// rebuild is ~`d_kv / heads` times the absorbed work (a decode step never rebuilds V for past
/// tokens); for `tokens` new tokens the absorbed work per cached token grows as
/// `tokens · heads · (r − head_dim)` against the rebuild's fixed `d_kv · r`, so by multiply-adds
/// alone the two meet near `tokens ≈ d_kv / heads` (21 for the 256M model). They meet sooner in
/// time: the absorbed stages run per query with little reuse of what they load, where the rebuild
/// is one block product that reuses each weight word for 8 tokens. Measured on the demo model
/// (BENCHMARKS.md, Speed XXIV), a pass of 2–24 new tokens after 100–1000 cached ones ran
/// 1.03–2.5× faster rebuilding on lavapipe, and 4 and 16 tokens 1.0–1.8× faster in Chromium.
pub fn rebuilds_values(tokens: usize) -> bool {
    tokens > 1
}

/// Record only the attention half of one decode step, every layer (the projections, the cache
/// write at row `cache.len` — not counted as cached —, the key rebuild of a latent layer,
/// attention and the value projection) on the normed hidden row `normed` (f32 `[d]`): what the
/// cache kind changes, for the bench. Needs a free cache row.
pub async fn attention_step(
    gpu: &Gpu,
    encoder: &mut Encoder,
    cfg: &ModelConfig,
    model: &TextModel,
    cache: &KvCache,
    normed: &wgpu::Buffer,
) -> Result<()> {
    if cache.len >= cache.capacity {
        return Err(RuntimeError::Shape("no free cache row for an attention step".into()));
    }
    let mut scratch = Scratch::default();
    let mut pass = AttentionPass::new(gpu, &mut scratch, cfg, model, cache, 1).await?;
    for (l, layer) in model.layers.iter().zip(&cache.layers) {
        pass.encode(gpu, encoder, &mut scratch, &l.qkv, layer, normed.into()).await?;
    }
    Ok(())
}

/// The attention half of one pass of `tokens` new tokens at positions `p0..p0 + tokens`, layer
/// by layer: projections, RoPE, the cache append and attention, into `attn` f32 `[tokens, d_q]`.
/// Holds the pass's buffers (shared by all layers).
struct AttentionPass<'a> {
    cfg: &'a ModelConfig,
    model: &'a TextModel,
    tokens: usize,
    p0: usize,
    capacity: usize,
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    /// Keys of all cached tokens rebuilt from a latent cache that keeps none (f32 `[p0 + tokens,
    /// d_kv]`).
    rebuilt: Option<DeviceBuffer>,
    /// Values of all cached tokens rebuilt from a latent cache, where this pass rebuilds them
    /// ([`rebuilds_values`]; f32 `[p0 + tokens, d_kv]`).
    rebuilt_values: Option<DeviceBuffer>,
    /// Softmax-weighted latent sums per query head, where this pass absorbs `v_up` instead (f32
    /// `[tokens, heads, ≤ 4·words]`).
    sums: Option<DeviceBuffer>,
    /// A bf16 latent cache widened to f32 (`[p0 + tokens, rank]`), shared by all layers.
    widened: Option<DeviceBuffer>,
    attn: DeviceBuffer,
}

impl<'a> AttentionPass<'a> {
    async fn new(
        gpu: &Gpu,
        scratch: &mut Scratch,
        cfg: &'a ModelConfig,
        model: &'a TextModel,
        cache: &KvCache,
        tokens: usize,
    ) -> Result<Self> {
        let c = &cfg.text;
        let (dq, dkv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        // Context-wide buffers are sized for the whole cache, so decode steps reuse them.
        let rows = cache.capacity.max(cache.len + tokens);
        let widest = cache
            .layers
            .iter()
            .map(|l| match *l {
                LayerCache::Plain { .. } => 0,
                LayerCache::LatentBf16 { rank, .. } => {
                    ValueKind::LatentF32 { width: rank }.out_dim(c.head_dim)
                }
                LayerCache::LatentI8 { words_per_row, .. } => {
                    ValueKind::LatentI8 { words: words_per_row }.out_dim(c.head_dim)
                }
            })
            .max()
            .unwrap_or(0);
        let latent = widest > 0;
        let rebuilds = cache.layers.iter().any(|l| l.is_latent() && l.kept_keys().is_none());
        let values = latent && rebuilds_values(tokens);
        let bf16_rank = cache
            .layers
            .iter()
            .map(|l| if let LayerCache::LatentBf16 { rank, .. } = l { *rank } else { 0 })
            .max()
            .unwrap_or(0);
        Ok(Self {
            cfg,
            model,
            tokens,
            p0: cache.len,
            capacity: cache.capacity,
            q: scratch.f32(gpu, "text q", tokens * dq).await?,
            k: scratch.f32(gpu, "text k", tokens * dkv).await?,
            v: scratch.f32(gpu, "text v", tokens * dkv).await?,
            rebuilt: if rebuilds { Some(scratch.f32(gpu, "rebuilt keys", rows * dkv).await?) } else { None },
            rebuilt_values: if values {
                Some(scratch.f32(gpu, "rebuilt values", rows * dkv).await?)
            } else {
                None
            },
            sums: if latent && !values {
                Some(scratch.f32(gpu, "latent sums", tokens * c.num_attention_heads * widest).await?)
            } else {
                None
            },
            widened: if bf16_rank > 0 {
                Some(scratch.f32(gpu, "widened latents", rows * bf16_rank).await?)
            } else {
                None
            },
            attn: scratch.f32(gpu, "text attn", tokens * dq).await?,
        })
    }

    /// Record one layer's attention over `normed` (f32 `[tokens, d]`) into `self.attn`.
    async fn encode(
        &mut self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        scratch: &mut Scratch,
        qkv: &Qkv,
        layer: &LayerCache,
        normed: LayerInput<'_>,
    ) -> Result<()> {
        let c = &self.cfg.text;
        let (tokens, p0, hd) = (self.tokens, self.p0, c.head_dim);
        let (heads, kv_heads, dkv) =
            (c.num_attention_heads, c.num_key_value_heads, c.num_key_value_heads * hd);
        let ctx = p0 + tokens;
        // every cache keeps its keys before RoPE: attention rotates queries and keys with it
        let rope = RopeTable { table: &self.model.rope_table, max_positions: self.model.max_positions };
        let causal = AttentionShape::causal(tokens, heads, kv_heads, hd, p0, self.capacity);
        let widened = self.widened.clone();
        let (joint, values) = match (qkv, layer) {
            (qkv, LayerCache::Plain { keys, values, .. }) => {
                qkv.forward(gpu, encoder, scratch, tokens, normed, [&self.q, &self.k, &self.v]).await?;
                let append = CopyRows::append(tokens, dkv, p0);
                append.encode(gpu, encoder, &self.k, keys)?;
                append.encode(gpu, encoder, &self.v, values)?;
                let kernel = Attention { rope: true, ..Attention::for_shape(gpu, &causal) };
                return kernel
                    .encode_rotating(
                        gpu,
                        encoder,
                        causal,
                        &self.q,
                        keys,
                        rope,
                        &Values::PerHead(values),
                        &self.attn,
                    )
                    .await;
            }
            (Qkv::Joint(j), LayerCache::LatentI8 { words, scales, words_per_row, keys: kept }) => {
                let Ups::Quant { q: q_up, k: k_up, v: v_up } = j.ups() else {
                    return Err(RuntimeError::Shape("an INT8 latent cache for float ups".into()));
                };
                let r = j.rank();
                let latent = scratch.f32(gpu, "qkv latent", tokens * r).await?;
                j.project(gpu, encoder, scratch, tokens, normed, &latent, &self.q).await?;
                let stride = *words_per_row;
                let (new_words, new_scales) = scratch.latent_rows(gpu, tokens, stride, r).await?;
                k_up.quantize(gpu, encoder, tokens, &latent, (&new_words, stride), &new_scales).await?;
                CopyRows::append(tokens, stride, p0).encode(gpu, encoder, &new_words, words)?;
                CopyRows::append(tokens, 1, p0).encode(gpu, encoder, &new_scales, scales)?;
                let new = QuantizedRows::new(&new_words, &new_scales, tokens, stride);
                if let Some(q_up) = q_up {
                    q_up.product(gpu, encoder, &new, (&self.q, 0)).await?;
                }
                // The keys of the new tokens only (kept: from the integers and scales they are
                // cached as) or of all cached ones, and where this pass rebuilds them the values
                // of all (one product with the keys where the ups are stacked).
                let (mut from_new, mut from_all) = (Vec::new(), Vec::new());
                match kept {
                    Some(_) => from_new.push((k_up, (&*self.k, 0))),
                    None => from_all.push((k_up, (self.rebuilt()?, 0))),
                }
                if let Some(v) = &self.rebuilt_values {
                    from_all.push((v_up, (&**v, 0)));
                }
                let all = QuantizedRows::new(words, scales, ctx, stride).spanning(self.capacity);
                products(gpu, encoder, &new, &from_new).await?;
                products(gpu, encoder, &all, &from_all).await?;
                match &self.rebuilt_values {
                    Some(v) => (j, Values::PerHead(v)),
                    None => (j, Values::LatentI8 { words, scales, words_per_row: *words_per_row }),
                }
            }
            (Qkv::Joint(j), LayerCache::LatentBf16 { rows, rank, keys: kept }) => {
                // the new latents rounded into the cache; queries from the unrounded ones; keys
                // and values of every cached token from the cache widened back to f32
                let latent = scratch.f32(gpu, "qkv latent", tokens * rank).await?;
                j.project(gpu, encoder, scratch, tokens, normed, &latent, &self.q).await?;
                let half = Bf16Rows { width: *rank };
                half.pack(gpu, encoder, tokens, &latent, rows, p0).await?;
                if let Queries::Up(q_up) = &j.q {
                    q_up.forward(gpu, encoder, scratch, tokens, &latent, &self.q).await?;
                }
                let widened = widened
                    .as_ref()
                    .ok_or_else(|| RuntimeError::Shape("no widened-latents buffer".into()))?;
                half.widen(gpu, encoder, ctx, rows, widened).await?;
                if kept.is_some() {
                    // the new tokens' keys only, from their latents as cached (rounded to bf16)
                    let new = scratch.f32(gpu, "new widened latents", tokens * rank).await?;
                    CopyRows { rows: tokens, width: *rank, src_row: p0, dst_row: 0 }
                        .encode(gpu, encoder, widened, &new)?;
                    j.k_up.forward(gpu, encoder, scratch, tokens, &new, &self.k).await?;
                } else {
                    let rebuilt = self.rebuilt()?.clone();
                    j.k_up.forward(gpu, encoder, scratch, ctx, widened, &rebuilt).await?;
                }
                match &self.rebuilt_values {
                    Some(v) => {
                        j.v_up.forward(gpu, encoder, scratch, ctx, widened, v).await?;
                        (j, Values::PerHead(v))
                    }
                    None => (j, Values::LatentF32 { rows: widened, width: *rank }),
                }
            }
            _ => return Err(RuntimeError::Shape("a latent cache for a layer without a joint QKV".into())),
        };
        // Latent cache: the new keys appended to the kept keys, or every key rebuilt; attention
        // rotating the queries and keys (key j at position j) as it reads them, over the rebuilt
        // values or summing latents, then v_up once per head.
        let keys: &wgpu::Buffer = match layer.kept_keys() {
            Some(kept) => {
                CopyRows::append(tokens, dkv, p0).encode(gpu, encoder, &self.k, &kept.buffer)?;
                &kept.buffer
            }
            None => self.rebuilt()?,
        };
        let kernel = Attention { rope: true, ..Attention::with_values(gpu, &causal, values.kind()) };
        if let Values::PerHead(_) = values {
            return kernel
                .encode_rotating(gpu, encoder, causal, &self.q, keys, rope, &values, &self.attn)
                .await;
        }
        let sums = self.sums.as_ref().ok_or_else(|| RuntimeError::Shape("no latent sums buffer".into()))?;
        kernel.encode_rotating(gpu, encoder, causal, &self.q, keys, rope, &values, sums).await?;
        let (weights, bias) = match &joint.v_up {
            Matrix::Float { weight, bias } => (UpWeights::Float(weight), bias.as_ref()),
            Matrix::Quant(q) => (UpWeights::Quant(&q.weights), q.bias.as_ref()),
        };
        let vd = values.kind().out_dim(hd);
        let up_shape = LatentUpShape { tokens, heads, kv_heads, head_dim: hd, vd };
        LatentUp::for_weights(&weights, bias.is_some())
            .encode(gpu, encoder, up_shape, sums, &weights, bias, &self.attn)
            .await
    }

    fn rebuilt(&self) -> Result<&wgpu::Buffer> {
        self.rebuilt.as_deref().ok_or_else(|| RuntimeError::Shape("no rebuilt-keys buffer".into()))
    }
}
