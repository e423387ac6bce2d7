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
// limits (the connector's 12 288 included):
//   STAGE_LEVEL (one per level of at most 4 butterfly stages): the stages h = stride, 2 stride,
//     ..., (WIDTH / 2) stride, with WIDTH <= 16 values per invocation held in registers: an
//     invocation takes the values base + k stride, k < WIDTH, of one block (stride = 16^level),
//     so neighbouring invocations read neighbouring values from the second level on. The first
//     level (stride 1) applies the signs first. Each butterfly is the same operation on the same
//     operands, stage by stage in the contract's order, whichever invocation does it.
//   STAGE_CORE: one invocation to each output value (steps 3-4: y_{a p + b} from the m values
//     x_{a' p + b} of `data`, written to `out`, so no invocation reads what another writes and
//     any core order works: the 2.2B connector's 10 368 = 648 * 16 needs 648).
// Work items lie on a 2-D grid of 64-invocation workgroups.

#include grid

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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> data: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
#ifdef STAGE_CORE
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

fn bit(word0: u32, i: u32) -> bool {
    return ((table[word0 + i / 32u] >> (i % 32u)) & 1u) != 0u;
}

#ifdef STAGE_LEVEL
const WIDTH: u32 = {{WIDTH}}u;
#endif

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let item = (workgroup_index(wg, nwg)) * 64u + li;
    let n = params.n;
    let m = params.m;
    let p = params.p;
#ifdef STAGE_LEVEL
    // item = (span, lo): the values span * stride * WIDTH + lo + k * stride, k < WIDTH (spans of
    // stride * WIDTH values tile the blocks, which tile the rows)
    if (item >= params.tokens * (n / WIDTH)) {
        return;
    }
    let s = params.stride;
    let base = (item / s) * s * WIDTH + item % s;
    var x: array<f32, WIDTH>;
    for (var k = 0u; k < WIDTH; k++) {
        x[k] = data[base + k * s];
    }
    if (s == 1u && params.has_signs != 0u) {
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
#else
    // STAGE_CORE: item = (t, a p + b), one value of row t
    if (item >= params.tokens * n) {
        return;
    }
    if (params.has_core == 0u) {
        out[item] = data[item] * params.scale;
        return;
    }
    let base = (item / n) * n;
    let i = item % n;
    let a = i / p;
    let b = i % p;
    let first = data[base + b];
    var acc = select(first, -first, bit(params.core_offset, a * m));
    for (var a2 = 1u; a2 < m; a2++) {
        let v = data[base + a2 * p + b];
        acc = select(acc + v, acc - v, bit(params.core_offset, a * m + a2));
    }
    out[item] = acc * params.scale;
#endif
}
