// One online rotation and the activation quantization of each token in one dispatch (a decode
// step's token: instead of a copy, rotate.wgsl's levels and core, and quantize.wgsl):
//   rotated[t, :] = R x[t, :]    steps 1-4 of rotate.wgsl, R = c (A (x) H_p) D, n = m p, 4 | p
//   q[t, :], scales[t]           quantize.wgsl's M, s and integers of rotated[t, :]
// With SILU_MUL the row is first x = silu(gate) up (the MLP's down_proj input, elementwise.wgsl's
// SILU_MUL with the same lib/silu.wgsl), read from the gate and up rows.
// Every value goes through the same f32 operations on the same operands as in those kernels (and
// the CPU reference), in an order that keeps each value's stages in the contract's order, so the
// integers and scales are theirs bit for bit. One 64-invocation workgroup per token (2-D grid);
// invocation li takes the vec4s i = li, li + 64, ... of each step:
//   1. x to work with the signs, then the butterflies h = 1, 2 inside each vec4;
//   2. the butterflies h = 4, 8, ..., p/2 as vec4 pairs H = h/4 apart, a barrier after each
//      stage (and after step 1);
//   3. the core A (or none) and the scale c, from work into rotated, with the invocation's
//      max |y|; the 64 maxima meet in workgroup memory (max is exact in any order: M is the
//      reference's);
//   4. s = M k, then the integers of the vec4s the invocation rotated (lib/activation.wgsl).
// With WORK_SHARED (the row's vec4s, when a row fits workgroup memory beside the reduction's
// slots) the butterflies work on the row in workgroup memory instead of the `work` rows in
// storage, with workgroup barriers for storage barriers: the same values in the same order (a
// CPU adapter loads storage lane by lane behind bounds checks, and workgroup memory without them).
// Loop steps per invocation (llvmpipe stops an invocation's loops after 65535 in total): about
// (n/4 + (log2 p - 2) n/8 + n m/4 + words) / 64 + 88; the host checks them (rotate_quantize.rs).
//
// Buffers: x, rotated f32 [tokens, n] (vec4s), and work f32 [tokens, n] without WORK_SHARED
// (bound last); table the sign mask (bit i of word i/32)
// and the core (bit a m + a' of word core_offset on = -1); q u32 [tokens, words]; scales f32
// [tokens].

#include grid
#include hadamard
#include activation
#include workgroup_max
#ifdef SILU_MUL
#include silu
#endif

struct Params {
    tokens: u32,
    n: u32,
    m: u32,
    p: u32,
    has_signs: u32,
    core_offset: u32,
    scale: f32,
    has_core: u32,
    words: u32,
    qmax: i32,
    step: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// x, or with SILU_MUL the MLP's gate (x = silu(gate) up, as elementwise.wgsl computes it)
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> rotated: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> q: array<u32>;
@group(0) @binding(5) var<storage, read_write> scales: array<f32>;
#ifdef SILU_MUL
@group(0) @binding(6) var<storage, read> up: array<vec4<f32>>;
#endif
#ifdef WORK_SHARED
var<workgroup> work: array<vec4<f32>, {{WORK_SHARED}}>;

// The index in `work` of vec4 i of the row starting at vec4 `row` (of every token's rows): i.
fn at(row: u32, i: u32) -> u32 {
    return i;
}

// Between two butterfly stages: their vec4s are in workgroup memory.
fn stage_barrier() {
    workgroupBarrier();
}
#else
// WORK: its binding number, the last one (6, or 7 with SILU_MUL; given by the caller).
@group(0) @binding({{WORK}}) var<storage, read_write> work: array<vec4<f32>>;

// The index in `work` of vec4 i of the row starting at vec4 `row`.
fn at(row: u32, i: u32) -> u32 {
    return row + i;
}

// Between two butterfly stages: their vec4s are in storage.
fn stage_barrier() {
    storageBarrier();
}
#endif

// Step 1 for vec4 i of the row starting at vec4 `row`: x to work with its signs, h = 1, 2.
fn first_stages(row: u32, i: u32) {
#ifdef SILU_MUL
    let g = x[row + i];
    let u = up[row + i];
    var v = vec4<f32>(silu(g.x) * u.x, silu(g.y) * u.y, silu(g.z) * u.z, silu(g.w) * u.w);
#else
    var v = x[row + i];
#endif
    if (params.has_signs != 0u) {
        v = signed4(v, table[i / 8u] >> (4u * (i % 8u)), 0u);
    }
    work[at(row, i)] = bf_inside(v);
}

// Step 2, butterfly pair j of the stage h = 4 H: vec4s (i, i + H) with bit H of i clear (blocks
// of p/4 vec4s are aligned, so a pair never leaves its block).
fn butterfly(row: u32, hh: u32, j: u32) {
    let i = at(row, (j / hh) * 2u * hh + j % hh);
    let u = work[i];
    let v = work[i + hh];
    work[i] = u + v;
    work[i + hh] = u - v;
}

// Output vec4 i of the row starting at vec4 `row`: y_{a p + b} = c sum_a' A[a][a'] x_{a' p + b}
// accumulated from A[a][0] x_b left to right (or c x without a core), from work.
fn core_value(row: u32, i: u32) -> vec4<f32> {
    let pl = params.p / 4u;
    if (params.has_core == 0u) {
        return work[at(row, i)] * params.scale;
    }
    let a = i / pl;
    let b = i % pl;
    let first = work[at(row, b)];
    var acc = select(first, -first, bit(params.core_offset, a * params.m));
    var a2 = 1u;
    if (params.m % 4u == 0u) {
        // three, then four entries at a time: entries a m + a2 .. + 3 lie in one table word
        for (var k = 1u; k < 4u; k++) {
            let v = work[at(row, k * pl + b)];
            acc = select(acc + v, acc - v, bit(params.core_offset, a * params.m + k));
        }
        for (a2 = 4u; a2 < params.m; a2 += 4u) {
            let e = a * params.m + a2;
            let bits = table[params.core_offset + e / 32u] >> (e % 32u);
            let v0 = work[at(row, a2 * pl + b)];
            let v1 = work[at(row, (a2 + 1u) * pl + b)];
            let v2 = work[at(row, (a2 + 2u) * pl + b)];
            let v3 = work[at(row, (a2 + 3u) * pl + b)];
            acc = select(acc + v0, acc - v0, (bits & 1u) != 0u);
            acc = select(acc + v1, acc - v1, (bits & 2u) != 0u);
            acc = select(acc + v2, acc - v2, (bits & 4u) != 0u);
            acc = select(acc + v3, acc - v3, (bits & 8u) != 0u);
        }
    } else {
        for (a2 = 1u; a2 < params.m; a2++) {
            let v = work[at(row, a2 * pl + b)];
            acc = select(acc + v, acc - v, bit(params.core_offset, a * params.m + a2));
        }
    }
    return acc * params.scale;
}

@compute @workgroup_size(64, 1, 1)
fn main(
    grid: Grid,
    @builtin(local_invocation_index) li: u32,
#ifdef SUBGROUPS
    sg: Subgroup,
#endif
) {
#ifdef SUBGROUPS
    subgroups_enter(sg);
#endif
    let t = workgroup_index(grid);
    if (t >= params.tokens) {
        return;
    }
    let n4 = params.n / 4u;
    let row = t * n4;
    for (var i = li; i < n4; i += 64u) {
        first_stages(row, i);
    }
    stage_barrier();
    for (var hh = 1u; hh < params.p / 4u; hh = hh * 2u) {
        for (var j = li; j < n4 / 2u; j += 64u) {
            butterfly(row, hh, j);
        }
        stage_barrier();
    }
    // each invocation quantizes the vec4s it rotates: only M crosses invocations
    var big = vec4<f32>(0.0);
    for (var i = li; i < n4; i += 64u) {
        let y = core_value(row, i);
        rotated[row + i] = y;
        big = max(big, abs(y));
    }
    let s = workgroup_max(li, max(max(big.x, big.y), max(big.z, big.w))) * params.step;
    let r = inverse_scale(s);
    let out = t * params.words;
    for (var w = li; w < params.words; w += 64u) {
        if (r == 0.0 || w >= n4) {
            q[out + w] = 0u;
        } else {
            q[out + w] = quantize4(rotated[row + w], r, params.qmax);
        }
    }
    if (li == 0u) {
        scales[t] = select(0.0, s, r != 0.0);
    }
}
