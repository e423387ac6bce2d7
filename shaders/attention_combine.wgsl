// Merges the key chunks of the PER_QUERY attention (attention.wgsl): chunk k of row r left its
// unnormalised accumulator a_k (vd4 vec4s) and its running max and sum (m_k, l_k) in
// part[(r * chunks + k) * (vd4 + 1) ..], l_k = 0 when the chunk held none of the row's keys.
//   M = max_k m_k over chunks with keys,  w_k = exp(m_k - M)
//   out[r, :] = (sum_k w_k a_k) / (sum_k w_k l_k)       chunks in order
// One invocation per (row, vec4 of the value); no workgroup memory, no barriers.

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

@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let item = invocation_index(grid, 64u, li);
    if (item >= params.rows * params.vd4) {
        return;
    }
    let row = item / params.vd4;
    let c = item % params.vd4;
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
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < params.chunks; k++) {
        let ml = part[(first + k) * stride + params.vd4];
        if (ml.y > 0.0) {
            let w = exp(ml.x - mx);
            l = fma(ml.y, w, l);
            acc = fma(part[(first + k) * stride + c], vec4<f32>(w), acc);
        }
    }
    out[row * params.vd4 + c] = acc / l;
}
