// The absorbed V of a shared-latent KV cache: each query head's softmax-weighted latent sum
// c_hat [tokens, heads, VD] (from attention.wgsl's LATENT_* variants) times that head's rows of
// v_up [d_kv, rank]:
//   out[t, h, o] = sum_j W[g * HD + o][j] * c_hat[t, h, j]  (+ bias[g * HD + o]),  o < HD,
// g = h / (heads / kv_heads), out [tokens, heads, HD] f32. Since the softmax weights sum to 1 this
// is sum_j p_j v_j of the plain cache, with other float roundings.
//
// Weights: float [d_kv, rank] (f32, or with W16 16-bit two per u32, BF16 selecting bfloat16),
// widened in the kernel; or with QUANT the contract's packed integers (INT8 four per u32; INT4
// eight, word w holding values 8w..8w+3 in its low nibbles and 8w+4..8w+7 in its high ones;
// in qmatmul.wgsl's column tiles, ww words per row, lib/tiles.wgsl) with
// scales [d_kv, groups] (f32, or f16 pairs with SCALE_F16), dequantized per group as the
// contract does, the sum within a group in four lanes (a float sum like the rest of this kernel:
// tests hold it to a bound, not to bits):
//   d_g = sum_{j in g} f32(q_w[o][j]) * c_hat[j],  t_g = d_g * s_w[o][g],
//   u = t_0 + t_1 + ... left to right,  then + bias.
// One invocation per output value; no workgroup memory, no barriers.

#include grid
#include half
#include int
#ifdef QUANT
#include tiles
#endif

struct Params {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rank: u32,
    vd: u32,
    ww: u32,
    group: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> chat: array<f32>;
#ifdef QUANT
@group(0) @binding(2) var<storage, read> w: array<u32>;
#ifdef SCALE_F16
@group(0) @binding(3) var<storage, read> sw: array<u32>;
#else
@group(0) @binding(3) var<storage, read> sw: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#ifdef BIAS
@group(0) @binding(5) var<storage, read> bias: array<f32>;
#endif
#else
#ifdef W16
@group(0) @binding(2) var<storage, read> w: array<u32>;
#else
@group(0) @binding(2) var<storage, read> w: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#ifdef BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
#endif

#ifdef QUANT
fn weight_scale(i: u32) -> f32 {
#ifdef SCALE_F16
    return f16_in(sw[i / 2u], (i & 1u) == 1u);
#else
    return sw[i];
#endif
}

// Where weight row o's words lie in `w` (u32): word k at x + k * y (rows in quads, quads in tiles).
fn row_words(o: u32) -> vec2<u32> {
    let quads = (params.kv_heads * params.head_dim + 3u) / 4u;
    let words = quad_words(o / 4u, quads, params.ww);
    return vec2<u32>(words.x * 4u + o % 4u, words.y * 4u);
}

// Integer j of the weight row whose words lie at `row` (exact as f32).
fn weight_int(row: vec2<u32>, j: u32) -> f32 {
#ifdef INT4
    return f32(i4_in(w[row.x + (j / 8u) * row.y], j % 8u));
#else
    return f32(i8_in(w[row.x + (j / 4u) * row.y], j % 4u));
#endif
}

// Four values of weight word `word` as f32: INT8 lanes 0-3, or (INT4) with `high` values 4-7 of
// the word's eight (high nibbles) instead of 0-3 (low nibbles).
fn word_values(word: u32, high: bool) -> vec4<f32> {
    let x = vec4<i32>(bitcast<i32>(word));
#ifdef INT4
    let shift = select(vec4<u32>(28u, 20u, 12u, 4u), vec4<u32>(24u, 16u, 8u, 0u), high);
    return vec4<f32>((x << shift) >> vec4<u32>(28u));
#else
    return vec4<f32>((x << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
#endif
}

fn chat4(j: u32) -> vec4<f32> {
    return vec4<f32>(chat[j], chat[j + 1u], chat[j + 2u], chat[j + 3u]);
}

// Within a group, whole weight words four lanes at a time (four running sums, added pairwise at
// the end), then the values of a last partial word one by one.
fn row_dot(o: u32, base: u32) -> f32 {
    let groups = params.rank / params.group;
#ifdef INT4
    let per_word = 8u;
#else
    let per_word = 4u;
#endif
    let row = row_words(o);
    var u = 0.0;
    for (var g = 0u; g < groups; g++) {
        let j1 = (g + 1u) * params.group;
        var j = g * params.group;
        var d4 = vec4<f32>(0.0);
        for (; j + per_word <= j1; j += per_word) {
            let word = w[row.x + (j / per_word) * row.y];
            d4 = fma(word_values(word, false), chat4(base + j), d4);
#ifdef INT4
            d4 = fma(word_values(word, true), chat4(base + j + 4u), d4);
#endif
        }
        for (; j < j1; j++) {
            d4.x = fma(weight_int(row, j), chat[base + j], d4.x);
        }
        let t = ((d4.x + d4.y) + (d4.z + d4.w)) * weight_scale(o * groups + g);
        if (g == 0u) {
            u = t;
        } else {
            u = u + t;
        }
    }
    return u;
}
#else
fn weight(i: u32) -> f32 {
#ifdef W16
    return half_in(w[i / 2u], (i & 1u) == 1u);
#else
    return w[i];
#endif
}

fn row_dot(o: u32, base: u32) -> f32 {
    var u = 0.0;
    for (var j = 0u; j < params.rank; j++) {
        u = u + weight(o * params.rank + j) * chat[base + j];
    }
    return u;
}
#endif

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let id = (workgroup_index(wg, nwg)) * 64u + li;
    let hd = params.head_dim;
    if (id >= params.tokens * params.heads * hd) {
        return;
    }
    let o = id % hd;
    let h = (id / hd) % params.heads;
    let t = id / (hd * params.heads);
    let row = (h / (params.heads / params.kv_heads)) * hd + o;
    var y = row_dot(row, (t * params.heads + h) * params.vd);
#ifdef BIAS
    y = y + bias[row];
#endif
    out[id] = y;
}
