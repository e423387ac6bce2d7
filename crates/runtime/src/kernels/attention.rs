//! Scaled dot-product attention with an online softmax, covering SigLIP's bidirectional
//! multi-head attention over tiles, causal grouped-query prefill, and decode against a KV cache.
//!
//! `out[b, i, h, :] = Σ_j softmax_j(s_ij) · v[b, j, g, :]` with
//! `s_ij = scale · q[b, i, h, :] · k[b, j, g, :]`, `scale = head_dim^−½`, `g = h / (heads /
//! kv_heads)` (grouped-query attention), over keys `j < kv_len` and, when causal, `j ≤ q_offset +
//! i` (query `i` of this call sits at absolute position `q_offset + i`).
//!
//! Buffers (row-major f32): `q` and `out` `[batch, queries, heads, head_dim]`; `k` and `v`
//! `[batch, kv_capacity, kv_heads, head_dim]` of which rows `0..kv_len` are read (a KV cache may
//! be larger than its contents). The softmax keeps a running max and rescaled sum in f32, so no
//! per-query score array is stored.
//!
//! Keys are processed in passes of [`TILED_KEYS_PER_PASS`] / [`SPLIT_KEYS_PER_PASS`] keys
//! (one dispatch each) that carry the running max and sum in a small scratch buffer and the
//! unnormalised accumulator in `out`, or (per-query variant) in chunks of at most
//! [`PER_QUERY_ITERATIONS`] loop steps merged by a second dispatch, so no invocation runs an
//! unbounded loop (llvmpipe silently stops an invocation's loops after 65535 iterations in
//! total).
//!
//! **Merging chunks.** A chunk `k` of a row's keys leaves its running max `m_k`, sum `l_k` and
//! unnormalised accumulator `a_k`; with `M = max_k m_k` and `w_k = exp(m_k − M)` the row's output
//! is `Σ_k w_k a_k / Σ_k w_k l_k` — the softmax over all keys, up to f32 rounding (the order of
//! the sums differs from one walk over the keys; tests hold every variant to the same bound
//! against an f64 reference).
//!
//! **Materialised scores.** [`AttentionVariant::Scores`] writes `s_ij` for 8 queries × 8 keys
//! per invocation, turns each row into `p_ij = exp(s_ij − m_i) / l_i` (exact max `m_i`, `l_i`
//! summed in blocks of 64 keys), then sums `Σ_j p_ij v_j` for 8 queries × 8 values per
//! invocation in blocks of 64 keys: every sum as blocked as the online variants', so the same
//! error bound holds. The scores take `batch · heads · queries · keys · 4` bytes, split into
//! calls of at most [`SCORES_BYTES`]. On CPU adapters ([`crate::Capabilities::weight_textures`])
//! its stages read the queries, keys and per-head values from textures, one batch element's
//! copied there before its calls (`OperandTextures`): the same bits, so the same results, 1.29×
//! (lavapipe) and 1.18× (SwiftShader) faster at the vision tower's shape (BENCHMARKS.md, Speed
//! XXIX).
//!
//! Four variants: [`AttentionVariant::QueryTiled`] (one query per invocation, 64 per workgroup,
//! keys staged through workgroup memory; for vision and prefill on GPUs),
//! [`AttentionVariant::SplitKeys`] (one 256-invocation workgroup per query, keys split across
//! invocations; for decode on GPUs), [`AttentionVariant::PerQuery`] (one invocation per query,
//! head and chunk of keys reading them straight from storage, no barriers; for decode on CPU
//! adapters, where each barrier costs tens of microseconds; from [`GROUPED_FROM_KEYS`] keys one
//! invocation takes the query heads of a key/value head, `kernels::head_set`, reading each key
//! and value row once for them, each head's operations unchanged) and [`AttentionVariant::Scores`]
//! (register-blocked, no barriers; for vision and prefill on CPU adapters).
//! [`Attention::for_shape`] picks one.
//!
//! **RoPE on load.** With [`Attention::rope`], `q` and `k` hold the projections before RoPE and
//! every variant rotates what it reads (`shaders/lib/attention_qk.wgsl`: query `i` at position
//! `q_offset + i`, key `j` at position `j`, the operations of `super::rope::rope_reference`):
//! the decoder's caches (plain keys, a latent's keys kept or rebuilt each step) keep their keys
//! before RoPE, and no dispatch rotates them. Each query head (or set of them, per-query variant
//! at long contexts) rotates the keys it reads again (GQA: up to `heads / kv_heads` times), a
//! few hundred flops per key against a dispatch (~50–90 µs on a CPU adapter).

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};

use super::util::{check_binding, chunks, dispatch, distinct, grid, require_size, slice};
use super::{Kernel, head_set};
use crate::device::Gpu;
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::memory::DeviceTexture;
use crate::shader::Defines;

/// Uniform block of `shaders/attention.wgsl` (must match `struct Params` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    queries: u32,
    heads: u32,
    kv_heads: u32,
    kv_len: u32,
    kv_capacity: u32,
    q_offset: u32,
    causal: u32,
    scale: f32,
    key_begin: u32,
    key_end: u32,
    first: u32,
    last: u32,
    value_width: u32,
    /// Keys per chunk and chunks per row of the per-query variant.
    chunk_keys: u32,
    chunks: u32,
    /// Row blocks of this call and the score rows' vec4s, of the scores variant.
    block_begin: u32,
    blocks: u32,
    score_stride4: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 80);

/// Uniform block of `shaders/attention_combine.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct CombineParams {
    rows: u32,
    chunks: u32,
    vd4: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<CombineParams>() == 16);

/// Queries per row block of the scores variant: `ROWS` in `shaders/attention_scores.wgsl`, whose
/// written-out blocks fix it.
const SCORE_ROWS: usize = 8;

/// Vec4s of a score row (4 keys each) one invocation of the scores stage computes for its
/// [`SCORE_ROWS`] queries: `KEY_QUADS` in `shaders/attention_scores.wgsl`, whose written-out
/// block fixes it.
const SCORE_KEY_QUADS: usize = 2;

/// Value vec4s one invocation of the values stage sums for its [`SCORE_ROWS`] queries:
/// `VALUE_COLUMNS` in `shaders/attention_scores.wgsl`, whose written-out block fixes it.
const SCORE_VALUE_COLUMNS: usize = 2;

/// One stage of `shaders/attention_scores.wgsl` for an [`Attention`] kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScoresStage {
    Scores,
    Softmax,
    Values,
}

/// A stage of the scores variant with its kernel's head and value defines, and whether it reads
/// its operands from [`OperandTextures`].
struct ScoresKernel(Attention, ScoresStage, bool);

impl Kernel for ScoresKernel {
    const SHADER: &'static str = "attention_scores";
    fn defines(&self) -> Defines {
        let ScoresKernel(attention, stage, textures) = *self;
        // Only the values stage depends on what the values are (fewer pipelines to compile).
        let (mut d, name, from_textures) = match stage {
            ScoresStage::Scores => {
                let mut d = attention.head_defines();
                // the table after q, k and the scores
                attention.rope_define(&mut d, 4);
                (d, "STAGE_SCORES", textures)
            }
            ScoresStage::Softmax => (Defines::new(), "STAGE_SOFTMAX", false),
            ScoresStage::Values => (
                attention.value_defines(),
                "STAGE_VALUES",
                textures && attention.values == ValueKind::PerHead,
            ),
        };
        d.insert(name.to_string(), String::new());
        if from_textures {
            d.insert("OPERAND_TEXTURES".to_string(), OPERAND_TEXTURE_WIDTH.to_string());
        }
        d
    }
}

/// Texels a row of [`OperandTextures`] (a multiple of 16: a copy's rows are whole 256-byte steps).
const OPERAND_TEXTURE_WIDTH: u32 = 1024;

/// The scores variant's operands in textures, on adapters that fetch texels faster than they
/// load storage ([`crate::Capabilities::weight_textures`]: llvmpipe gathers texels, and loads
/// storage one lane at a time): before the calls covering one batch element's planes, its
/// queries, its keys up to `key_end` and its per-head values are copied into the device's
/// scratch textures, and the scores and values stages read them there, the element's rows
/// counted from 0 (`shaders/lib/texels.wgsl`). The bits and the arithmetic are storage's, so the
/// results are too. A latent's values stay in storage.
struct OperandTextures {
    q: DeviceTexture,
    k: DeviceTexture,
    v: Option<DeviceTexture>,
    /// Vec4s of one element's queries (its stride in `q`).
    q4: u32,
    /// Vec4s of one element's keys (and values) up to `key_end`.
    kv4: u32,
    /// Vec4s of one element's keys (and values) over the cache's capacity: their stride.
    kv_stride4: u64,
}

impl OperandTextures {
    /// The textures for a call of `params` (one batch element at a time), if the adapter prefers
    /// them and its textures are large enough (storage otherwise, with the same results).
    async fn for_call(gpu: &Gpu, attention: &Attention, params: &Params) -> Result<Option<Self>> {
        let hd4 = (attention.head_dim / 4) as u64;
        let q4 = u64::from(params.queries) * u64::from(params.heads) * hd4;
        let kv4 = u64::from(params.key_end) * u64::from(params.kv_heads) * hd4;
        let rows = q4.max(kv4).div_ceil(u64::from(OPERAND_TEXTURE_WIDTH));
        if !gpu.caps.weight_textures || rows > u64::from(gpu.caps.max_texture_side) {
            return Ok(None);
        }
        let texture = |role, texels: u64| gpu.role_texture(role, texels as usize, OPERAND_TEXTURE_WIDTH);
        let v = match attention.values {
            ValueKind::PerHead => Some(texture("attention values", kv4).await?),
            _ => None,
        };
        Ok(Some(Self {
            q: texture("attention queries", q4).await?,
            k: texture("attention keys", kv4).await?,
            v,
            q4: q4 as u32,
            kv4: kv4 as u32,
            kv_stride4: u64::from(params.kv_capacity) * u64::from(params.kv_heads) * hd4,
        }))
    }

    /// Record the copies of batch element `b`'s operands from the call's buffers.
    fn copy(&self, encoder: &mut Encoder, bindings: &Bindings<'_>, b: usize) {
        let b = b as u64;
        encoder.copy_words_to_texture(bindings.q.0, b * u64::from(self.q4) * 16, self.q4, &self.q);
        encoder.copy_words_to_texture(bindings.k.0, b * self.kv_stride4 * 16, self.kv4, &self.k);
        if let Some(v) = &self.v {
            encoder.copy_words_to_texture(bindings.v.0, b * self.kv_stride4 * 16, self.kv4, v);
        }
    }
}

/// `shaders/attention_combine.wgsl`: merges the per-query variant's key chunks, [`COMBINE_RUN`]
/// vec4s of a row per invocation, each chunk's max and sum read (and its weight computed) once for
/// them: a CPU adapter loads storage lane by lane, and the chunks' maxima and sums were most of
/// what one invocation per vec4 read (BENCHMARKS.md, Speed XXX).
struct Combine;

impl Kernel for Combine {
    const SHADER: &'static str = "attention_combine";
    fn defines(&self) -> Defines {
        Defines::new()
    }
}

/// One form of the per-query variant: `set` query heads per invocation (the shader's
/// `HEAD_SET` where more than one) and the chunks it splits a row's keys into.
struct PerQueryForm {
    set: usize,
    defines: Defines,
    /// Most keys of one chunk: [`PER_QUERY_ITERATIONS`] over the loop steps of a key.
    most: usize,
}

impl PerQueryForm {
    fn new(attention: &Attention, set: usize, vd: usize) -> Self {
        let mut defines = attention.defines();
        if set > 1 {
            defines.insert("HEAD_SET".to_string(), set.to_string());
        }
        // loop steps per key, whatever the set (its heads share each step): the key's vec4s,
        // the value's, the key loop itself
        let per_key = (attention.head_dim + vd) / 4 + 1;
        Self { set, defines, most: (PER_QUERY_ITERATIONS / per_key).max(1) }
    }

    /// Keys per chunk for `keys` keys: [`PER_QUERY_CHUNKS`] chunks per set of heads, as many
    /// invocations as one head per invocation would give, each with about as much work (a set's
    /// chunk of `n` keys is `n · set` (query, key) pairs).
    fn chunk_keys(&self, keys: usize) -> usize {
        let fewest = PER_QUERY_MIN_CHUNK_KEYS.div_ceil(self.set);
        keys.div_ceil(PER_QUERY_CHUNKS * self.set).max(fewest).min(self.most)
    }

    /// Most chunks any key count up to `capacity` takes.
    fn most_chunks(&self, capacity: usize) -> usize {
        (PER_QUERY_CHUNKS * self.set).max(capacity.div_ceil(self.chunk_keys(capacity)))
    }
}

/// Largest supported head dimension (keeps the staged key/value tiles within 16 KiB); head
/// dimensions must also be multiples of 4 (the shader reads vec4s).
pub const MAX_HEAD_DIM: usize = 128;
/// Keys one query-tiled dispatch covers; longer ranges take several dispatches carrying the
/// softmax state (keeps every invocation far below llvmpipe's 65535-iteration loop cap).
pub const TILED_KEYS_PER_PASS: usize = 512;
/// Keys one split-keys dispatch covers.
pub const SPLIT_KEYS_PER_PASS: usize = 16384;
/// Loop iterations one per-query invocation may run: its keys times the vec4s of a key and a
/// value, plus one per key (far below llvmpipe's cap); bounds the keys of one chunk.
pub const PER_QUERY_ITERATIONS: usize = 16384;
/// Chunks the per-query variant splits a query's keys into, unless that leaves fewer than
/// [`PER_QUERY_MIN_CHUNK_KEYS`] keys per chunk: decode has only `heads` (query, head) rows, too
/// few invocations to fill a CPU adapter's threads and SIMD lanes without splitting the keys.
pub const PER_QUERY_CHUNKS: usize = 16;
/// Fewest keys per chunk of the per-query variant (more chunks cost more merging).
pub const PER_QUERY_MIN_CHUNK_KEYS: usize = 8;
/// Keys from which the per-query variant takes the query heads sharing a key/value head in one
/// invocation (`kernels::head_set`), each key and value row read once for them. Below, each
/// invocation takes one head: a short context's chunks are short, and an invocation's fixed work
/// (each head's query rotated, accumulators zeroed and written) does not shrink with its chunk,
/// so the sets cost more than they save (BENCHMARKS.md, Speed XXV and XXVI).
pub const GROUPED_FROM_KEYS: usize = 256;
/// Invocations per workgroup of the per-query variant: a CPU adapter runs a workgroup on one
/// thread, so decode's few (query, head, chunk) items need small workgroups to use them all.
const PER_QUERY_GROUP: u64 = 16;
/// Vec4s of a value one invocation of `shaders/attention_combine.wgsl` merges (its `RUN`).
const COMBINE_RUN: usize = 4;
/// Invocations per workgroup of `shaders/attention_combine.wgsl`.
const COMBINE_GROUP: u64 = 64;
/// Queries per workgroup of the query-tiled variant.
const QUERY_TILE: usize = 64;
/// Fewer queries than this use the split-keys variant in [`Attention::for_shape`].
pub const SPLIT_KEYS_BELOW: usize = 32;
/// Most keys the scores variant takes (its longest invocation, the softmax, walks a row three
/// times: far below llvmpipe's loop cap); [`Attention::for_shape`] picks another beyond.
pub const SCORES_MAX_KEYS: usize = 4096;
/// Most bytes of scores one call of the scores variant's three stages holds (the planes are
/// split across calls beyond), within every adapter's binding limit. The buffer stays allocated
/// with the device, so it is kept small: a 512-px tile's 12 heads (48 MiB of scores) take three
/// calls, six more dispatches per layer, ~0.1 ms each against ~2 s of attention in Chromium.
pub const SCORES_BYTES: u64 = 16 << 20;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub queries: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Keys and values present (rows `0..kv_len` of each batch's cache).
    pub kv_len: usize,
    /// Rows per batch in the `k` and `v` buffers (≥ `kv_len`).
    pub kv_capacity: usize,
    /// Absolute position of the first query (used by the causal mask).
    pub q_offset: usize,
    pub causal: bool,
}

impl AttentionShape {
    /// Bidirectional self-attention over `batch` independent sequences of `tokens` tokens (the
    /// vision tower: one sequence per tile).
    pub fn bidirectional(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> Self {
        Self {
            batch,
            queries: tokens,
            heads,
            kv_heads: heads,
            head_dim,
            kv_len: tokens,
            kv_capacity: tokens,
            q_offset: 0,
            causal: false,
        }
    }

    /// Causal attention of `queries` new tokens at positions `q_offset..q_offset + queries`
    /// against a cache already holding their keys and values (`kv_len = q_offset + queries`).
    /// Decode is `queries = 1`.
    pub fn causal(
        queries: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        q_offset: usize,
        kv_capacity: usize,
    ) -> Self {
        Self {
            batch: 1,
            queries,
            heads,
            kv_heads,
            head_dim,
            kv_len: q_offset + queries,
            kv_capacity,
            q_offset,
            causal: true,
        }
    }

    /// Keys query `i` attends to.
    pub fn visible_keys(&self, i: usize) -> usize {
        if self.causal { self.kv_len.min(self.q_offset + i + 1) } else { self.kv_len }
    }

    /// Keys any query of the call attends to.
    pub fn key_count(&self) -> usize {
        self.visible_keys(self.queries.saturating_sub(1))
    }
}

/// Which attention implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionVariant {
    /// 64 queries per workgroup, one per invocation; keys staged in workgroup memory.
    QueryTiled,
    /// One workgroup per query, keys split across 256 invocations.
    SplitKeys,
    /// One invocation per (query, head, chunk of keys), keys in order from storage, then one
    /// dispatch merging the chunks: no workgroup memory, no barriers.
    PerQuery,
    /// Scores, softmax and values as three register-blocked dispatches with the scores in a
    /// scratch buffer: no workgroup memory, no barriers; at most [`SCORES_MAX_KEYS`] keys.
    Scores,
}

impl AttentionVariant {
    /// Every variant (tests run each on every shape).
    pub const ALL: [AttentionVariant; 4] = [
        AttentionVariant::QueryTiled,
        AttentionVariant::SplitKeys,
        AttentionVariant::PerQuery,
        AttentionVariant::Scores,
    ];
}

/// What the values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// Per-head rows `[batch, kv_capacity, kv_heads, head_dim]` f32 (`out` is `[…, head_dim]`).
    PerHead,
    /// A shared f32 latent `[kv_capacity, width]` (the absorbed form; `out` is the weighted
    /// latent sum per head, [`ValueKind::out_dim`] wide).
    LatentF32 { width: usize },
    /// The contract's INT8 latent: `words` u32 per row (i8 lanes, zero-padded) and one f32 scale
    /// per row (`out` is [`ValueKind::out_dim`] wide).
    LatentI8 { words: usize },
}

impl ValueKind {
    /// f32 values per output row of one head: a latent's width rounded up to
    /// [`VALUE_DIM_STEP`] (the values past it are zero).
    pub fn out_dim(&self, head_dim: usize) -> usize {
        match *self {
            ValueKind::PerHead => head_dim,
            ValueKind::LatentF32 { width } => width.next_multiple_of(VALUE_DIM_STEP),
            ValueKind::LatentI8 { words } => (4 * words).next_multiple_of(VALUE_DIM_STEP),
        }
    }
}

/// The values an attention call reads.
pub enum Values<'a> {
    PerHead(&'a wgpu::Buffer),
    LatentF32 { rows: &'a wgpu::Buffer, width: usize },
    LatentI8 { words: &'a wgpu::Buffer, scales: &'a wgpu::Buffer, words_per_row: usize },
}

impl Values<'_> {
    pub fn kind(&self) -> ValueKind {
        match *self {
            Values::PerHead(_) => ValueKind::PerHead,
            Values::LatentF32 { width, .. } => ValueKind::LatentF32 { width },
            Values::LatentI8 { words_per_row, .. } => ValueKind::LatentI8 { words: words_per_row },
        }
    }
}

/// The absorbed form's output rows are padded to a multiple of this many values: the row width is
/// a constant of the compiled kernel, and each distinct one was a pipeline of its own — the demo
/// model's 30 layers with 21 different latent widths compiled 21 (~1.2 s each in Chromium's
/// SwiftShader, 25.7 s of its first prefill; now 4; BENCHMARKS.md, Speed VI).
pub const VALUE_DIM_STEP: usize = 64;

/// Largest value row (f32) of the absorbed form; keeps a 256-invocation workgroup's lanes and
/// a query's accumulator bounded.
pub const MAX_VALUE_DIM: usize = 1024;

/// The attention kernel for one head dimension (a compile-time constant of the shader).
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub head_dim: usize,
    pub variant: AttentionVariant,
    pub values: ValueKind,
    /// Queries and keys arrive before RoPE and are rotated as they are read
    /// (`shaders/lib/attention_qk.wgsl`: query `i` at position `q_offset + i`, key `j` at
    /// position `j`), with the table given to [`Attention::encode_rotating`]: the decoder's
    /// cached keys then take no RoPE dispatch of their own.
    pub rope: bool,
}

/// The RoPE table an [`Attention`] with `rope` reads: `[max_positions, 2, head_dim / 2]` f32
/// (`super::rope::rope_table`).
#[derive(Clone, Copy, Debug)]
pub struct RopeTable<'a> {
    pub table: &'a wgpu::Buffer,
    pub max_positions: usize,
}

impl Kernel for Attention {
    const SHADER: &'static str = "attention";
    fn defines(&self) -> Defines {
        let mut d = self.value_defines();
        // the table after q, k, v, the output (and the softmax state, or the chunks), the scales
        let scales = usize::from(matches!(self.values, ValueKind::LatentI8 { .. }));
        let before_table = if self.variant == AttentionVariant::PerQuery { 4 } else { 5 };
        self.rope_define(&mut d, before_table + scales + 1);
        let vd = self.values.out_dim(self.head_dim);
        match self.variant {
            AttentionVariant::QueryTiled => {
                // Staged keys and values within 16 KiB of workgroup memory.
                let per_key = (self.head_dim + vd) * 4;
                let block_keys = [16, 8, 4, 2, 1].into_iter().find(|bk| bk * per_key <= 16384).unwrap_or(1);
                d.insert("BLOCK_KEYS".to_string(), block_keys.to_string());
            }
            AttentionVariant::SplitKeys => {
                d.insert("SPLIT_KEYS".to_string(), String::new());
            }
            AttentionVariant::PerQuery => {
                d.insert("PER_QUERY".to_string(), String::new());
            }
            // Three stages of its own shader (`ScoresKernel`).
            AttentionVariant::Scores => {}
        }
        d
    }
}

impl Attention {
    /// The head dimension's define.
    fn head_defines(&self) -> Defines {
        BTreeMap::from([("HEAD_DIM".to_string(), self.head_dim.to_string())])
    }

    /// With `rope`, the define naming the table's binding, and for a head dim whose halves are
    /// not whole vec4s (`head_dim % 8 == 4`) the one rotating element by element.
    fn rope_define(&self, d: &mut Defines, binding: usize) {
        if self.rope {
            d.insert("ROPE".to_string(), binding.to_string());
            if !self.head_dim.is_multiple_of(8) {
                d.insert("ROPE_ELEMENTS".to_string(), String::new());
            }
        }
    }

    /// The defines every variant shares: the head dimension and what the values are.
    fn value_defines(&self) -> Defines {
        let mut d = self.head_defines();
        let vd = self.values.out_dim(self.head_dim);
        match self.values {
            ValueKind::PerHead => {}
            ValueKind::LatentF32 { .. } => {
                d.insert("LATENT_F32".to_string(), String::new());
            }
            ValueKind::LatentI8 { .. } => {
                d.insert("LATENT_I8".to_string(), String::new());
            }
        }
        if vd != self.head_dim {
            d.insert("VALUE_DIM".to_string(), vd.to_string());
        }
        d
    }

    /// The kernel suited to `shape` on `gpu`. CPU adapters take the barrier-free variants:
    /// per query for few queries, materialised scores for many (up to [`SCORES_MAX_KEYS`]);
    /// GPUs split the keys for few queries and tile the queries otherwise.
    pub fn for_shape(gpu: &Gpu, shape: &AttentionShape) -> Self {
        let few = shape.queries < SPLIT_KEYS_BELOW;
        let variant = match (few, gpu.caps.cpu) {
            (true, true) => AttentionVariant::PerQuery,
            (true, false) => AttentionVariant::SplitKeys,
            (false, true) if shape.key_count() <= SCORES_MAX_KEYS => AttentionVariant::Scores,
            (false, _) => AttentionVariant::QueryTiled,
        };
        Self { head_dim: shape.head_dim, variant, values: ValueKind::PerHead, rope: false }
    }

    /// The kernel for `shape` on `gpu` reading values of `kind`.
    pub fn with_values(gpu: &Gpu, shape: &AttentionShape, kind: ValueKind) -> Self {
        Self { values: kind, ..Self::for_shape(gpu, shape) }
    }

    /// Record `out = softmax(q·kᵀ·scale + mask)·v`.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: AttentionShape,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        self.encode_values(gpu, encoder, shape, q, k, &Values::PerHead(v), out).await
    }

    /// Record the attention of `q` over keys `k` and values `v` of any [`ValueKind`]: with a
    /// latent, `out[…, h, :] = Σ_j p_hj · latent[j, :]` (the absorbed form).
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_values(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: AttentionShape,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
        v: &Values<'_>,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        self.encode_all(gpu, encoder, shape, (q, k, None), v, out).await
    }

    /// [`Attention::encode_values`] of a kernel with `rope`: `q` and `k` before RoPE, rotated
    /// with `table` as they are read.
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_rotating(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: AttentionShape,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
        table: RopeTable<'_>,
        v: &Values<'_>,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        self.encode_all(gpu, encoder, shape, (q, k, Some(table)), v, out).await
    }

    async fn encode_all(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        shape: AttentionShape,
        (q, k, table): (&wgpu::Buffer, &wgpu::Buffer, Option<RopeTable<'_>>),
        v: &Values<'_>,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let AttentionShape {
            batch,
            queries,
            heads,
            kv_heads,
            head_dim,
            kv_len,
            kv_capacity,
            q_offset,
            causal,
        } = shape;
        let bad = |why: &str| Err(RuntimeError::Shape(format!("attention {shape:?}: {why}")));
        if batch == 0 || queries == 0 || heads == 0 || kv_heads == 0 || kv_len == 0 {
            return bad("empty");
        }
        if head_dim != self.head_dim {
            return bad(&format!("the kernel was built for head_dim {}", self.head_dim));
        }
        if head_dim == 0 || head_dim > MAX_HEAD_DIM || head_dim % 4 != 0 {
            return bad(&format!("head_dim must be a multiple of 4 up to {MAX_HEAD_DIM}"));
        }
        if heads % kv_heads != 0 {
            return bad("heads must be a multiple of kv_heads");
        }
        if kv_len > kv_capacity {
            return bad("kv_len exceeds kv_capacity");
        }
        if causal && q_offset + queries > kv_len {
            return bad("causal queries need their own keys in the cache (q_offset + queries <= kv_len)");
        }
        if v.kind() != self.values {
            return bad("the kernel was built for other values");
        }
        if self.rope != table.is_some() {
            return bad("a RoPE table goes with a kernel built to rotate, and only with it");
        }
        let vd = self.values.out_dim(head_dim);
        if vd == 0 || vd > MAX_VALUE_DIM || (self.values != ValueKind::PerHead && batch != 1) {
            return bad(&format!("latent values are 1..={MAX_VALUE_DIM} wide, batch 1"));
        }
        let q_bytes = (batch * queries * heads * head_dim * 4) as u64;
        let out_bytes = (batch * queries * heads * vd * 4) as u64;
        // Keys and values are bound over their whole capacity, not `kv_len` rows: a decode step
        // then binds what the step before bound and reuses its bind group.
        let cap_elems = (batch * kv_capacity * kv_heads * head_dim) as u64;
        let kv_bytes = cap_elems * 4;
        if q_bytes / 4 > u64::from(u32::MAX) || cap_elems > u64::from(u32::MAX) {
            return bad("too many elements");
        }
        if self.variant == AttentionVariant::Scores && shape.key_count() > SCORES_MAX_KEYS {
            return bad(&format!("the scores variant takes at most {SCORES_MAX_KEYS} keys"));
        }
        require_size(q, q_bytes, "attention queries")?;
        require_size(out, out_bytes, "attention output")?;
        require_size(k, kv_bytes, "attention keys")?;
        let (v_buffer, v_bytes, v_scales) = match *v {
            Values::PerHead(b) => (b, kv_bytes, None),
            Values::LatentF32 { rows, width } => (rows, (kv_capacity * width * 4) as u64, None),
            Values::LatentI8 { words, scales, words_per_row } => {
                let s_bytes = kv_capacity as u64 * 4;
                require_size(scales, s_bytes, "attention latent scales")?;
                distinct(scales, out, "attention latent scales and output")?;
                (words, (kv_capacity * words_per_row * 4) as u64, Some((scales, s_bytes)))
            }
        };
        require_size(v_buffer, v_bytes, "attention values")?;
        let table = match table {
            Some(RopeTable { table, max_positions }) => {
                if q_offset + queries > max_positions || kv_len > max_positions {
                    return bad(&format!("positions past the RoPE table's {max_positions}"));
                }
                let bytes = (max_positions * head_dim * 4) as u64;
                require_size(table, bytes, "attention RoPE table")?;
                check_binding(gpu, "attention RoPE table", bytes)?;
                Some((table, bytes))
            }
            None => None,
        };
        for (buffer, what) in [(q, "queries"), (k, "keys"), (v_buffer, "values")] {
            distinct(buffer, out, &format!("attention {what} and output"))?;
        }
        check_binding(gpu, "attention queries", q_bytes)?;
        check_binding(gpu, "attention output", out_bytes)?;
        check_binding(gpu, "attention keys/values", kv_bytes.max(v_bytes))?;
        // The stored latent row: f32 values, or the INT8 latent's words.
        let value_width = match self.values {
            ValueKind::LatentF32 { width } => width,
            ValueKind::LatentI8 { words } => words,
            ValueKind::PerHead => vd,
        };
        let params = Params {
            queries: queries as u32,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            kv_len: kv_len as u32,
            kv_capacity: kv_capacity as u32,
            q_offset: q_offset as u32,
            causal: u32::from(causal),
            scale: (head_dim as f64).powf(-0.5) as f32,
            key_begin: 0,
            key_end: shape.key_count() as u32,
            first: 1,
            last: 1,
            value_width: value_width as u32,
            chunk_keys: 0,
            chunks: 0,
            block_begin: 0,
            blocks: 0,
            score_stride4: 0,
            _pad: [0; 2],
        };
        let bindings = Bindings {
            q: (q, q_bytes),
            k: (k, kv_bytes),
            v: (v_buffer, v_bytes),
            v_scales,
            out: (out, out_bytes),
            table,
        };
        match self.variant {
            AttentionVariant::QueryTiled | AttentionVariant::SplitKeys => {
                self.encode_passes(gpu, encoder, params, &bindings, batch).await
            }
            AttentionVariant::PerQuery => {
                self.encode_chunks(gpu, encoder, params, &bindings, (batch * queries * heads, batch), vd)
                    .await
            }
            AttentionVariant::Scores => self.encode_scores(gpu, encoder, params, &bindings, batch, vd).await,
        }
    }

    /// The query-tiled and split-keys variants: one dispatch per pass of at most
    /// [`TILED_KEYS_PER_PASS`] / [`SPLIT_KEYS_PER_PASS`] keys, the softmax state carried between
    /// passes in a scratch buffer.
    async fn encode_passes(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        params: Params,
        bindings: &Bindings<'_>,
        batch: usize,
    ) -> Result<()> {
        let (queries, heads) = (params.queries as usize, params.heads as usize);
        let (groups_x, per_pass) = if self.variant == AttentionVariant::QueryTiled {
            (queries.div_ceil(QUERY_TILE), TILED_KEYS_PER_PASS)
        } else {
            (queries, SPLIT_KEYS_PER_PASS)
        };
        let max_groups = gpu.caps.max_workgroups_per_dimension as usize;
        if groups_x > max_groups || heads > max_groups || batch > max_groups {
            return Err(RuntimeError::Shape(format!(
                "attention of {queries} queries × {heads} heads × {batch} batches exceeds the dispatch limit"
            )));
        }
        let pipeline = gpu.pipeline(Self::SHADER, &self.defines()).await?;
        let key_count = params.key_end as usize;
        let passes = key_count.div_ceil(per_pass);
        // Running max and sum between passes ([batch, queries, heads, 2]); a 16-byte stand-in
        // when one pass suffices.
        let ml_bytes = if passes > 1 { (batch * queries * heads * 8) as u64 } else { 16 };
        check_binding(gpu, "attention softmax state", ml_bytes)?;
        let ml = encoder.kernel_scratch(gpu, "attention softmax state", ml_bytes).await?;
        let groups = (groups_x as u32, heads as u32, batch as u32);
        for pass in 0..passes {
            let params = Params {
                key_begin: (pass * per_pass) as u32,
                key_end: ((pass + 1) * per_pass).min(key_count) as u32,
                first: u32::from(pass == 0),
                last: u32::from(pass + 1 == passes),
                ..params
            };
            let resources = bindings.resources(vec![
                Slot::Q,
                Slot::K,
                Slot::V,
                Slot::Out,
                Slot::Other(slice(&ml, 0, ml_bytes)),
                Slot::Scales,
                Slot::Table,
            ]);
            dispatch(gpu, encoder, &pipeline, "attention", bytemuck::bytes_of(&params), resources, groups);
        }
        Ok(())
    }

    /// The per-query variant: each (query, head) row's keys in chunks of at most
    /// [`PER_QUERY_ITERATIONS`] loop steps, one invocation per (query, set of heads, chunk)
    /// writing each head's partial softmax into a scratch buffer, then [`Combine`] merging a
    /// row's chunks into `out`. The set is one head below [`GROUPED_FROM_KEYS`] keys and
    /// [`head_set`] from there (see [`PerQueryForm`]).
    async fn encode_chunks(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        params: Params,
        bindings: &Bindings<'_>,
        (rows, batch): (usize, usize),
        vd: usize,
    ) -> Result<()> {
        let (keys, capacity) = (params.key_end as usize, params.kv_capacity as usize);
        // A cache that can reach GROUPED_FROM_KEYS keys compiles both forms at its first pass,
        // so a decode crossing it compiles nothing then; a shorter one (a caption's) never
        // builds or compiles the long form.
        let mut forms = vec![PerQueryForm::new(self, 1, vd)];
        if capacity >= GROUPED_FROM_KEYS {
            let set = head_set(params.heads as usize, params.kv_heads as usize);
            forms.push(PerQueryForm::new(self, set, vd));
        }
        let mut pipelines = Vec::with_capacity(forms.len());
        for form in &forms {
            pipelines.push(gpu.pipeline(Self::SHADER, &form.defines).await?);
        }
        let chosen = if keys >= GROUPED_FROM_KEYS { forms.len() - 1 } else { 0 };
        let (form, pipeline) = (&forms[chosen], pipelines.swap_remove(chosen));
        let (size, chunks) = (form.chunk_keys(keys), keys.div_ceil(form.chunk_keys(keys)));
        // Sized and bound for the most chunks any form that can run takes for any key count up
        // to the capacity, so the steps of a decode bind the same buffer and range (no
        // allocation, bind groups reused).
        let most_chunks = forms.iter().map(|form| form.most_chunks(capacity)).max().unwrap_or(1);
        let vd4 = vd / 4;
        let part_bytes = (rows * most_chunks * (vd4 + 1) * 16) as u64;
        check_binding(gpu, "attention chunks", part_bytes)?;
        let part = encoder.kernel_scratch(gpu, "attention chunks", part_bytes).await?;
        let params = Params { chunk_keys: size as u32, chunks: chunks as u32, ..params };
        let items = (rows / batch / form.set * chunks) as u64;
        let (gx, gy) = grid(gpu, items.div_ceil(PER_QUERY_GROUP))?;
        let resources = bindings.resources(vec![
            Slot::Q,
            Slot::K,
            Slot::V,
            Slot::Other(slice(&part, 0, part_bytes)),
            Slot::Scales,
            Slot::Table,
        ]);
        dispatch(
            gpu,
            encoder,
            &pipeline,
            "attention",
            bytemuck::bytes_of(&params),
            resources,
            (gx, gy, batch as u32),
        );
        let combine = gpu.pipeline(Combine::SHADER, &Combine.defines()).await?;
        let cp = CombineParams { rows: rows as u32, chunks: chunks as u32, vd4: vd4 as u32, _pad: 0 };
        let resources = bindings.resources(vec![Slot::Other(slice(&part, 0, part_bytes)), Slot::Out]);
        let runs = vd4.div_ceil(COMBINE_RUN);
        let (gx, gy) = grid(gpu, ((rows * runs) as u64).div_ceil(COMBINE_GROUP))?;
        dispatch(gpu, encoder, &combine, "attention", bytemuck::bytes_of(&cp), resources, (gx, gy, 1));
        Ok(())
    }

    /// The scores variant: the (batch, head) planes' blocks of [`SCORE_ROWS`] queries in calls
    /// of at most [`SCORES_BYTES`] of scores, each call three dispatches (scores, softmax,
    /// values) sharing one scratch buffer.
    async fn encode_scores(
        &self,
        gpu: &Gpu,
        encoder: &mut Encoder,
        params: Params,
        bindings: &Bindings<'_>,
        batch: usize,
        vd: usize,
    ) -> Result<()> {
        let (queries, heads) = (params.queries as usize, params.heads as usize);
        let stride4 = (params.key_end as usize).div_ceil(4);
        let block_bytes = (SCORE_ROWS * stride4 * 16) as u64;
        let element_blocks = heads * queries.div_ceil(SCORE_ROWS);
        let total_blocks = batch * element_blocks;
        let limit = SCORES_BYTES.min(gpu.caps.max_storage_binding);
        let per_call = ((limit / block_bytes) as usize).clamp(1, total_blocks);
        let scores_bytes = per_call as u64 * block_bytes;
        check_binding(gpu, "attention scores", scores_bytes)?;
        let scores = encoder.kernel_scratch(gpu, "attention scores", scores_bytes).await?;
        let textures = OperandTextures::for_call(gpu, self, &params).await?;
        let mut pipelines = Vec::with_capacity(3);
        for stage in [ScoresStage::Scores, ScoresStage::Softmax, ScoresStage::Values] {
            let kernel = ScoresKernel(*self, stage, textures.is_some());
            pipelines.push(gpu.pipeline(ScoresKernel::SHADER, &kernel.defines()).await?);
        }
        // what the stages read the operands from: the call's buffers or the textures
        let (q, k) = match &textures {
            Some(t) => (view(&t.q), view(&t.k)),
            None => (Slot::Q, Slot::K),
        };
        let v = textures.as_ref().and_then(|t| t.v.as_ref()).map_or(Slot::V, view);
        // all blocks in calls from the buffers; from textures, one batch element's at a time
        let spans = match &textures {
            Some(_) => (0..batch).map(|b| (b * element_blocks, element_blocks)).collect(),
            None => vec![(0, total_blocks)],
        };
        let column_blocks = (vd / 4).div_ceil(SCORE_VALUE_COLUMNS);
        for (b, (first, count)) in spans.into_iter().enumerate() {
            if let Some(textures) = &textures {
                textures.copy(encoder, bindings, b);
            }
            for (begin, blocks) in chunks(count, per_call) {
                let params = Params {
                    block_begin: (first + begin) as u32,
                    blocks: blocks as u32,
                    score_stride4: stride4 as u32,
                    ..params
                };
                let scratch = || Slot::Other(slice(&scores, 0, scores_bytes));
                let stages = [
                    (
                        "attention scores",
                        blocks * stride4.div_ceil(SCORE_KEY_QUADS),
                        vec![q.clone(), k.clone(), scratch(), Slot::Table],
                    ),
                    ("attention softmax", blocks * SCORE_ROWS, vec![scratch()]),
                    (
                        "attention values",
                        blocks * column_blocks,
                        vec![scratch(), v.clone(), Slot::Out, Slot::Scales],
                    ),
                ];
                for (pipeline, (label, items, slots)) in pipelines.iter().zip(stages) {
                    let (gx, gy) = grid(gpu, (items as u64).div_ceil(64))?;
                    let resources = bindings.resources(slots);
                    dispatch(
                        gpu,
                        encoder,
                        pipeline,
                        label,
                        bytemuck::bytes_of(&params),
                        resources,
                        (gx, gy, 1),
                    );
                }
            }
        }
        Ok(())
    }
}

/// The binding of a texture's view.
fn view(texture: &DeviceTexture) -> Slot<'_> {
    Slot::Other(wgpu::BindingResource::TextureView(&texture.view))
}

/// A binding of an attention dispatch: one of the call's buffers, or a scratch range or texture.
#[derive(Clone)]
enum Slot<'a> {
    Q,
    K,
    V,
    Out,
    /// The INT8 latent's scales; nothing for other values.
    Scales,
    /// The RoPE table; nothing for a kernel reading rotated queries and keys.
    Table,
    Other(wgpu::BindingResource<'a>),
}

/// The buffers of one attention call, each with the bytes bound.
struct Bindings<'a> {
    q: (&'a wgpu::Buffer, u64),
    k: (&'a wgpu::Buffer, u64),
    v: (&'a wgpu::Buffer, u64),
    v_scales: Option<(&'a wgpu::Buffer, u64)>,
    out: (&'a wgpu::Buffer, u64),
    table: Option<(&'a wgpu::Buffer, u64)>,
}

impl<'a> Bindings<'a> {
    /// The resources of `slots`, in order, for bindings 1, 2, … of a dispatch.
    fn resources(&self, slots: Vec<Slot<'a>>) -> Vec<wgpu::BindingResource<'a>> {
        let bound = |(buffer, bytes): (&'a wgpu::Buffer, u64)| slice(buffer, 0, bytes);
        slots
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Q => Some(bound(self.q)),
                Slot::K => Some(bound(self.k)),
                Slot::V => Some(bound(self.v)),
                Slot::Out => Some(bound(self.out)),
                Slot::Scales => self.v_scales.map(bound),
                Slot::Table => self.table.map(bound),
                Slot::Other(resource) => Some(resource),
            })
            .collect()
    }
}

/// CPU reference of [`Attention`] (f64 scores, softmax and sums), for tests.
pub fn attention_reference(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape) -> Vec<f32> {
    let AttentionShape { batch, queries, heads, kv_heads, head_dim: hd, kv_capacity, .. } = shape;
    let scale = (hd as f64).powf(-0.5);
    let mut out = vec![0f32; batch * queries * heads * hd];
    for b in 0..batch {
        for i in 0..queries {
            let n = shape.visible_keys(i);
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let qrow = &q[((b * queries + i) * heads + h) * hd..][..hd];
                let krow = |j: usize| ((b * kv_capacity + j) * kv_heads + g) * hd;
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let kr = &k[krow(j)..][..hd];
                        scale * qrow.iter().zip(kr).map(|(&a, &c)| f64::from(a) * f64::from(c)).sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..hd {
                    let o: f64 = (0..n).map(|j| weights[j] * f64::from(v[krow(j) + d])).sum();
                    out[((b * queries + i) * heads + h) * hd + d] = (o / total) as f32;
                }
            }
        }
    }
    out
}
