// Online rotation of activation rows: out[t, :] <- R data[t, :] for t < tokens (steps 1-2 overwrite
// `data`), with
//   R = c (A (x) H_p) D,  n = m p
// in the exact order of operations of `pocketvlm_format::quant::rotation` (the contract):
//   1. signs: x_i <- -x_i where bit i of the sign mask is set (when `has_signs`);
//   2. Walsh-Hadamard butterflies on each block of p values, h = 1, 2, 4, ..., p/2:
//      (x_j, x_{j+h}) <- (x_j + x_{j+h}, x_j - x_{j+h});
//   3. the core A (m > 1): for each b, y_a = sum_a' A[a][a'] x_{a' p + b}, accumulated left to
//      right from A[a][0] x_b (entries are +-1: exact adds and subtracts);
//   4. scale: x_i <- x_i * c.
// Every step is a correctly rounded f32 add, subtract, negation or multiply, so the result equals
// the CPU reference bit for bit.
//
// `table` (u32 words) holds the sign mask (bit i of word i/32, from word 0) and the core's
// entries (bit a m + a' set = -1, from word `core_offset`).
//
// Dispatches, no workgroup memory and no barriers, so any width works within WebGPU's default
// limits (the connector's 12 288 included). CPU adapters pay per invocation and per scalar
// load, so each invocation moves vec4s (`VEC4`: a `Value` is four neighbouring columns) or
// scalars, and does several butterflies or outputs:
//   levels of at most 4 butterfly stages, one dispatch each: the stages h = stride, 2 stride,
//     ..., (WIDTH / 2) stride on WIDTH <= 16 values held in registers, in the contract's stage
//     order (each butterfly is the same operation on the same operands whichever invocation does
//     it):
//     LEVEL_FIRST  stride 1, WIDTH 16, vec4s: 16 consecutive values (four vec4s) per
//                  invocation, signs first; the butterflies h = 1, 2 inside each vec4, h = 4, 8
//                  across;
//     LEVEL        WIDTH Values `stride` apart per invocation: vec4 columns at stride 16^level
//                  (level >= 1; written out, in fours: h = 1, 2 inside each four consecutive,
//                  then h = 4, 8 across them), or scalars at stride 1 for a small block
//                  (WIDTH = p < 16), signs first;
//   CORE: steps 3-4 for LANES b of a row (four when p % 4 == 0), core_rows outputs
//     y_{a p + b} (all m unless m * m loop steps would pass llvmpipe's 65535 per invocation),
//     each from the m values x_{a' p + b} of `data`, written to `out` (no invocation reads what
//     another writes, any core order works: the 2.2B connector's 10 368 = 648 * 16 needs 648);
//     a core of order m <= CORE_KEPT (the SmolVLMs' 9, 12, 15) reads the m values once and each
//     output's m entries from one or two table words, a larger one both per term.
// Work items lie on a 2-D grid of 64-invocation workgroups.

#include grid
#include hadamard

struct Params {
    tokens: u32,
    n: u32,
    m: u32,
    p: u32,
    has_signs: u32,
    core_offset: u32,
    scale: f32,
    has_core: u32,
    stride: u32,
    core_rows: u32,
    _pad1: u32,
    _pad2: u32,
}

#ifdef VEC4
alias Value = vec4<f32>;
const LANES: u32 = 4u;
#else
alias Value = f32;
const LANES: u32 = 1u;
#endif

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> data: array<Value>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
#ifdef CORE
@group(0) @binding(3) var<storage, read_write> out: array<Value>;
#endif

#ifdef WIDTH
const WIDTH: u32 = {{WIDTH}}u;
#endif

#ifdef LEVEL
#ifdef VEC4
// Four vec4 columns of a level, `step` Values apart.
struct Four {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
}

fn load_four(at: u32, step: u32) -> Four {
    return Four(data[at], data[at + step], data[at + 2u * step], data[at + 3u * step]);
}

fn store_four(at: u32, step: u32, f: Four) {
    data[at] = f.x0;
    data[at + step] = f.x1;
    data[at + 2u * step] = f.x2;
    data[at + 3u * step] = f.x3;
}

// The two butterfly stages of four values: h = 1 on (x0, x1), (x2, x3), then h = 2 on (x0, x2),
// (x1, x3).
fn bf_four(f: Four) -> Four {
    var x0 = f.x0;
    var x1 = f.x1;
    var x2 = f.x2;
    var x3 = f.x3;
    bf(&x0, &x1);
    bf(&x2, &x3);
    bf(&x0, &x2);
    bf(&x1, &x3);
    return Four(x0, x1, x2, x3);
}

// Eight values from `base`, `s` apart: h = 1, 2 within each four, then h = 4 across them (the
// butterfly (u, v) <- (u + v, u - v) on the pairs k, k + 4).
fn level8(base: u32, s: u32) {
    let g0 = bf_four(load_four(base, s));
    let g1 = bf_four(load_four(base + 4u * s, s));
    store_four(base, s, Four(g0.x0 + g1.x0, g0.x1 + g1.x1, g0.x2 + g1.x2, g0.x3 + g1.x3));
    store_four(base + 4u * s, s, Four(g0.x0 - g1.x0, g0.x1 - g1.x1, g0.x2 - g1.x2, g0.x3 - g1.x3));
}

// Sixteen values from `base`, `s` apart: h = 1, 2 within each four consecutive (k = 4 i + j, j < 4),
// then h = 4, 8 within each four of the same j (k = j, j + 4, j + 8, j + 12).
fn level16(base: u32, s: u32) {
    let g0 = bf_four(load_four(base, s));
    let g1 = bf_four(load_four(base + 4u * s, s));
    let g2 = bf_four(load_four(base + 8u * s, s));
    let g3 = bf_four(load_four(base + 12u * s, s));
    store_four(base, 4u * s, bf_four(Four(g0.x0, g1.x0, g2.x0, g3.x0)));
    store_four(base + s, 4u * s, bf_four(Four(g0.x1, g1.x1, g2.x1, g3.x1)));
    store_four(base + 2u * s, 4u * s, bf_four(Four(g0.x2, g1.x2, g2.x2, g3.x2)));
    store_four(base + 3u * s, 4u * s, bf_four(Four(g0.x3, g1.x3, g2.x3, g3.x3)));
}
#endif
#endif

#ifdef CORE
// Cores of at most this order keep a row's m inputs in registers.
const CORE_KEPT: u32 = 16u;

// The core's row a (m <= CORE_KEPT): entry a' in bit a' (set = -1), from the one or two table
// words holding bits a m .. a m + m - 1.
fn core_signs(a: u32, m: u32) -> u32 {
    let first = a * m;
    let shift = first % 32u;
    let word = params.core_offset + first / 32u;
    var signs = table[word] >> shift;
    if (shift + m > 32u) {
        signs |= table[word + 1u] << (32u - shift);
    }
    return signs;
}
#endif

@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let item = invocation_index(grid, 64u, li);
    let n = params.n;
    let m = params.m;
    let p = params.p;
#ifdef LEVEL_FIRST
    // item = one run of 16 consecutive values (runs tile the blocks, which tile the rows)
    if (item >= params.tokens * (n / 16u)) {
        return;
    }
    var x0 = data[4u * item];
    var x1 = data[4u * item + 1u];
    var x2 = data[4u * item + 2u];
    var x3 = data[4u * item + 3u];
    if (params.has_signs != 0u) {
        // the run's 16 sign bits lie in one word (runs start at multiples of 16 of a row)
        let first = (16u * item) % n;
        let bits = (table[first / 32u] >> (first % 32u)) & 0xffffu;
        x0 = signed4(x0, bits, 0u);
        x1 = signed4(x1, bits, 4u);
        x2 = signed4(x2, bits, 8u);
        x3 = signed4(x3, bits, 12u);
    }
    x0 = bf_inside(x0);
    x1 = bf_inside(x1);
    x2 = bf_inside(x2);
    x3 = bf_inside(x3);
    bf(&x0, &x1);
    bf(&x2, &x3);
    bf(&x0, &x2);
    bf(&x1, &x3);
    data[4u * item] = x0;
    data[4u * item + 1u] = x1;
    data[4u * item + 2u] = x2;
    data[4u * item + 3u] = x3;
#endif
#ifdef LEVEL
    // item = (span, lo): the Values span * s * WIDTH + lo + k * s, k < WIDTH, s = stride / LANES
    // (spans of stride * WIDTH values tile the blocks, which tile the rows)
    if (item >= params.tokens * (n / (LANES * WIDTH))) {
        return;
    }
    let s = params.stride / LANES;
    let base = (item / s) * s * WIDTH + item % s;
#ifdef VEC4
    // vec4 levels (stride >= 16, no signs) are written out: CPU adapters keep an array indexed in
    // a loop in memory
    switch WIDTH {
        case 16u: {
            level16(base, s);
        }
        case 8u: {
            level8(base, s);
        }
        case 4u: {
            store_four(base, s, bf_four(load_four(base, s)));
        }
        default: {
            var x0 = data[base];
            var x1 = data[base + s];
            bf(&x0, &x1);
            data[base] = x0;
            data[base + s] = x1;
        }
    }
#else
    var x: array<Value, WIDTH>;
    for (var k = 0u; k < WIDTH; k++) {
        x[k] = data[base + k * s];
    }
    // scalar levels are the first (stride 1): the signs come before their butterflies
    if (params.has_signs != 0u) {
        let first = base % n;
        for (var k = 0u; k < WIDTH; k++) {
            if (bit(0u, first + k)) {
                x[k] = -x[k];
            }
        }
    }
    for (var h = 1u; h < WIDTH; h = h * 2u) {
        for (var j = 0u; j < WIDTH; j++) {
            if ((j & h) == 0u) {
                let u = x[j];
                let v = x[j + h];
                x[j] = u + v;
                x[j + h] = u - v;
            }
        }
    }
    for (var k = 0u; k < WIDTH; k++) {
        data[base + k * s] = x[k];
    }
#endif
#endif
#ifdef CORE
    // item = (t, b, chunk): the values LANES b .. LANES b + LANES - 1 of the blocks a of row t
    // with a / core_rows = chunk, in Values
    let pl = p / LANES;
    let chunks = (m + params.core_rows - 1u) / params.core_rows;
    if (item >= params.tokens * pl * chunks) {
        return;
    }
    let row = (item / (pl * chunks)) * (n / LANES);
    let b = item % pl;
    let a0 = (item / pl) % chunks * params.core_rows;
    if (params.has_core != 0u && m <= CORE_KEPT) {
        // the m inputs read once, each output's m entries from one or two table words
        var xs: array<Value, CORE_KEPT>;
        for (var a2 = 0u; a2 < m; a2++) {
            xs[a2] = data[row + a2 * pl + b];
        }
        for (var a = a0; a < min(a0 + params.core_rows, m); a++) {
            let signs = core_signs(a, m);
            var acc = select(xs[0], -xs[0], (signs & 1u) != 0u);
            for (var a2 = 1u; a2 < m; a2++) {
                let v = xs[a2];
                acc = select(acc + v, acc - v, ((signs >> a2) & 1u) != 0u);
            }
            out[row + a * pl + b] = acc * params.scale;
        }
        return;
    }
    for (var a = a0; a < min(a0 + params.core_rows, m); a++) {
        let i = row + a * pl + b;
        if (params.has_core == 0u) {
            out[i] = data[i] * params.scale;
            continue;
        }
        let first = data[row + b];
        var acc = select(first, -first, bit(params.core_offset, a * m));
        for (var a2 = 1u; a2 < m; a2++) {
            let v = data[row + a2 * pl + b];
            acc = select(acc + v, acc - v, bit(params.core_offset, a * m + a2));
        }
        out[i] = acc * params.scale;
    }
#endif
}
