// Integer matrix product of a quantized linear layer, steps 6-7 of the integer contract
// (`pocketvlm_format::quant`), for TR tokens x TC output columns per invocation:
//   acc[t][c][g] = sum_{j in group g} q_w[c][j] q_a[t][j]        i32, exact (dot4I8Packed)
//   t_g = f32(acc) * s_w[c][g]    (the i32 converts exactly-rounded: hi 2^16 + lo, one add)
//   u = t_0 + t_1 + ...           left to right
//   y[t][col_offset + c] = u * s_a[t] (+ bias[col_offset + c])
//
// Buffers: qa u32 [tokens, aw] (activation integers as i8 lanes, see quantize.wgsl; aw >= the
// weight's value count rounded up to 8); sa f32 [tokens]; w u32 [n, ww] packed weights
// (`pocketvlm_format::quant::pack`: INT8 four values per word; with INT4 eight, word w holding
// values 8w..8w+3 in its low nibbles and 8w+4..8w+7 in its high ones); s_w [n, groups] f32, or
// with SCALE_F16 f16 two per u32 (element 2k in the low half); bias f32; y f32 with row stride ldy.
// `w`, `s_w` may be a row chunk of a larger weight bound at an offset (rows col_offset..+n).
//
// INT4 words feed dot4I8Packed through two masks that leave each nibble in the top of its byte
// (lanes = 16 v, sign-extended): lo = (word << 4) & 0xF0F0F0F0 pairs with activation word 2w,
// hi = word & 0xF0F0F0F0 with word 2w + 1, and (dot(lo) + dot(hi)) >> 4 is exact.
//
// With VEC4 the integers are read four words at a time (`qa` and `w` bound as vec4<u32>; the
// caller guarantees aw, ww and group_words are multiples of 4): one load brings 16 INT8 or 32
// INT4 weight values, and each activation load serves the block's TC columns. Integer sums are
// exact in any order, so both variants give the same bits.
//
// No workgroup memory, no barriers: invocations are independent (what CPU adapters run
// fastest). (token block, column block) pairs lie on a 2-D grid of 64-invocation workgroups.

#include grid
#include half

struct Params {
    tokens: u32,
    n: u32,
    aw: u32,
    ww: u32,
    groups: u32,
    group_words: u32,
    ldy: u32,
    col_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#ifdef VEC4
@group(0) @binding(1) var<storage, read> qa: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> qa: array<u32>;
#endif
@group(0) @binding(2) var<storage, read> sa: array<f32>;
#ifdef VEC4
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
#endif
#ifdef SCALE_F16
@group(0) @binding(4) var<storage, read> sw: array<u32>;
#else
@group(0) @binding(4) var<storage, read> sw: array<f32>;
#endif
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
#ifdef BIAS
@group(0) @binding(6) var<storage, read> bias: array<f32>;
#endif

const TR: u32 = {{TR}}u;
const TC: u32 = {{TC}}u;

fn weight_scale(i: u32) -> f32 {
#ifdef SCALE_F16
    return f16_in(sw[i / 2u], (i & 1u) == 1u);
#else
    return sw[i];
#endif
}

// f32(a) rounded to nearest even for every i32 (WGSL leaves the rounding of inexact integer
// conversions to the implementation): both halves convert exactly, one add rounds.
fn exact_f32(a: i32) -> f32 {
    return f32(a >> 16u) * 65536.0 + f32(a & 0xffff);
}

#ifdef INT4
// 16 x the dot product of INT4 weight word `word` (eight values) with its activation words
// a_lo (values 0-3) and a_hi (4-7): each nibble moved to the top of its byte, so every product is
// 16x its value and sums of them shift right by 4 exactly.
fn int4_dot16(word: u32, a_lo: u32, a_hi: u32) -> i32 {
    return dot4I8Packed((word << 4u) & 0xF0F0F0F0u, a_lo) + dot4I8Packed(word & 0xF0F0F0F0u, a_hi);
}
#endif

#ifdef VEC4
#ifdef INT4
// The exact dot product of four INT4 weight words (32 values) with their eight activation words.
fn int4_dot_words4(b: vec4<u32>, a0: vec4<u32>, a1: vec4<u32>) -> i32 {
    let s = int4_dot16(b.x, a0.x, a0.y) + int4_dot16(b.y, a0.z, a0.w) + int4_dot16(b.z, a1.x, a1.y)
        + int4_dot16(b.w, a1.z, a1.w);
    return s >> 4u;
}
#else
// The exact dot product of four INT8 weight words (16 values) with four activation words.
fn int8_dot_words4(b: vec4<u32>, a: vec4<u32>) -> i32 {
    return dot4I8Packed(b.x, a.x) + dot4I8Packed(b.y, a.y) + dot4I8Packed(b.z, a.z)
        + dot4I8Packed(b.w, a.w);
}
#endif
#endif

// Step 7 for token t, column c from its dequantized sum u: y = u * s_a[t] (+ bias).
fn store_output(t: u32, c: u32, u: f32) {
    var v = u * sa[t];
#ifdef BIAS
    v = v + bias[params.col_offset + c];
#endif
    y[t * params.ldy + params.col_offset + c] = v;
}

#ifdef VEC4
// acc[i * TC + j] += the exact integer dot product of token t0 + i with column c0 + j over
// group g, four words at a time (out-of-range tokens and columns clamped).
fn accumulate4(acc: ptr<function, array<i32, TR * TC>>, g: u32, c0: u32, t0: u32) {
    let ww4 = params.ww / 4u;
    let aw4 = params.aw / 4u;
    var wrow: array<u32, TC>;
    for (var j = 0u; j < TC; j++) {
        wrow[j] = min(c0 + j, params.n - 1u) * ww4;
    }
    var arow: array<u32, TR>;
    for (var i = 0u; i < TR; i++) {
        arow[i] = min(t0 + i, params.tokens - 1u) * aw4;
    }
    let q_end = min((g + 1u) * params.group_words, params.ww) / 4u;
    for (var q = g * params.group_words / 4u; q < q_end; q++) {
        var b: array<vec4<u32>, TC>;
        for (var j = 0u; j < TC; j++) {
            b[j] = w[wrow[j] + q];
        }
        for (var i = 0u; i < TR; i++) {
#ifdef INT4
            // weight words 4q..4q+3 pair with activation words 8q..8q+7 (two per weight word)
            let a0 = qa[arow[i] + 2u * q];
            let a1 = qa[arow[i] + 2u * q + 1u];
            for (var j = 0u; j < TC; j++) {
                (*acc)[i * TC + j] += int4_dot_words4(b[j], a0, a1);
            }
#else
            let a = qa[arow[i] + q];
            for (var j = 0u; j < TC; j++) {
                (*acc)[i * TC + j] += int8_dot_words4(b[j], a);
            }
#endif
        }
    }
}
#endif

#ifdef GEMV
// GEMV (TR = TC = 1: one token and one column per invocation): the blocked path's sums in the
// same order, in scalars instead of one-element arrays (CPU adapters run private arrays from
// memory).
@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let id = (workgroup_index(wg, nwg)) * 64u + li;
    let c = id % params.n;
    let t = id / params.n;
    if (t >= params.tokens) {
        return;
    }
    var u = 0.0;
    for (var g = 0u; g < params.groups; g++) {
        var acc = 0;
#ifdef VEC4
        let wrow = c * (params.ww / 4u);
        let arow = t * (params.aw / 4u);
        let q_end = min((g + 1u) * params.group_words, params.ww) / 4u;
        for (var q = g * params.group_words / 4u; q < q_end; q++) {
            let b = w[wrow + q];
#ifdef INT4
            acc += int4_dot_words4(b, qa[arow + 2u * q], qa[arow + 2u * q + 1u]);
#else
            acc += int8_dot_words4(b, qa[arow + q]);
#endif
        }
#else
        let w_end = min((g + 1u) * params.group_words, params.ww);
        for (var wi = g * params.group_words; wi < w_end; wi++) {
            let word = w[c * params.ww + wi];
#ifdef INT4
            let a = t * params.aw + 2u * wi;
            acc += int4_dot16(word, qa[a], qa[a + 1u]) >> 4u;
#else
            acc += dot4I8Packed(word, qa[t * params.aw + wi]);
#endif
        }
#endif
        let part = exact_f32(acc) * weight_scale(c * params.groups + g);
        if (g == 0u) {
            u = part;
        } else {
            u = u + part;
        }
    }
    store_output(t, c, u);
}
#else
@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    // One linear index over (token block, column block), column blocks fastest, so narrow
    // outputs (a latent's keys: d_kv columns over thousands of cached tokens) still fill every
    // workgroup.
    let id = (workgroup_index(wg, nwg)) * 64u + li;
    let column_blocks = (params.n + TC - 1u) / TC;
    let c0 = (id % column_blocks) * TC;
    let t0 = (id / column_blocks) * TR;
    if (t0 >= params.tokens) {
        return;
    }
    var u: array<f32, TR * TC>;
    for (var g = 0u; g < params.groups; g++) {
        var acc: array<i32, TR * TC>;
        for (var i = 0u; i < TR * TC; i++) {
            acc[i] = 0;
        }
#ifdef VEC4
        accumulate4(&acc, g, c0, t0);
#else
        let w_end = min((g + 1u) * params.group_words, params.ww);
        for (var wi = g * params.group_words; wi < w_end; wi++) {
            for (var j = 0u; j < TC; j++) {
                let c = min(c0 + j, params.n - 1u);
                let word = w[c * params.ww + wi];
                for (var i = 0u; i < TR; i++) {
                    let t = min(t0 + i, params.tokens - 1u);
#ifdef INT4
                    let a = t * params.aw + 2u * wi;
                    acc[i * TC + j] += int4_dot16(word, qa[a], qa[a + 1u]) >> 4u;
#else
                    acc[i * TC + j] += dot4I8Packed(word, qa[t * params.aw + wi]);
#endif
                }
            }
        }
#endif
        for (var j = 0u; j < TC; j++) {
            let s = weight_scale(min(c0 + j, params.n - 1u) * params.groups + g);
            for (var i = 0u; i < TR; i++) {
                let part = exact_f32(acc[i * TC + j]) * s;
                if (g == 0u) {
                    u[i * TC + j] = part;
                } else {
                    u[i * TC + j] = u[i * TC + j] + part;
                }
            }
        }
    }
    for (var i = 0u; i < TR; i++) {
        let t = t0 + i;
        if (t >= params.tokens) {
            break;
        }
        for (var j = 0u; j < TC; j++) {
            let c = c0 + j;
            if (c >= params.n) {
                break;
            }
            store_output(t, c, u[i * TC + j]);
        }
    }
}
#endif
