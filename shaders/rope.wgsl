// Rotary position embedding (non-interleaved, "rotate_half"), in place on
//   q [tokens, heads, 2 * half]      token t at position pos0 + t
//   k [tokens, kv_heads, 2 * half]   the same tokens
// (row-major f32),
// with cos/sin read from table [max_positions, 2, half]
// (row p: cos(p * inv_freq[0..half]) then sin(p * inv_freq[0..half])):
//   out[i]        = x[i] * cos[i] - x[i + half] * sin[i]
//   out[i + half] = x[i + half] * cos[i] + x[i] * sin[i]
// One invocation per (token, head, i < half): the queries' items first, then the keys'.

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
@group(0) @binding(3) var<storage, read_write> k: array<f32>;

// Element and table indices of item `id` of a tensor of `heads` heads whose token 0 sits at
// position `pos0`: x[i] of (token, head) and cos[i] of the token's position.
fn item(id: u32, heads: u32, pos0: u32) -> vec2<u32> {
    let half = params.half;
    let i = id % half;
    let head = (id / half) % heads;
    let t = id / (half * heads);
    return vec2<u32>((t * heads + head) * 2u * half + i, (pos0 + t) * 2u * half + i);
}

// The pair (a, b) = (x[i], x[i + half]) rotated by the angle whose cos sits at table[at].
fn rotated(a: f32, b: f32, at: u32) -> vec2<f32> {
    let c = table[at];
    let s = table[at + params.half];
    return vec2<f32>(a * c - b * s, b * c + a * s);
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let id = (workgroup_index(wg, nwg)) * 256u + li;
    let half = params.half;
    let query_items = params.tokens * params.heads * half;
    if (id < query_items) {
        let at = item(id, params.heads, params.pos0);
        let r = rotated(q[at.x], q[at.x + half], at.y);
        q[at.x] = r.x;
        q[at.x + half] = r.y;
        return;
    }
    let kid = id - query_items;
    if (kid >= params.tokens * params.kv_heads * half) {
        return;
    }
    let at = item(kid, params.kv_heads, params.pos0);
    let r = rotated(k[at.x], k[at.x + half], at.y);
    k[at.x] = r.x;
    k[at.x + half] = r.y;
}
