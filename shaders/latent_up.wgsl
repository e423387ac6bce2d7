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
// Float weights: one invocation per output value. QUANT: one invocation per four outputs o..o+3
// (HD % 4 == 0) of a set of HEAD_SET query heads of one key/value head (kernels::latent::head_set;
// 1 without the define), whose weight rows are one quad of the tiles shared by the set: each step
// loads word k of the four rows at once (one vec4<u32>) and widens it once for the set, and each
// head's c_hat four values once for the four rows (each output's operations as with one output
// and one head per invocation), one tile's TILE_QUADS invocations per workgroup (so a decode
// step's few quads still reach every thread of a CPU adapter; several tokens take the same
// pipeline). No workgroup memory, no barriers.

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
    // WEIGHT_TEXTURE: the texel of v_up's first word
    w_first: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> chat: array<f32>;
#ifdef QUANT
#ifdef WEIGHT_TEXTURE
@group(0) @binding(2) var w: texture_2d<u32>;
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
#endif
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

// Value `lane` of weight word `word`, exact as f32.
fn word_value(word: u32, lane: u32) -> f32 {
#ifdef INT4
    return f32(i4_in(word, lane));
#else
    return f32(i8_in(word, lane));
#endif
}

fn chat4(j: u32) -> vec4<f32> {
    return vec4<f32>(chat[j], chat[j + 1u], chat[j + 2u], chat[j + 3u]);
}

fn lanes_sum(d: vec4<f32>) -> f32 {
    return (d.x + d.y) + (d.z + d.w);
}

// Running sums of four weight rows (one quad) against one head's c_hat, four lanes each.
struct Sums {
    d0: vec4<f32>,
    d1: vec4<f32>,
    d2: vec4<f32>,
    d3: vec4<f32>,
}

// The four rows' values of one weight word (lanes of one step) against c_hat's values c.
fn add_word(d: Sums, v: Sums, c: vec4<f32>) -> Sums {
    return Sums(fma(v.d0, c, d.d0), fma(v.d1, c, d.d1), fma(v.d2, c, d.d2), fma(v.d3, c, d.d3));
}

// One value (lane `lane` of a last partial word) of the four rows against c_hat's value c.
fn add_value(d: Sums, word: vec4<u32>, lane: u32, c: f32) -> Sums {
    var r = d;
    r.d0.x = fma(word_value(word.x, lane), c, d.d0.x);
    r.d1.x = fma(word_value(word.y, lane), c, d.d1.x);
    r.d2.x = fma(word_value(word.z, lane), c, d.d2.x);
    r.d3.x = fma(word_value(word.w, lane), c, d.d3.x);
    return r;
}

// u after group g: the four lanes of each row added pairwise and scaled, left to right.
fn add_group(u: vec4<f32>, d: Sums, s: vec4<f32>, g: u32) -> vec4<f32> {
    let t = vec4<f32>(lanes_sum(d.d0), lanes_sum(d.d1), lanes_sum(d.d2), lanes_sum(d.d3)) * s;
    return select(u + t, t, g == 0u);
}

// Weight rows 4·cq..4·cq+3 (quad cq) against the c_hat rows of SET heads from bases.x (then
// .y, .z, .w), heads sharing these rows: per row, head and group, whole weight words four lanes at
// a time (four running sums, added pairwise at the end), then the values of a last partial word
// one by one; the groups' scaled sums left to right. Each word is loaded and widened once for
// the SET heads, each head's operations are those of one head alone.
fn quad_dots(cq: u32, bases: vec4<u32>) -> array<vec4<f32>, 4> {
    let groups = params.rank / params.group;
#ifdef INT4
    let per_word = 8u;
#else
    let per_word = 4u;
#endif
    let quads = (params.kv_heads * params.head_dim + 3u) / 4u;
    let at = quad_words(cq, quads, params.ww);
    var u = array<vec4<f32>, 4>();
    for (var g = 0u; g < groups; g++) {
        let j1 = (g + 1u) * params.group;
        var j = g * params.group;
        var d0 = Sums();
        var d1 = Sums();
        var d2 = Sums();
        var d3 = Sums();
        for (; j + per_word <= j1; j += per_word) {
            let word = weight_word(at.x + (j / per_word) * at.y);
            let lo = Sums(word_values(word.x, false), word_values(word.y, false),
                word_values(word.z, false), word_values(word.w, false));
            d0 = add_word(d0, lo, chat4(bases.x + j));
            if (SET > 1u) { d1 = add_word(d1, lo, chat4(bases.y + j)); }
            if (SET > 2u) { d2 = add_word(d2, lo, chat4(bases.z + j)); }
            if (SET > 3u) { d3 = add_word(d3, lo, chat4(bases.w + j)); }
#ifdef INT4
            let hi = Sums(word_values(word.x, true), word_values(word.y, true),
                word_values(word.z, true), word_values(word.w, true));
            d0 = add_word(d0, hi, chat4(bases.x + j + 4u));
            if (SET > 1u) { d1 = add_word(d1, hi, chat4(bases.y + j + 4u)); }
            if (SET > 2u) { d2 = add_word(d2, hi, chat4(bases.z + j + 4u)); }
            if (SET > 3u) { d3 = add_word(d3, hi, chat4(bases.w + j + 4u)); }
#endif
        }
        for (; j < j1; j++) {
            let word = weight_word(at.x + (j / per_word) * at.y);
            let lane = j % per_word;
            d0 = add_value(d0, word, lane, chat[bases.x + j]);
            if (SET > 1u) { d1 = add_value(d1, word, lane, chat[bases.y + j]); }
            if (SET > 2u) { d2 = add_value(d2, word, lane, chat[bases.z + j]); }
            if (SET > 3u) { d3 = add_value(d3, word, lane, chat[bases.w + j]); }
        }
        let row = 4u * cq;
        let s = vec4<f32>(
            weight_scale(row * groups + g),
            weight_scale((row + 1u) * groups + g),
            weight_scale((row + 2u) * groups + g),
            weight_scale((row + 3u) * groups + g),
        );
        u[0] = add_group(u[0], d0, s, g);
        u[1] = add_group(u[1], d1, s, g);
        u[2] = add_group(u[2], d2, s, g);
        u[3] = add_group(u[3], d3, s, g);
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

#ifdef QUANT
#ifdef HEAD_SET
const SET: u32 = {{HEAD_SET}}u;
#else
const SET: u32 = 1u;
#endif

// Outputs o..o+3 of head h (token t) from u, plus the bias of v_up's rows row..row+3.
fn store_outputs(t: u32, h: u32, o: u32, row: u32, u: vec4<f32>) {
    var y = u;
#ifdef BIAS
    y = y + vec4<f32>(bias[row], bias[row + 1u], bias[row + 2u], bias[row + 3u]);
#endif
    let at = (t * params.heads + h) * params.head_dim + o;
    out[at] = y.x;
    out[at + 1u] = y.y;
    out[at + 2u] = y.z;
    out[at + 3u] = y.w;
}

// One invocation per (token, SET heads of one key/value head, four outputs).
@compute @workgroup_size(TILE_QUADS, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let id = invocation_index(grid, TILE_QUADS, li);
    let hd = params.head_dim;
    let hq = hd / 4u;
    let sets = params.heads / SET;
    if (id >= params.tokens * sets * hq) {
        return;
    }
    let o = 4u * (id % hq);
    let h0 = ((id / hq) % sets) * SET;
    let t = id / (hq * sets);
    let row = (h0 / (params.heads / params.kv_heads)) * hd + o;
    let base = (t * params.heads + h0) * params.vd;
    let vd = params.vd;
    let u = quad_dots(row / 4u, vec4<u32>(base, base + vd, base + 2u * vd, base + 3u * vd));
    store_outputs(t, h0, o, row, u[0]);
    if (SET > 1u) { store_outputs(t, h0 + 1u, o, row, u[1]); }
    if (SET > 2u) { store_outputs(t, h0 + 2u, o, row, u[2]); }
    if (SET > 3u) { store_outputs(t, h0 + 3u, o, row, u[3]); }
}
#else
@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let id = invocation_index(grid, 64u, li);
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
#endif
