// Merges the key chunks of the PER_QUERY attention (attention.wgsl): chunk k of row r left its
// unnormalised accumulator a_k (vd4 vec4s) and its running max and sum (m_k, l_k) in
// part[(r * chunks + k) * (vd4 + 1) ..], l_k = 0 when the chunk held none of the row's keys.
//   M = max_k m_k over chunks with keys,  w_k = exp(m_k - M)
//   out[r, :] = (sum_k w_k a_k) / (sum_k w_k l_k)       chunks in order
// One invocation per (row, run of four vec4s of the value): each chunk's (m_k, l_k) is read and
// its w_k computed once for the run, whose vec4s each take the operations above in the same order
// (so the same bits as one invocation per vec4). No workgroup memory, no barriers.

#include grid

struct Params {
    rows: u32,
    chunks: u32,
    vd4: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

// Vec4s of the value one invocation merges.
const RUN: u32 = 4u;

// Vec4 c of chunk part `at` (the chunk's first vec4), zero past the value.
fn part4(at: u32, c: u32) -> vec4<f32> {
    if (c >= params.vd4) {
        return vec4<f32>(0.0);
    }
    return part[at + c];
}

// Vec4 c of row `row`, if the value has it.
fn store4(row: u32, c: u32, v: vec4<f32>) {
    if (c < params.vd4) {
        out[row * params.vd4 + c] = v;
    }
}

@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let item = invocation_index(grid, 64u, li);
    let runs = (params.vd4 + RUN - 1u) / RUN;
    if (item >= params.rows * runs) {
        return;
    }
    let row = item / runs;
    let c = (item % runs) * RUN;
    let stride = params.vd4 + 1u;
    let first = row * params.chunks;
    var mx = 0.0;
    var seen = false;
    for (var k = 0u; k < params.chunks; k++) {
        let ml = part[(first + k) * stride + params.vd4];
        if (ml.y > 0.0) {
            mx = select(ml.x, max(mx, ml.x), seen);
            seen = true;
        }
    }
    var l = 0.0;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k = 0u; k < params.chunks; k++) {
        let at = (first + k) * stride;
        let ml = part[at + params.vd4];
        if (ml.y > 0.0) {
            let w = exp(ml.x - mx);
            l = fma(ml.y, w, l);
            acc0 = fma(part4(at, c), vec4<f32>(w), acc0);
            acc1 = fma(part4(at, c + 1u), vec4<f32>(w), acc1);
            acc2 = fma(part4(at, c + 2u), vec4<f32>(w), acc2);
            acc3 = fma(part4(at, c + 3u), vec4<f32>(w), acc3);
        }
    }
    store4(row, c, acc0 / l);
    store4(row, c + 1u, acc1 / l);
    store4(row, c + 2u, acc2 / l);
    store4(row, c + 3u, acc3 / l);
}
