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
// bound of attention.wgsl's variants holds here too. An invocation's four queries and keys are
// separate variables, not arrays indexed in its loop, and with UNROLLED_VALUES (the browser's CPU
// adapter, `Capabilities::unrolled_loops`) the loop over its four value columns is written out,
// so its sums are indexed by constants: SwiftShader keeps an array indexed in a loop in memory
// (these stages ran 1.8x slower), while lavapipe's LLVM takes seconds to compile the written-out
// values stage at its first dispatch (BENCHMARKS.md, Speed XVII). The same operations in the
// same order either way.
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

#ifdef UNROLLED_VALUES
// part + sum_k p[k] v_k for one query's probabilities p of four keys and their values v0..v3:
// an fma chain in key order.
fn weigh(part: vec4<f32>, p: vec4<f32>, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(p.w), v3, fma(vec4<f32>(p.z), v2, fma(vec4<f32>(p.y), v1, fma(vec4<f32>(p.x), v0, part))));
}

// a + b, element by element (constant indices).
fn add16(a: array<vec4<f32>, 16>, b: array<vec4<f32>, 16>) -> array<vec4<f32>, 16> {
    return array<vec4<f32>, 16>(
        a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3],
        a[4] + b[4], a[5] + b[5], a[6] + b[6], a[7] + b[7],
        a[8] + b[8], a[9] + b[9], a[10] + b[10], a[11] + b[11],
        a[12] + b[12], a[13] + b[13], a[14] + b[14], a[15] + b[15],
    );
}
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
    let last_q = params.queries - 1u;
    let last_k = params.key_end - 1u;
    let qi0 = min(blk.i0, last_q);
    let qi1 = min(blk.i0 + 1u, last_q);
    let qi2 = min(blk.i0 + 2u, last_q);
    let qi3 = min(blk.i0 + 3u, last_q);
    let qr0 = q_row(blk.b, qi0, blk.h);
    let qr1 = q_row(blk.b, qi1, blk.h);
    let qr2 = q_row(blk.b, qi2, blk.h);
    let qr3 = q_row(blk.b, qi3, blk.h);
    let kj0 = min(4u * kg, last_k);
    let kj1 = min(4u * kg + 1u, last_k);
    let kj2 = min(4u * kg + 2u, last_k);
    let kj3 = min(4u * kg + 3u, last_k);
    let kr0 = kv_row(blk.b, kj0, g);
    let kr1 = kv_row(blk.b, kj1, g);
    let kr2 = kv_row(blk.b, kj2, g);
    let kr3 = kv_row(blk.b, kj3, g);
    var acc0 = vec4<f32>(0.0); // query i0 + r, keys 4 kg .. + 3
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var d = 0u; d < HD4; d++) {
        let k0 = key4(kr0, kj0, d);
        let k1 = key4(kr1, kj1, d);
        let k2 = key4(kr2, kj2, d);
        let k3 = key4(kr3, kj3, d);
        acc0 = block_step(acc0, query4(qr0, qi0, d), k0, k1, k2, k3);
        acc1 = block_step(acc1, query4(qr1, qi1, d), k0, k1, k2, k3);
        acc2 = block_step(acc2, query4(qr2, qi2, d), k0, k1, k2, k3);
        acc3 = block_step(acc3, query4(qr3, qi3, d), k0, k1, k2, k3);
    }
    let acc = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
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
#ifdef UNROLLED_VALUES
    // score rows (clamped to the block's last query)
    let last_r = params.queries - 1u - blk.i0;
    let pr0 = 4u * lb * stride4;
    let pr1 = (4u * lb + min(1u, last_r)) * stride4;
    let pr2 = (4u * lb + min(2u, last_r)) * stride4;
    let pr3 = (4u * lb + min(3u, last_r)) * stride4;
    // value vec4 columns (clamped to VD4)
    let col0 = min(4u * cb, VD4 - 1u);
    let col1 = min(4u * cb + 1u, VD4 - 1u);
    let col2 = min(4u * cb + 2u, VD4 - 1u);
    let col3 = min(4u * cb + 3u, VD4 - 1u);
    var acc: array<vec4<f32>, 16>; // acc[4 r + t]: query i0 + r, value vec4 4 cb + t
    var part: array<vec4<f32>, 16>;
    for (var c0 = 0u; c0 < n4; c0 += SUM_BLOCK4) {
        // Zeroed by assignment: Chromium's compiler did not reset an array declared in the loop.
        part = array<vec4<f32>, 16>();
        for (var c = c0; c < min(c0 + SUM_BLOCK4, n4); c++) {
            // Keys 4c..4c+3 (clamped to the last visible key: its p is 0 past a row's keys).
            let j0 = min(4u * c, n - 1u);
            let j1 = min(4u * c + 1u, n - 1u);
            let j2 = min(4u * c + 2u, n - 1u);
            let j3 = min(4u * c + 3u, n - 1u);
            let p0 = scores[pr0 + c];
            let p1 = scores[pr1 + c];
            let p2 = scores[pr2 + c];
            let p3 = scores[pr3 + c];
            // each key's row scale read once for its four value vec4s
            let s0 = value_scale(blk.b, j0);
            let s1 = value_scale(blk.b, j1);
            let s2 = value_scale(blk.b, j2);
            let s3 = value_scale(blk.b, j3);
            // the four value columns written out: `part` indexed by constants only
            let v00 = value4_scaled(blk.b, j0, g, col0, s0);
            let v01 = value4_scaled(blk.b, j1, g, col0, s1);
            let v02 = value4_scaled(blk.b, j2, g, col0, s2);
            let v03 = value4_scaled(blk.b, j3, g, col0, s3);
            part[0] = weigh(part[0], p0, v00, v01, v02, v03);
            part[4] = weigh(part[4], p1, v00, v01, v02, v03);
            part[8] = weigh(part[8], p2, v00, v01, v02, v03);
            part[12] = weigh(part[12], p3, v00, v01, v02, v03);
            let v10 = value4_scaled(blk.b, j0, g, col1, s0);
            let v11 = value4_scaled(blk.b, j1, g, col1, s1);
            let v12 = value4_scaled(blk.b, j2, g, col1, s2);
            let v13 = value4_scaled(blk.b, j3, g, col1, s3);
            part[1] = weigh(part[1], p0, v10, v11, v12, v13);
            part[5] = weigh(part[5], p1, v10, v11, v12, v13);
            part[9] = weigh(part[9], p2, v10, v11, v12, v13);
            part[13] = weigh(part[13], p3, v10, v11, v12, v13);
            let v20 = value4_scaled(blk.b, j0, g, col2, s0);
            let v21 = value4_scaled(blk.b, j1, g, col2, s1);
            let v22 = value4_scaled(blk.b, j2, g, col2, s2);
            let v23 = value4_scaled(blk.b, j3, g, col2, s3);
            part[2] = weigh(part[2], p0, v20, v21, v22, v23);
            part[6] = weigh(part[6], p1, v20, v21, v22, v23);
            part[10] = weigh(part[10], p2, v20, v21, v22, v23);
            part[14] = weigh(part[14], p3, v20, v21, v22, v23);
            let v30 = value4_scaled(blk.b, j0, g, col3, s0);
            let v31 = value4_scaled(blk.b, j1, g, col3, s1);
            let v32 = value4_scaled(blk.b, j2, g, col3, s2);
            let v33 = value4_scaled(blk.b, j3, g, col3, s3);
            part[3] = weigh(part[3], p0, v30, v31, v32, v33);
            part[7] = weigh(part[7], p1, v30, v31, v32, v33);
            part[11] = weigh(part[11], p2, v30, v31, v32, v33);
            part[15] = weigh(part[15], p3, v30, v31, v32, v33);
        }
        acc = add16(acc, part);
    }
#else
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
#endif
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
