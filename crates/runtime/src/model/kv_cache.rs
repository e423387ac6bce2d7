//! The decoder's KV cache, per layer either plain keys and values or the shared latent.
//!
//! **Plain** (any layer): f32 keys (before RoPE: attention rotates them as it reads them) and
//! values `[capacity, kv_heads·head_dim]`.
//!
//! **Latent** (a layer with a shared latent — joint QKV, or K/V with Q apart — whose rank `r` is
//! below `2·d_kv`, the format's rule, when the model runs with [`CacheKind::Latent`]): the
//! pre-RoPE latent `c = qkv_down · x` (or `kv_down · x`) of each token.
//! A quantized model keeps the contract's cache entry — the latent's INT8 integers (`r` bytes,
//! padded to whole groups of four words, 16 values, which the ups' products read four words at a
//! time) and its f32 scale, exactly what the ups consume; a float model keeps `c` rounded to
//! bf16 (`2r` bytes, the manifest's 16-bit values; bf16 rather than f16 keeps f32's range, so no
//! latent overflows; [`crate::kernels::bf16_rows`]), widened each step into a transient f32
//! buffer shared by all layers. Each step then rebuilds the keys of all cached
//! tokens (`k_up` on the cache) into a transient buffer shared by all layers, which attention
//! reads with RoPE applied as it loads each key at its own position
//! ([`crate::kernels::attention::Attention::rope`]); a decode step never rebuilds values: it sums
//! the latents with the softmax weights and applies `v_up` once per head
//! ([`crate::kernels::latent`]). A pass of several new tokens (a prompt's prefill, a chat
//! follow-up) rebuilds every cached token's values once instead, in the product that rebuilds
//! the keys, which is faster from two new tokens on ([`super::text::rebuilds_values`]).
//!
//! **Latent with kept keys** ([`CacheKind::LatentKeys`]): the same latent, and beside it each
//! token's keys, rebuilt from its cached latent once, when the token enters, and kept before RoPE
//! (f32 `[capacity, d_kv]`; attention rotates them as it reads them, as it does rebuilt keys). A
//! key depends only on its own latent, so the kept keys are bit for bit the ones a step would
//! rebuild, and attention reads both alike; decoding then costs no `ctx · d_kv · r`
//! rebuild per layer and step (on a compute-bound adapter that rebuild dominates a step from
//! ~50 cached tokens on, BENCHMARKS.md), at `4 · d_kv` more bytes per token and layer.

use pocketvlm_format::ModelConfig;
use serde::{Deserialize, Serialize};

use super::qkv::{Qkv, Ups, latent_words};
use super::scratch::f32_buffer;
use crate::device::Gpu;
use crate::error::{Result, RuntimeError};
use crate::kernels::bf16_rows::Bf16Rows;
use crate::kernels::copy::CopyRows;
use crate::kernels::quant::rows_words;
use crate::memory::DeviceBuffer;

/// Which cache a model's joint-QKV layers use (layers the rule excludes are always plain).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheKind {
    /// The latent where the format's rule allows it (the default).
    #[default]
    Latent,
    /// The latent where the format's rule allows it, and the keys (before RoPE) beside it.
    LatentKeys,
    /// Keys and values everywhere.
    Plain,
}

impl CacheKind {
    /// Every kind, plain (the others' reference) first.
    pub const ALL: [CacheKind; 3] = [CacheKind::Plain, CacheKind::Latent, CacheKind::LatentKeys];

    /// The kind's name in options and reports: `latent`, `latent-keys`, `plain`.
    pub fn name(self) -> &'static str {
        match self {
            CacheKind::Latent => "latent",
            CacheKind::LatentKeys => "latent-keys",
            CacheKind::Plain => "plain",
        }
    }

    /// The kind [`CacheKind::name`] names; otherwise what the names are (`one of [...]`).
    pub fn from_name(name: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
            format!("one of {names:?}")
        })
    }
}

/// One layer's cache.
pub enum LayerCache {
    /// f32 keys (before RoPE) and values, `[capacity, d_kv]` each.
    Plain { keys: DeviceBuffer, values: DeviceBuffer, width: usize },
    /// bf16 latents, u32 `[capacity, ⌈rank/2⌉]` (two per word, see [`Bf16Rows`]).
    LatentBf16 { rows: DeviceBuffer, rank: usize, keys: Option<KeptKeys> },
    /// The contract's INT8 latents: u32 `[capacity, words]` (i8 lanes) and f32 scales `[capacity]`.
    LatentI8 { words: DeviceBuffer, scales: DeviceBuffer, words_per_row: usize, keys: Option<KeptKeys> },
}

/// A latent layer's keys before RoPE, f32 `[capacity, width]` ([`CacheKind::LatentKeys`]).
pub struct KeptKeys {
    pub buffer: DeviceBuffer,
    pub width: usize,
}

impl LayerCache {
    /// The buffers and their row widths in 4-byte elements.
    fn buffers(&self) -> Vec<(&wgpu::Buffer, usize)> {
        match self {
            LayerCache::Plain { keys, values, width } => vec![(keys, *width), (values, *width)],
            LayerCache::LatentBf16 { rows, rank, keys } => {
                let mut all = vec![(&**rows, Bf16Rows { width: *rank }.words())];
                all.extend(keys.iter().map(|k| (&*k.buffer, k.width)));
                all
            }
            LayerCache::LatentI8 { words, scales, words_per_row, keys } => {
                let mut all = vec![(&**words, *words_per_row), (&**scales, 1)];
                all.extend(keys.iter().map(|k| (&*k.buffer, k.width)));
                all
            }
        }
    }

    /// A latent layer's kept keys, if the cache keeps them.
    pub fn kept_keys(&self) -> Option<&KeptKeys> {
        match self {
            LayerCache::Plain { .. } => None,
            LayerCache::LatentBf16 { keys, .. } | LayerCache::LatentI8 { keys, .. } => keys.as_ref(),
        }
    }

    /// Whether this layer caches the latent.
    pub fn is_latent(&self) -> bool {
        !matches!(self, LayerCache::Plain { .. })
    }
}

/// The cache of every decoder layer.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub capacity: usize,
    /// Tokens cached so far.
    pub len: usize,
    layout: CacheLayout,
}

/// What each decoder layer caches per token, for a cache of one kind.
#[derive(Clone)]
pub struct CacheLayout {
    layers: Vec<LayerLayout>,
    kind: CacheKind,
}

impl CacheLayout {
    /// The layout of a cache of `kind` for decoder layers whose attention inputs are `qkvs`.
    pub fn new<'a>(cfg: &ModelConfig, qkvs: impl IntoIterator<Item = &'a Qkv>, kind: CacheKind) -> Self {
        let d_kv = cfg.text.num_key_value_heads * cfg.text.head_dim;
        Self { layers: qkvs.into_iter().map(|qkv| layer_layout(qkv, d_kv, kind)).collect(), kind }
    }

    /// Bytes one token of context takes, all layers together.
    pub fn bytes_per_token(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes_per_token()).sum()
    }
}

/// Bytes one token takes in layer `qkv`'s cache of `kind`, and the layer's buffers' row widths
/// (4-byte elements) — the one place the rule is written.
fn layer_layout(qkv: &Qkv, d_kv: usize, kind: CacheKind) -> LayerLayout {
    let keys = if kind == CacheKind::LatentKeys { d_kv } else { 0 };
    match qkv {
        Qkv::Joint(j) if kind != CacheKind::Plain && j.rank() < 2 * d_kv => match j.ups() {
            Ups::Quant { .. } => LayerLayout::LatentI8 { rank: j.rank(), keys },
            Ups::Float => LayerLayout::LatentBf16 { rank: j.rank(), keys },
        },
        _ => LayerLayout::Plain { width: d_kv },
    }
}

/// A layer's rows per token; `keys` is the kept keys' width (0: none kept).
#[derive(Clone, Copy)]
enum LayerLayout {
    Plain { width: usize },
    LatentBf16 { rank: usize, keys: usize },
    LatentI8 { rank: usize, keys: usize },
}

impl LayerLayout {
    /// Bytes one token takes: f32 K and V; bf16 latent (whole words); INT8 latent words and the
    /// f32 scale; and any kept f32 keys.
    fn bytes_per_token(self) -> u64 {
        4 * match self {
            LayerLayout::Plain { width } => 2 * width as u64,
            LayerLayout::LatentBf16 { rank, keys } => (Bf16Rows { width: rank }.words() + keys) as u64,
            LayerLayout::LatentI8 { rank, keys } => (latent_words(rank) + 1 + keys) as u64,
        }
    }
}

/// `capacity` rows of kept keys `width` wide, if any are kept.
async fn kept_keys(gpu: &Gpu, width: usize, capacity: usize) -> Result<Option<KeptKeys>> {
    if width == 0 {
        return Ok(None);
    }
    Ok(Some(KeptKeys { buffer: f32_buffer(gpu, "latent cache keys", capacity * width).await?, width }))
}

impl KvCache {
    /// An empty cache of `layout` with room for `capacity` tokens.
    pub async fn new(gpu: &Gpu, layout: &CacheLayout, capacity: usize) -> Result<Self> {
        let mut layers = Vec::with_capacity(layout.layers.len());
        for &l in &layout.layers {
            layers.push(match l {
                LayerLayout::Plain { width } => LayerCache::Plain {
                    keys: f32_buffer(gpu, "kv cache k", capacity * width).await?,
                    values: f32_buffer(gpu, "kv cache v", capacity * width).await?,
                    width,
                },
                LayerLayout::LatentBf16 { rank, keys } => LayerCache::LatentBf16 {
                    rows: f32_buffer(gpu, "latent cache", capacity * Bf16Rows { width: rank }.words())
                        .await?,
                    rank,
                    keys: kept_keys(gpu, keys, capacity).await?,
                },
                LayerLayout::LatentI8 { rank, keys } => LayerCache::LatentI8 {
                    // with the words past the last row that the ups' products read
                    words: f32_buffer(
                        gpu,
                        "latent cache integers",
                        rows_words(capacity, latent_words(rank), rank),
                    )
                    .await?,
                    scales: f32_buffer(gpu, "latent cache scales", capacity).await?,
                    words_per_row: latent_words(rank),
                    keys: kept_keys(gpu, keys, capacity).await?,
                },
            });
        }
        Ok(Self { layers, capacity, len: 0, layout: layout.clone() })
    }

    pub fn kind(&self) -> CacheKind {
        self.layout.kind
    }

    /// Bytes held on the GPU (the rows, and the words past the last row that an INT8 latent
    /// layer's products read).
    pub fn bytes(&self) -> u64 {
        self.layers.iter().flat_map(|l| l.buffers()).map(|(b, _)| b.size()).sum()
    }

    /// Bytes one cached token takes, all layers together.
    pub fn bytes_per_token(&self) -> u64 {
        self.layers.iter().flat_map(|l| l.buffers()).map(|(_, width)| width as u64 * 4).sum()
    }

    /// Keep the first `len` cached rows (at most those cached): the later ones are written again
    /// by the next pass.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Keep the first `len` cached rows (dropping the rest) and make room for `capacity` rows in
    /// all, moving the kept rows into larger buffers when the current ones are too small.
    pub async fn rewind_and_reserve(&mut self, gpu: &Gpu, len: usize, capacity: usize) -> Result<()> {
        if len > self.len {
            return Err(RuntimeError::Shape(format!("cannot keep {len} of {} cached rows", self.len)));
        }
        self.truncate(len);
        if capacity <= self.capacity {
            return Ok(());
        }
        let mut grown = KvCache::new(gpu, &self.layout, capacity).await?;
        if len > 0 {
            let mut encoder = gpu.encoder();
            let old = self.layers.iter().flat_map(|l| l.buffers());
            let new = grown.layers.iter().flat_map(|l| l.buffers());
            for ((from, width), (to, _)) in old.zip(new) {
                CopyRows { rows: len, width, src_row: 0, dst_row: 0 }.encode(gpu, &mut encoder, from, to)?;
            }
            gpu.submit(encoder);
        }
        grown.len = len;
        *self = grown;
        Ok(())
    }
}
