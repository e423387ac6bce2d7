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
// Two or three dispatches, no workgroup memory and no barriers, so any width works within
// WebGPU's default limits (the connector's 12 288 included): STAGE_BLOCKS gives one invocation to
// each run of min(p, SUB) values of a row (step 1 and the butterflies within it), STAGE_STRIDED
// (when p > SUB) one to each column of a block's SUB-wide sub-blocks (the remaining butterflies),
// STAGE_CORE one to each output value (steps 3-4: y_{a p + b} from the m values x_{a' p + b} of
// `data`, written to `out`, so no invocation reads what another writes and any core order works:
// the 2.2B connector's 10 368 = 648 * 16 needs 648). Work items lie on a 2-D grid of
// 64-invocation workgroups.

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
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> data: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
#ifdef STAGE_CORE
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif

// Walsh-Hadamard blocks longer than SUB values are done in two dispatches: the butterflies h < SUB
// on consecutive sub-blocks, then those with h >= SUB across them (each butterfly is the same
// operation on the same operands, stage by stage, so the values are the same bit for bit), so no
// invocation walks more than SUB values (lavapipe computed 8192-value blocks wrong in one) and
// long blocks get p / SUB times more invocations.
const SUB: u32 = 1024u;

fn bit(word0: u32, i: u32) -> bool {
    return ((table[word0 + i / 32u] >> (i % 32u)) & 1u) != 0u;
}

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
#ifdef STAGE_BLOCKS
    // item = one sub-block of SUB = min(p, 1024) consecutive values (rows and blocks are
    // consecutive, so sub-blocks tile the data): signs, then the butterflies h < SUB
    let sub = min(p, SUB);
    if (item >= params.tokens * (n / sub)) {
        return;
    }
    let start = item * sub;
    if (params.has_signs != 0u) {
        let first = start % n;
        for (var i = 0u; i < sub; i++) {
            if (bit(0u, first + i)) {
                data[start + i] = -data[start + i];
            }
        }
    }
    for (var h = 1u; h < sub; h = h * 2u) {
        for (var s = 0u; s < sub; s += 2u * h) {
            for (var j = start + s; j < start + s + h; j++) {
                let u = data[j];
                let v = data[j + h];
                data[j] = u + v;
                data[j + h] = u - v;
            }
        }
    }
#else
#ifdef STAGE_STRIDED
    // item = (t, a, b), b < SUB: the butterflies h >= SUB of block a of row t on its values
    // a p + k SUB + b, k < p / SUB (only dispatched when p > SUB)
    let q = p / SUB;
    if (item >= params.tokens * m * SUB) {
        return;
    }
    let t = item / (m * SUB);
    let a = (item / SUB) % m;
    let base = t * n + a * p + item % SUB;
    for (var h = 1u; h < q; h = h * 2u) {
        for (var s = 0u; s < q; s += 2u * h) {
            for (var k = s; k < s + h; k++) {
                let j = base + k * SUB;
                let u = data[j];
                let v = data[j + h * SUB];
                data[j] = u + v;
                data[j + h * SUB] = u - v;
            }
        }
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
#endif
}
