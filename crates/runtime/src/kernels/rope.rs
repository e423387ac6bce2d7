//! Rotary position embedding as in transformers' Llama (`rotate_half`, non-interleaved): the
//! cos/sin table and the f64 reference. The GPU applies it where attention reads the queries and
//! keys (`super::attention::Attention::rope`, `shaders/lib/attention_qk.wgsl`): every KV cache
//! keeps its keys before RoPE, and no dispatch rotates them.
//!
//! For a token at position `p`, each head vector `x` of length `hd = 2·half` becomes
//! `out[i] = x[i]·cos[p, i] − x[i + half]·sin[p, i]` and
//! `out[i + half] = x[i + half]·cos[p, i] + x[i]·sin[p, i]` for `i < half`, with the `table` f32
//! `[max_positions, 2, half]` of [`rope_table`]: row `p` holds `cos(p·inv_freq[0..half])` then
//! `sin(p·inv_freq[0..half])`. Upload the table once.

/// The cos/sin table transformers' `LlamaRotaryEmbedding` (default rope type) produces, in its
/// f32 steps: `inv_freq[i] = 1 / θ^(f32(2i) / hd)` (power and reciprocal rounded to f32),
/// `freq = f32(p) · inv_freq[i]` in f32, then `cos`/`sin` of that f32 argument rounded to f32.
/// Layout `[max_positions, 2, hd/2]`: row `p` is `cos(freq[p, 0..hd/2])` then `sin(…)`.
pub fn rope_table(theta: f32, head_dim: usize, max_positions: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            let power = f64::from(theta).powf(f64::from(exponent)) as f32;
            1.0 / power
        })
        .collect();
    let mut table = vec![0f32; max_positions * head_dim];
    for p in 0..max_positions {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = f64::from(p as f32 * f);
            table[p * 2 * half + i] = angle.cos() as f32;
            table[p * 2 * half + half + i] = angle.sin() as f32;
        }
    }
    table
}

/// RoPE of one tensor `x` `[tokens, heads, hd]` at positions `pos0..pos0 + tokens` in f64
/// arithmetic on the table's f32 values: the reference tests hold the GPU to.
pub fn rope_reference(
    x: &[f32],
    table: &[f32],
    tokens: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for t in 0..tokens {
        let row = (pos0 + t) * head_dim;
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for i in 0..half {
                let (c, s) = (f64::from(table[row + i]), f64::from(table[row + half + i]));
                let (a, b) = (f64::from(x[base + i]), f64::from(x[base + half + i]));
                out[base + i] = (a * c - b * s) as f32;
                out[base + half + i] = (b * c + a * s) as f32;
            }
        }
    }
    out
}
