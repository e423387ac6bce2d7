// Integer matrix product of a quantized linear layer, steps 6-7 of the integer contract
// (`pocketvlm_format::quant`), four output columns per invocation for one token (GEMV) or four:
//   acc[t][c][g] = sum_{j in group g} q_w[c][j] q_a[t][j]        i32, exact (dot4I8Packed)
//   t_g = f32(acc) * s_w[c][g]    (the i32 converts exactly-rounded: hi 2^16 + lo, one add)
//   u = t_0 + t_1 + ...           left to right
//   y[t][col_offset + c] = u * s_a[t] (+ bias[col_offset + c])
//
// Weights are in column tiles (`QuantWeightsGpu`, lib/tiles.wgsl): the n columns bound here in
// quads (n rounded up to 4, zero padding columns), each quad's word k one vec4<u32>, quads in
// tiles stored word by word. One vec4<u32> load brings word k of four neighbouring columns,
// neighbouring invocations read neighbouring memory and each tile is read as one sequential
// stream (what GPUs, and CPU adapters running invocations as SIMD lanes, load fastest). Words as
// `pocketvlm_format::quant::pack` packs them: INT8 four values per u32; INT4 eight, word k holding
// values 8k..8k+3 in its low nibbles and 8k+4..8k+7 in its high ones.
//
// Buffers: qa u32 [tokens, aw] (activation integers as i8 lanes, see quantize.wgsl; aw >= the
// weight's value count rounded up to 8); sa f32 [tokens]; w ww words per column, tiled; s_w [n, groups] f32,
// or with SCALE_F16 f16 two per u32 (element 2k in the low half); bias f32; y f32 with row stride
// ldy. `w` and `s_w` may be one panel of a larger weight bound at an offset (columns
// col_offset..+n).
//
// INT4 words feed dot4I8Packed through two masks that leave each nibble in the top of its byte
// (lanes = 16 v, sign-extended): lo = (word << 4) & 0xF0F0F0F0 pairs with activation word 2k,
// hi = word & 0xF0F0F0F0 with word 2k + 1, and (dot(lo) + dot(hi)) >> 4 is exact.
//
// With VEC4 the activations are read four words at a time (`qa` bound as vec4<u32>; the caller
// guarantees aw, ww and group_words are multiples of 4) and each step takes four words of every
// column. Integer sums are exact in any order, so both variants give the same bits.
//
// Default: no workgroup memory, no barriers: invocations are independent (what CPU adapters run
// fastest). (token block, column quad) pairs lie on a 2-D grid of workgroups: 64 invocations
// for blocks of tokens, one tile's TILE_QUADS for one token (GEMV), so that a decode step's narrow
// products still give every thread of a CPU adapter a share (a [576, 576] product is 18
// workgroups instead of 3 on two threads).
//
// With PARTS (2 or 3; no BIAS, one panel): the weight is layers stacked one after the other
// (QuantWeightsGpu::stack), each writing its own output y, y1, y2 ([tokens, its columns]): the
// products of several layers reading one input in one dispatch, every column's value unchanged.
//
// With WEIGHT_TEXTURE (lavapipe) the tiled words are read from a texture (lib/tiles.wgsl): the
// same words, the same bits.
//
// With SPLIT_K (one token, GPUs): a 64-invocation workgroup takes four column quads, and the 16
// invocations of a quad (its lanes) split every scale group's words between them (lane l takes
// steps l, l + 16, ...), so a decode step's narrow products keep many invocations busy instead
// of one per quad walking the whole row. The lanes' i32 sums of a group meet in workgroup memory,
// where lane 0 adds them (exact in any order) and dequantizes: the same acc, the same f32
// operations in the same order, so the same bits as the default.
//
// With FLOAT_SUMS (blocks of tokens, INT8 weights, VEC4; CPU adapters): blocks of
// eight tokens by four quads whose integer sums run as exact f32 fmas on widened values, in
// chunks short enough that every partial sum is an integer f32 holds (see CHUNK_STEPS): the same
// acc, so the same bits as the default.

#include grid
#include half
#include tiles
#ifdef FLOAT_SUMS
#include block
#endif

struct Params {
    tokens: u32,
    n: u32,
    aw: u32,
    ww: u32,
    groups: u32,
    group_words: u32,
    ldy: u32,
    col_offset: u32,
    // PARTS: the first column of the second and of the third output (n where there is none)
    split0: u32,
    split1: u32,
    // WEIGHT_TEXTURE: the texel of the bound columns' first word
    w_first: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#ifdef VEC4
@group(0) @binding(1) var<storage, read> qa: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> qa: array<u32>;
#endif
@group(0) @binding(2) var<storage, read> sa: array<f32>;
#ifdef WEIGHT_TEXTURE
@group(0) @binding(3) var w: texture_2d<u32>;
#else
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
#endif
#ifdef SCALE_F16
@group(0) @binding(4) var<storage, read> sw: array<u32>;
#else
@group(0) @binding(4) var<storage, read> sw: array<f32>;
#endif
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
#ifdef PARTS
@group(0) @binding(6) var<storage, read_write> y1: array<f32>;
#endif
#ifdef PARTS_3
@group(0) @binding(7) var<storage, read_write> y2: array<f32>;
#endif
#ifdef BIAS
@group(0) @binding(6) var<storage, read> bias: array<f32>;
#endif

fn weight_scale(i: u32) -> f32 {
#ifdef SCALE_F16
    return f16_in(sw[i / 2u], (i & 1u) == 1u);
#else
    return sw[i];
#endif
}

// f32(a) rounded to nearest even for every i32 lane (WGSL leaves the rounding of inexact integer
// conversions to the implementation): both halves convert exactly, one add rounds.
fn exact_f32(a: vec4<i32>) -> vec4<f32> {
    return vec4<f32>(a >> vec4<u32>(16u)) * 65536.0 + vec4<f32>(a & vec4<i32>(0xffff));
}

#ifdef INT4
// 16 x the dot product of INT4 weight word `word` (eight values) with its activation words
// a_lo (values 0-3) and a_hi (4-7): each nibble moved to the top of its byte, so every product is
// 16x its value and sums of them shift right by 4 exactly.
fn int4_dot16(word: u32, a_lo: u32, a_hi: u32) -> i32 {
    return dot4I8Packed((word << 4u) & 0xF0F0F0F0u, a_lo) + dot4I8Packed(word & 0xF0F0F0F0u, a_hi);
}

// The exact dot products of one word of four columns (b) with a token's activation words for it.
fn quad_dot(b: vec4<u32>, a_lo: u32, a_hi: u32) -> vec4<i32> {
    let s = vec4<i32>(
        int4_dot16(b.x, a_lo, a_hi),
        int4_dot16(b.y, a_lo, a_hi),
        int4_dot16(b.z, a_lo, a_hi),
        int4_dot16(b.w, a_lo, a_hi),
    );
    return s >> vec4<u32>(4u);
}
#else
// The exact dot products of one word of four columns (b) with a token's activation word for it.
fn quad_dot(b: vec4<u32>, a: u32) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(b.x, a), dot4I8Packed(b.y, a), dot4I8Packed(b.z, a), dot4I8Packed(b.w, a));
}
#endif

#ifdef VEC4
// Four words 4q..4q+3 of four columns (b0..b3) with the token whose activations start at vec4
// `arow`: the exact sums per column.
fn token_step(arow: u32, q: u32, b0: vec4<u32>, b1: vec4<u32>, b2: vec4<u32>, b3: vec4<u32>) -> vec4<i32> {
#ifdef INT4
    // weight words 4q..4q+3 pair with activation words 8q..8q+7 (two per weight word)
    let a0 = qa[arow + 2u * q];
    let a1 = qa[arow + 2u * q + 1u];
    return quad_dot(b0, a0.x, a0.y) + quad_dot(b1, a0.z, a0.w) + quad_dot(b2, a1.x, a1.y) + quad_dot(b3, a1.z, a1.w);
#else
    let a = qa[arow + q];
    return quad_dot(b0, a.x) + quad_dot(b1, a.y) + quad_dot(b2, a.z) + quad_dot(b3, a.w);
#endif
}
#else
// Word k of four columns (b) with the token whose activations start at word `arow`.
fn token_step(arow: u32, k: u32, b: vec4<u32>) -> vec4<i32> {
#ifdef INT4
    return quad_dot(b, qa[arow + 2u * k], qa[arow + 2u * k + 1u]);
#else
    return quad_dot(b, qa[arow + k]);
#endif
}
#endif

// The scales of columns c0..c0+3 for group g (padding columns repeat the last column's).
fn group_scales(c0: u32, g: u32) -> vec4<f32> {
    let last = params.n - 1u;
    let gs = params.groups;
    return vec4<f32>(
        weight_scale(min(c0, last) * gs + g),
        weight_scale(min(c0 + 1u, last) * gs + g),
        weight_scale(min(c0 + 2u, last) * gs + g),
        weight_scale(min(c0 + 3u, last) * gs + g),
    );
}

// u after group g: its first dequantized part, or the running sum plus the next.
fn add_group(u: vec4<f32>, acc: vec4<i32>, s: vec4<f32>, g: u32) -> vec4<f32> {
    let part = exact_f32(acc) * s;
    if (g == 0u) {
        return part;
    }
    return u + part;
}

// Step 7 for token t and the existing columns among c0..c0+3: y = u * s_a[t] (+ bias).
fn store_quad(t: u32, c0: u32, u: vec4<f32>) {
    if (t >= params.tokens) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let c = c0 + j;
        if (c >= params.n) {
            return;
        }
        var v = u[j] * sa[t];
#ifdef BIAS
        v = v + bias[params.col_offset + c];
#endif
#ifdef PARTS
        store_part(t, c, v);
#else
        y[t * params.ldy + params.col_offset + c] = v;
#endif
    }
}

#ifdef PARTS
// Column c of stacked layers (one panel): into the output of the layer it belongs to, each
// [tokens, its columns].
fn store_part(t: u32, c: u32, v: f32) {
    if (c < params.split0) {
        y[t * params.split0 + c] = v;
        return;
    }
#ifdef PARTS_3
    if (c >= params.split1) {
        y2[t * (params.n - params.split1) + c - params.split1] = v;
        return;
    }
#endif
    y1[t * (params.split1 - params.split0) + c - params.split0] = v;
}
#endif

#ifdef SPLIT_K
const SPLIT_QUADS: u32 = 4u;
const SPLIT_LANES: u32 = 16u;
var<workgroup> partial: array<vec4<i32>, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    // Invocation li = lane * 4 + slot: the four quads' lanes at one step read neighbouring memory.
    let slot = li % SPLIT_QUADS;
    let lane = li / SPLIT_QUADS;
    let quads = (params.n + 3u) / 4u;
    let id = workgroup_index(grid) * SPLIT_QUADS + slot;
    // Quads past the last compute the last one again and store nothing (every invocation must
    // reach the barriers).
    let cq = min(id, quads - 1u);
    let words = quad_words(cq, quads, params.ww);
    var u = vec4<f32>(0.0);
    for (var g = 0u; g < params.groups; g++) {
        var acc = vec4<i32>(0);
        let k_end = min((g + 1u) * params.group_words, params.ww);
#ifdef VEC4
        for (var q = g * params.group_words / 4u + lane; q < k_end / 4u; q += SPLIT_LANES) {
            let at = words.x + 4u * q * words.y;
            acc += token_step(
                0u,
                q,
                weight_word(at),
                weight_word(at + words.y),
                weight_word(at + 2u * words.y),
                weight_word(at + 3u * words.y),
            );
        }
#else
        for (var k = g * params.group_words + lane; k < k_end; k += SPLIT_LANES) {
            acc += token_step(0u, k, weight_word(words.x + k * words.y));
        }
#endif
        partial[li] = acc;
        workgroupBarrier();
        if (lane == 0u) {
            var total = partial[slot];
            for (var l = 1u; l < SPLIT_LANES; l++) {
                total += partial[l * SPLIT_QUADS + slot];
            }
            u = add_group(u, total, group_scales(cq * 4u, g), g);
        }
        workgroupBarrier();
    }
    if (lane == 0u && id < quads) {
        store_quad(0u, cq * 4u, u);
    }
}
#else
#ifdef FLOAT_SUMS
// Four-word steps (16 values) per f32 chunk: at most 1024 products of two INT8 integers
// (|q| <= 127, so |product| < 2^14) sum to less than 2^24 in magnitude, so every partial sum is
// an integer f32 holds exactly, every fma is exact, and the chunk converts to i32 exactly.
const CHUNK_STEPS: u32 = 64u;

// The four i8 lanes of `v` as exact f32 (lane 0 from the low byte): each byte with its sign bit
// flipped (v + 128, in 0..255) becomes the low mantissa bits of 2^23, and subtracting
// 2^23 + 128 leaves v.
fn widen(v: u32) -> vec4<f32> {
    let b = (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
    return bitcast<vec4<f32>>((b ^ vec4<u32>(0x80u)) | vec4<u32>(0x4b000000u)) - vec4<f32>(8388736.0);
}

// Word k of a quad's four columns, widened: column j's four values in c_j.
struct Widened {
    c0: vec4<f32>,
    c1: vec4<f32>,
    c2: vec4<f32>,
    c3: vec4<f32>,
}

fn widen_quad(b: vec4<u32>) -> Widened {
    return Widened(widen(b.x), widen(b.y), widen(b.z), widen(b.w));
}

// Per token of the block's eight, beside lib/block.wgsl's Index8 (a row's first vec4) and Rows8
// (four widened values or four columns' sums): four activation words, four columns' i32 sums.
struct Words {
    r0: vec4<u32>,
    r1: vec4<u32>,
    r2: vec4<u32>,
    r3: vec4<u32>,
    r4: vec4<u32>,
    r5: vec4<u32>,
    r6: vec4<u32>,
    r7: vec4<u32>,
}

struct Sums {
    r0: vec4<i32>,
    r1: vec4<i32>,
    r2: vec4<i32>,
    r3: vec4<i32>,
    r4: vec4<i32>,
    r5: vec4<i32>,
    r6: vec4<i32>,
    r7: vec4<i32>,
}

// The eight tokens' activation words 4q..4q+3 (rows r start at those vec4s).
fn token_words(r: Index8, q: u32) -> Words {
    return Words(qa[r.r0 + q], qa[r.r1 + q], qa[r.r2 + q], qa[r.r3 + q],
        qa[r.r4 + q], qa[r.r5 + q], qa[r.r6 + q], qa[r.r7 + q]);
}

// Activation word i of the four (i constant at every call), widened, per token.
fn word(a: Words, i: u32) -> Rows8 {
    return Rows8(widen(a.r0[i]), widen(a.r1[i]), widen(a.r2[i]), widen(a.r3[i]),
        widen(a.r4[i]), widen(a.r5[i]), widen(a.r6[i]), widen(a.r7[i]));
}

// f + every token's four values x times the quad's four columns' four values k.
fn quad_step(f: Rows8, x: Rows8, k: Widened) -> Rows8 {
    return rows_step(f, x, k.c0, k.c1, k.c2, k.c3);
}

// acc + a chunk's exact f32 sums.
fn add_chunk(acc: Sums, f: Rows8) -> Sums {
    return Sums(acc.r0 + vec4<i32>(f.r0), acc.r1 + vec4<i32>(f.r1), acc.r2 + vec4<i32>(f.r2),
        acc.r3 + vec4<i32>(f.r3), acc.r4 + vec4<i32>(f.r4), acc.r5 + vec4<i32>(f.r5),
        acc.r6 + vec4<i32>(f.r6), acc.r7 + vec4<i32>(f.r7));
}

// u after group g of quad cq, per token (`add_group`).
fn add_groups(u: Rows8, acc: Sums, cq: u32, g: u32) -> Rows8 {
    let s = group_scales(cq * 4u, g);
    return Rows8(add_group(u.r0, acc.r0, s, g), add_group(u.r1, acc.r1, s, g),
        add_group(u.r2, acc.r2, s, g), add_group(u.r3, acc.r3, s, g),
        add_group(u.r4, acc.r4, s, g), add_group(u.r5, acc.r5, s, g),
        add_group(u.r6, acc.r6, s, g), add_group(u.r7, acc.r7, s, g));
}

// Step 7 for the block's tokens from t0 and quad cq (`store_quad` skips what does not exist).
fn store_tokens(t0: u32, cq: u32, u: Rows8) {
    store_quad(t0, cq * 4u, u.r0);
    store_quad(t0 + 1u, cq * 4u, u.r1);
    store_quad(t0 + 2u, cq * 4u, u.r2);
    store_quad(t0 + 3u, cq * 4u, u.r3);
    store_quad(t0 + 4u, cq * 4u, u.r4);
    store_quad(t0 + 5u, cq * 4u, u.r5);
    store_quad(t0 + 6u, cq * 4u, u.r6);
    store_quad(t0 + 7u, cq * 4u, u.r7);
}

// Where word 4q of quad cq begins (`quad_words`), for the quads past the last its last.
fn quad_at(cq: u32, quads: u32, q: u32) -> vec2<u32> {
    let words = quad_words(min(cq, quads - 1u), quads, params.ww);
    return vec2<u32>(words.x + 4u * q * words.y, words.y);
}

// Blocks of eight tokens by four quads (16 columns), INT8 weights, four-word loads: the same
// exact i32 sums per group as the default, run as f32 fmas on widened integers in chunks of
// CHUNK_STEPS steps (CPU adapters run them faster than dot4I8Packed); each word
// of the tokens is widened once for the four quads and each column's once for the eight
// tokens. The dequantization after is the default's.
@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let id = invocation_index(grid, 64u, li);
    let quads = (params.n + 3u) / 4u;
    let blocks = (quads + 3u) / 4u;
    let cq = (id % blocks) * 4u;
    let t0 = (id / blocks) * 8u;
    if (t0 >= params.tokens) {
        return;
    }
    // Token rows of the block (in vec4s); rows past the last token repeat it and store nothing.
    let astride = params.aw / 4u;
    let last = params.tokens - 1u;
    let r = clamped_rows(t0 * astride, last - t0, astride);
    var u0 = Rows8();
    var u1 = Rows8();
    var u2 = Rows8();
    var u3 = Rows8();
    for (var g = 0u; g < params.groups; g++) {
        var acc0 = Sums();
        var acc1 = Sums();
        var acc2 = Sums();
        var acc3 = Sums();
        let q_end = min((g + 1u) * params.group_words, params.ww) / 4u;
        for (var c = g * params.group_words / 4u; c < q_end; c += CHUNK_STEPS) {
            var f0 = Rows8();
            var f1 = Rows8();
            var f2 = Rows8();
            var f3 = Rows8();
            for (var q = c; q < min(c + CHUNK_STEPS, q_end); q++) {
                let a = token_words(r, q);
                let k0 = quad_at(cq, quads, q);
                let k1 = quad_at(cq + 1u, quads, q);
                let k2 = quad_at(cq + 2u, quads, q);
                let k3 = quad_at(cq + 3u, quads, q);
                // word 4q + i of the tokens, widened once for the four quads' word 4q + i
                let x0 = word(a, 0u);
                f0 = quad_step(f0, x0, widen_quad(weight_word(k0.x)));
                f1 = quad_step(f1, x0, widen_quad(weight_word(k1.x)));
                f2 = quad_step(f2, x0, widen_quad(weight_word(k2.x)));
                f3 = quad_step(f3, x0, widen_quad(weight_word(k3.x)));
                let x1 = word(a, 1u);
                f0 = quad_step(f0, x1, widen_quad(weight_word(k0.x + k0.y)));
                f1 = quad_step(f1, x1, widen_quad(weight_word(k1.x + k1.y)));
                f2 = quad_step(f2, x1, widen_quad(weight_word(k2.x + k2.y)));
                f3 = quad_step(f3, x1, widen_quad(weight_word(k3.x + k3.y)));
                let x2 = word(a, 2u);
                f0 = quad_step(f0, x2, widen_quad(weight_word(k0.x + 2u * k0.y)));
                f1 = quad_step(f1, x2, widen_quad(weight_word(k1.x + 2u * k1.y)));
                f2 = quad_step(f2, x2, widen_quad(weight_word(k2.x + 2u * k2.y)));
                f3 = quad_step(f3, x2, widen_quad(weight_word(k3.x + 2u * k3.y)));
                let x3 = word(a, 3u);
                f0 = quad_step(f0, x3, widen_quad(weight_word(k0.x + 3u * k0.y)));
                f1 = quad_step(f1, x3, widen_quad(weight_word(k1.x + 3u * k1.y)));
                f2 = quad_step(f2, x3, widen_quad(weight_word(k2.x + 3u * k2.y)));
                f3 = quad_step(f3, x3, widen_quad(weight_word(k3.x + 3u * k3.y)));
            }
            acc0 = add_chunk(acc0, f0);
            acc1 = add_chunk(acc1, f1);
            acc2 = add_chunk(acc2, f2);
            acc3 = add_chunk(acc3, f3);
        }
        u0 = add_groups(u0, acc0, cq, g);
        u1 = add_groups(u1, acc1, cq + 1u, g);
        u2 = add_groups(u2, acc2, cq + 2u, g);
        u3 = add_groups(u3, acc3, cq + 3u, g);
    }
    store_tokens(t0, cq, u0);
    store_tokens(t0, cq + 1u, u1);
    store_tokens(t0, cq + 2u, u2);
    store_tokens(t0, cq + 3u, u3);
}
#else
#ifdef GEMV
const TOKENS: u32 = 1u;
const WORKGROUP: u32 = TILE_QUADS;
#else
const TOKENS: u32 = 4u;
const WORKGROUP: u32 = 64u;
#endif

@compute @workgroup_size(WORKGROUP, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    // One linear index over (token block, column quad), quads fastest, so narrow outputs (a
    // latent's keys: d_kv columns over thousands of cached tokens) still fill every workgroup.
    let id = invocation_index(grid, WORKGROUP, li);
    let quads = (params.n + 3u) / 4u;
    let cq = id % quads;
    let t0 = (id / quads) * TOKENS;
    if (t0 >= params.tokens) {
        return;
    }
    let words = quad_words(cq, quads, params.ww);
#ifdef VEC4
    let astride = params.aw / 4u;
#else
    let astride = params.aw;
#endif
    // Token rows of the block; rows past the last token repeat it and store nothing.
    let r0 = t0 * astride;
#ifndef GEMV
    let last = params.tokens - 1u;
    let r1 = min(t0 + 1u, last) * astride;
    let r2 = min(t0 + 2u, last) * astride;
    let r3 = min(t0 + 3u, last) * astride;
    var u1 = vec4<f32>(0.0);
    var u2 = vec4<f32>(0.0);
    var u3 = vec4<f32>(0.0);
#endif
    var u0 = vec4<f32>(0.0);
    for (var g = 0u; g < params.groups; g++) {
        var acc0 = vec4<i32>(0);
#ifndef GEMV
        var acc1 = vec4<i32>(0);
        var acc2 = vec4<i32>(0);
        var acc3 = vec4<i32>(0);
#endif
        let k_end = min((g + 1u) * params.group_words, params.ww);
#ifdef VEC4
        for (var q = g * params.group_words / 4u; q < k_end / 4u; q++) {
            let at = words.x + 4u * q * words.y;
            let b0 = weight_word(at);
            let b1 = weight_word(at + words.y);
            let b2 = weight_word(at + 2u * words.y);
            let b3 = weight_word(at + 3u * words.y);
            acc0 += token_step(r0, q, b0, b1, b2, b3);
#ifndef GEMV
            acc1 += token_step(r1, q, b0, b1, b2, b3);
            acc2 += token_step(r2, q, b0, b1, b2, b3);
            acc3 += token_step(r3, q, b0, b1, b2, b3);
#endif
        }
#else
        for (var k = g * params.group_words; k < k_end; k++) {
            let b = weight_word(words.x + k * words.y);
            acc0 += token_step(r0, k, b);
#ifndef GEMV
            acc1 += token_step(r1, k, b);
            acc2 += token_step(r2, k, b);
            acc3 += token_step(r3, k, b);
#endif
        }
#endif
        let s = group_scales(cq * 4u, g);
        u0 = add_group(u0, acc0, s, g);
#ifndef GEMV
        u1 = add_group(u1, acc1, s, g);
        u2 = add_group(u2, acc2, s, g);
        u3 = add_group(u3, acc3, s, g);
#endif
    }
    store_quad(t0, cq * 4u, u0);
#ifndef GEMV
    store_quad(t0 + 1u, cq * 4u, u1);
    store_quad(t0 + 2u, cq * 4u, u2);
    store_quad(t0 + 3u, cq * 4u, u3);
#endif
}
#endif
#endif
