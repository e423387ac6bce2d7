// Rotary position embedding (non-interleaved, "rotate_half"), in place on
//   q [tokens, heads, 2 * half] and k [tokens, kv_heads, 2 * half]  (row-major f32),
// token t at position pos0 + t, with cos/sin read from table [max_positions, 2, half]
// (row p: cos(p * inv_freq[0..half]) then sin(p * inv_freq[0..half])):
//   out[i]        = x[i] * cos[i] - x[i + half] * sin[i]
//   out[i + half] = x[i + half] * cos[i] + x[i] * sin[i]
// One invocation per (token, head, i < half); q and k heads share one linear index space.
// ONE_TENSOR: only `q` is bound and rotated (kv_heads = 0): the keys rebuilt from a latent
// cache, at positions pos0.., or queries alone.

#include grid

struct Params {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    half: u32,
    pos0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
#ifndef ONE_TENSOR
@group(0) @binding(3) var<storage, read_write> k: array<f32>;
#endif

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let id = (workgroup_index(wg, nwg)) * 256u + li;
    let half = params.half;
    let all_heads = params.heads + params.kv_heads;
    if (id >= params.tokens * all_heads * half) {
        return;
    }
    let i = id % half;
    let head = (id / half) % all_heads;
    let t = id / (half * all_heads);
    let row = (params.pos0 + t) * 2u * half;
    let c = table[row + i];
    let s = table[row + half + i];
    if (head < params.heads) {
        let base = (t * params.heads + head) * 2u * half + i;
        let a = q[base];
        let b = q[base + half];
        q[base] = a * c - b * s;
        q[base + half] = b * c + a * s;
    }
#ifndef ONE_TENSOR
    else {
        let base = (t * params.kv_heads + (head - params.heads)) * 2u * half + i;
        let a = k[base];
        let b = k[base + half];
        k[base] = a * c - b * s;
        k[base + half] = b * c + a * s;
    }
#endif
}
