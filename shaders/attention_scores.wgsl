// Attention with materialised scores, for CPU adapters and many queries (vision, prefill): the
// same product as attention.wgsl,
//   out[b, i, h, :] = sum_j p_ij * v_j,   p_ij = exp(s_ij - m_i) / l_i,
//   s_ij = scale * q[b, i, h, :] . k[b, j, g, :],   m_i = max_j s_ij,   l_i = sum_j exp(s_ij - m_i)
// over the keys visible to query i, as three register-blocked stages with no workgroup memory and
// no barriers (each costs ~70 us on SwiftShader), the way matmul_blocked.wgsl does a matmul:
//   STAGE_SCORES  one invocation per 4 queries x 4 keys of a head: 16 scores, each an fma chain
//                 over the head dimension (ascending) times the scale;
//   STAGE_SOFTMAX one invocation per query row: max, exp(s - m) summed in blocks of 64 keys
//                 (16 vec4 terms per lane, then the blocks, then the 4 lanes), then p = e / l;
//                 keys past the row's visible ones get p = 0;
//   STAGE_VALUES  one invocation per 4 queries x 16 values: sum_j p_ij v_j in blocks of 64 keys
//                 (an fma chain per block, then the blocks added).
// Every sum is blocked (no chain longer than 64 terms plus one term per 64 keys), so the error
// bound of attention.wgsl's variants holds here too.
//
// Queries are taken 4 at a time per (batch, head) plane: row block rb covers queries
// 4 (rb % QB) .. +3 of plane rb / QB = b * heads + h, QB = ceil(queries / 4), so an invocation's
// 4 queries share one key head. One call of the three stages covers row blocks
// block_begin .. block_begin + blocks (the host splits the planes so the score buffer fits a
// binding): scores[(4 lb + r) * score_stride4 + c] holds keys 4c..4c+3 of row r of local block lb,
// score_stride4 = ceil(key_end / 4) vec4s (key_end = the keys any query of the call sees).
// Values are per-head rows or a shared latent (lib/attention.wgsl's value4).

#include grid
#include block

#include attention

@group(0) @binding(0) var<uniform> params: Params;
#ifdef STAGE_SCORES
#include attention_qk
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> scores: array<vec4<f32>>;
#ifdef ROPE
// The RoPE table (lib/attention_qk.wgsl): ROPE is its binding number.
@group(0) @binding({{ROPE}}) var<storage, read> table: array<vec4<f32>>;
#endif
#endif
#ifdef STAGE_SOFTMAX
@group(0) @binding(1) var<storage, read_write> scores: array<vec4<f32>>;
#endif
#ifdef STAGE_VALUES
#include attention_values
@group(0) @binding(1) var<storage, read> scores: array<vec4<f32>>;
#ifdef LATENT_F32
@group(0) @binding(2) var<storage, read> v: array<f32>;
#else
#ifdef LATENT_I8
@group(0) @binding(2) var<storage, read> v: array<u32>;
#else
@group(0) @binding(2) var<storage, read> v: array<vec4<f32>>;
#endif
#endif
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
#ifdef LATENT_I8
@group(0) @binding(4) var<storage, read> vscale: array<f32>;
#endif
#endif

// Keys 64 at a time (16 vec4s) per block of a blocked sum.
const SUM_BLOCK4: u32 = 16u;

// The row block of this call's local block lb: (b, h, first query).
struct Block {
    b: u32,
    h: u32,
    i0: u32,
}

fn row_block(lb: u32) -> Block {
    let qb = (params.queries + 3u) / 4u;
    let rb = params.block_begin + lb;
    let plane = rb / qb;
    return Block(plane / params.heads, plane % params.heads, (rb % qb) * 4u);
}

// Keys the block's last query sees (the most of its 4, since visibility grows with i).
fn block_keys(blk: Block) -> u32 {
    return visible_keys(min(blk.i0 + 3u, params.queries - 1u));
}

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let item = workgroup_index(wg, nwg) * 64u + li;
    let stride4 = params.score_stride4;
#ifdef STAGE_SCORES
    // item = (local block lb, key group kg), key groups fastest.
    if (item >= params.blocks * stride4) {
        return;
    }
    let lb = item / stride4;
    let kg = item % stride4;
    let blk = row_block(lb);
    if (4u * kg >= block_keys(blk)) {
        return; // above the causal diagonal of all 4 queries: never read
    }
    let g = blk.h / (params.heads / params.kv_heads);
    var qi: array<u32, 4>; // the block's queries and their rows
    var qr: array<u32, 4>;
    var kj: array<u32, 4>; // its keys and their rows
    var kr: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        qi[r] = min(blk.i0 + r, params.queries - 1u);
        qr[r] = q_row(blk.b, qi[r], blk.h);
        kj[r] = min(4u * kg + r, params.key_end - 1u);
        kr[r] = kv_row(blk.b, kj[r], g);
    }
    var acc: array<vec4<f32>, 4>; // acc[r][c]: query i0 + r, key 4 kg + c
    for (var d = 0u; d < HD4; d++) {
        let k0 = key4(kr[0], kj[0], d);
        let k1 = key4(kr[1], kj[1], d);
        let k2 = key4(kr[2], kj[2], d);
        let k3 = key4(kr[3], kj[3], d);
        for (var r = 0u; r < 4u; r++) {
            let a = query4(qr[r], qi[r], d);
            acc[r] = block_step(acc[r], a, k0, k1, k2, k3);
        }
    }
    for (var r = 0u; r < 4u; r++) {
        scores[(4u * lb + r) * stride4 + kg] = acc[r] * params.scale;
    }
#endif
#ifdef STAGE_SOFTMAX
    // item = local row 4 lb + r.
    if (item >= 4u * params.blocks) {
        return;
    }
    let blk = row_block(item / 4u);
    let i = blk.i0 + item % 4u;
    if (i >= params.queries) {
        return;
    }
    let n = visible_keys(i);
    let n4 = (n + 3u) / 4u;
    let base = item * stride4;
    let lane = vec4<u32>(0u, 1u, 2u, 3u);
    // Keys past n in the last vec4 (never written by STAGE_SCORES when past the diagonal).
    let lowest = vec4<f32>(bitcast<f32>(0xff7fffffu)); // the lowest finite f32
    var m4 = lowest;
    for (var c = 0u; c < n4; c++) {
        m4 = max(m4, select(lowest, scores[base + c], 4u * c + lane < vec4<u32>(n)));
    }
    let m = max(max(m4.x, m4.y), max(m4.z, m4.w));
    var total = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < n4; c0 += SUM_BLOCK4) {
        var part = vec4<f32>(0.0);
        for (var c = c0; c < min(c0 + SUM_BLOCK4, n4); c++) {
            let live = 4u * c + lane < vec4<u32>(n);
            let e = select(vec4<f32>(0.0), exp(scores[base + c] - vec4<f32>(m)), live);
            scores[base + c] = e;
            part += e;
        }
        total += part;
    }
    let l = (total.x + total.y) + (total.z + total.w);
    for (var c = 0u; c < n4; c++) {
        scores[base + c] = scores[base + c] / l;
    }
    for (var c = n4; c < stride4; c++) {
        scores[base + c] = vec4<f32>(0.0);
    }
#endif
#ifdef STAGE_VALUES
    // item = (local block lb, column block cb of 4 vec4s), column blocks fastest.
    let cbs = (VD4 + 3u) / 4u;
    if (item >= params.blocks * cbs) {
        return;
    }
    let lb = item / cbs;
    let cb = item % cbs;
    let blk = row_block(lb);
    let g = blk.h / (params.heads / params.kv_heads);
    let n = block_keys(blk);
    let n4 = (n + 3u) / 4u;
    var pr: array<u32, 4>; // score rows (clamped to the block's last query)
    var col: array<u32, 4>; // value vec4 columns (clamped to VD4)
    for (var r = 0u; r < 4u; r++) {
        pr[r] = (4u * lb + min(r, params.queries - 1u - blk.i0)) * stride4;
        col[r] = min(4u * cb + r, VD4 - 1u);
    }
    var acc: array<vec4<f32>, 16>; // acc[4 r + t]: query i0 + r, value vec4 col[t]
    var part: array<vec4<f32>, 16>;
    for (var c0 = 0u; c0 < n4; c0 += SUM_BLOCK4) {
        // Zeroed explicitly: Chromium's compiler did not reset an array declared in the loop.
        for (var x = 0u; x < 16u; x++) {
            part[x] = vec4<f32>(0.0);
        }
        for (var c = c0; c < min(c0 + SUM_BLOCK4, n4); c++) {
            // Keys 4c..4c+3 (clamped to the last visible key: its p is 0 past a row's keys).
            let j0 = min(4u * c, n - 1u);
            let j1 = min(4u * c + 1u, n - 1u);
            let j2 = min(4u * c + 2u, n - 1u);
            let j3 = min(4u * c + 3u, n - 1u);
            let p0 = scores[pr[0] + c];
            let p1 = scores[pr[1] + c];
            let p2 = scores[pr[2] + c];
            let p3 = scores[pr[3] + c];
            // each key's row scale read once for its four value vec4s
            let s0 = value_scale(blk.b, j0);
            let s1 = value_scale(blk.b, j1);
            let s2 = value_scale(blk.b, j2);
            let s3 = value_scale(blk.b, j3);
            for (var t = 0u; t < 4u; t++) {
                let v0 = value4_scaled(blk.b, j0, g, col[t], s0);
                let v1 = value4_scaled(blk.b, j1, g, col[t], s1);
                let v2 = value4_scaled(blk.b, j2, g, col[t], s2);
                let v3 = value4_scaled(blk.b, j3, g, col[t], s3);
                part[t] = fma(vec4<f32>(p0.w), v3, fma(vec4<f32>(p0.z), v2, fma(vec4<f32>(p0.y), v1, fma(vec4<f32>(p0.x), v0, part[t]))));
                part[4u + t] = fma(vec4<f32>(p1.w), v3, fma(vec4<f32>(p1.z), v2, fma(vec4<f32>(p1.y), v1, fma(vec4<f32>(p1.x), v0, part[4u + t]))));
                part[8u + t] = fma(vec4<f32>(p2.w), v3, fma(vec4<f32>(p2.z), v2, fma(vec4<f32>(p2.y), v1, fma(vec4<f32>(p2.x), v0, part[8u + t]))));
                part[12u + t] = fma(vec4<f32>(p3.w), v3, fma(vec4<f32>(p3.z), v2, fma(vec4<f32>(p3.y), v1, fma(vec4<f32>(p3.x), v0, part[12u + t]))));
            }
        }
        for (var x = 0u; x < 16u; x++) {
            acc[x] += part[x];
        }
    }
    for (var r = 0u; r < 4u; r++) {
        let i = blk.i0 + r;
        if (i >= params.queries) {
            break;
        }
        let row = q_row(blk.b, i, blk.h) * VD4;
        for (var t = 0u; t < 4u; t++) {
            if (4u * cb + t < VD4) {
                out[row + 4u * cb + t] = acc[4u * r + t];
            }
        }
    }
#endif
}
