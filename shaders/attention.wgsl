// Scaled dot-product attention with an online (running max, rescaled sum) softmax in f32:
//   out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h, :] . k[b, j, g, :]) * v[b, j, g, :]
// over keys j < kv_len, and additionally j <= q_offset + i when causal, where g = h / (heads /
// kv_heads) is the query head's key/value head (grouped-query attention).
// Layouts (row-major f32, read as vec4 since HD % 4 == 0): q and out [batch, queries, heads, HD];
// k and v [batch, kv_capacity, kv_heads, HD], rows 0..kv_len valid.
//
// One dispatch covers keys key_begin..key_end; longer key ranges take several dispatches that
// carry the state between them: the unnormalised accumulator in `out` and the running max and
// sum in `ml` [batch, queries, heads, 2]. `first` starts from scratch, `last` normalises. (This
// bounds the loop iterations of one invocation, which some drivers cap: llvmpipe stops every
// loop of an invocation after 65535 iterations in total.)
//
// Default variant (query-tiled): one workgroup of 64 invocations per (64 queries, head, batch),
// one query per invocation (its q and accumulator in registers); keys are staged BK at a time in
// workgroup memory and shared by all 64 queries.
// SPLIT_KEYS variant: one workgroup of 256 invocations per (query, head, batch), for few queries
// (decode): blocks of 256 keys, one score per invocation, block max and sum reduced in workgroup
// memory, then (lane, 4 dims) invocations accumulate p * v.
//
// PER_QUERY variant: see its entry point below (one invocation per query, head and chunk of keys,
// no barriers; attention_combine.wgsl merges the chunks).
//
// Values of a shared-latent cache (the "absorbed" form, decoder only): with LATENT_F32 or
// LATENT_I8 the value of key j is not a per-head row of v but the latent row of token j, the
// same for every head, VD wide (VD4 vec4s), and `out` gets the softmax-weighted latent sum
// c_hat[b, i, h, :] = sum_j p_ij * latent[j, :]  (the caller applies v_up per head afterwards):
//   LATENT_F32: v f32 [kv_capacity, value_width], read four at a time, zero past value_width;
//   LATENT_I8:  v u32 [kv_capacity, value_width] (the contract's INT8 latent, i8 lanes, zero
//               past value_width words) with f32 scales vscale [kv_capacity]:
//               latent[j, e] = f32(q[j, e]) * vscale[j] (one rounding).
// `out` is [batch, queries, heads, VD]: VD is the latent's width rounded up (a few widths, so a
// few compiled kernels, serve layers of many ranks); the values past the latent are zero.
//
// ROPE: q and k hold the projections before RoPE and are rotated as they are read
// (lib/attention_qk.wgsl; the table is bound after the other bindings, at binding ROPE).

#include grid

#include attention
#include attention_values
#include attention_qk

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
#ifdef LATENT_F32
@group(0) @binding(3) var<storage, read> v: array<f32>;
#else
#ifdef LATENT_I8
@group(0) @binding(3) var<storage, read> v: array<u32>;
#else
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
#endif
#endif
#ifdef PER_QUERY
@group(0) @binding(4) var<storage, read_write> part: array<vec4<f32>>;
#ifdef LATENT_I8
@group(0) @binding(5) var<storage, read> vscale: array<f32>;
#endif
#else
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> ml: array<f32>;
#ifdef LATENT_I8
@group(0) @binding(6) var<storage, read> vscale: array<f32>;
#endif
#endif
#ifdef ROPE
// The RoPE table (lib/attention_qk.wgsl) after the other bindings: ROPE is its binding number.
@group(0) @binding({{ROPE}}) var<storage, read> table: array<vec4<f32>>;
#endif

#ifndef PER_QUERY
// The end of a dispatch for the (query, head) row `row` of a one-query-per-invocation variant:
// on the last pass its output acc / l; otherwise the unnormalised accumulator in `out` and the
// running max and sum in `ml`, for the next pass.
fn finish_row(row: u32, acc: ptr<function, array<vec4<f32>, VD4>>, m: f32, l: f32) {
    if (params.last != 0u) {
        for (var c = 0u; c < VD4; c++) {
            out[row * VD4 + c] = (*acc)[c] / l;
        }
    } else {
        for (var c = 0u; c < VD4; c++) {
            out[row * VD4 + c] = (*acc)[c];
        }
        ml[2u * row] = m;
        ml[2u * row + 1u] = l;
    }
}
#endif

#ifdef PER_QUERY
// PER_QUERY variant (CPU adapters, where each workgroup barrier costs tens of microseconds):
// one invocation per (query, set of SET query heads sharing a key/value head, batch, chunk of
// chunk_keys keys), walking the chunk's keys in order straight from storage with the online
// softmax rescaled at every key; no workgroup memory, no barriers. Each key is read (and
// rotated) once and each value row read once for the set: a CPU adapter loads storage lane by
// lane, so what one invocation reads once it does not read SET times. Per head the operations
// and their order are those of a set of one. It leaves each head's unnormalised accumulator for
// the chunk and its max and sum in part[(row * chunks + chunk) * (VD4 + 1) ..] (the last vec4 is
// (m, l, 0, 0); l = 0 for a chunk past the query's keys), and attention_combine.wgsl merges a
// row's chunks into `out` (bound instead of `out` and `ml`: part at binding 4, vscale at 5).
// Splitting the keys gives decode's few (query, head) rows enough invocations to fill a CPU's
// threads and SIMD lanes. SET is HEAD_SET where given (kernels::head_set; the host picks it for
// long contexts), else 1.
#ifdef HEAD_SET
const SET: u32 = {{HEAD_SET}}u;
#else
const SET: u32 = 1u;
#endif

// The online softmax's step for one head at score s of key j (the chunk's first key `begin`):
// the head's (max, sum) `ml` updated, and (p, alpha) returned (alpha rescales its accumulator).
fn softmax_step(ml: ptr<function, vec2<f32>>, s: f32, j: u32, begin: u32) -> vec2<f32> {
    var m_new = s;
    var alpha = 0.0;
    if (j > begin) {
        m_new = max((*ml).x, s);
        alpha = exp((*ml).x - m_new);
    }
    let p = exp(s - m_new);
    *ml = vec2<f32>(m_new, (*ml).y * alpha + p);
    return vec2<f32>(p, alpha);
}

// A head's unnormalised accumulator `acc` for the chunk and its (max, sum) `ml` into `part`.
fn store_part(row: u32, chunk: u32, acc: ptr<function, array<vec4<f32>, VD4>>, ml: vec2<f32>) {
    let base = (row * params.chunks + chunk) * (VD4 + 1u);
    for (var c = 0u; c < VD4; c++) {
        part[base + c] = (*acc)[c];
    }
    part[base + VD4] = vec4<f32>(ml.x, ml.y, 0.0, 0.0);
}

// Small workgroups: a CPU adapter runs each on one thread, and decode has few items. Heads
// h0 + 1 .. h0 + 3 are written out beside h0 (their code is compiled only where SET has them),
// so every array is indexed by the vec4 alone, as for one head (SwiftShader keeps an array that
// a loop over heads would index in memory).
@compute @workgroup_size(16, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let sets = params.heads / SET;
    let units = params.queries * sets;
    let item = invocation_index(grid, 16u, li);
    if (item >= units * params.chunks) {
        return;
    }
    let b = grid.wg.z;
    let chunk = item / units;
    let i = (item % units) / sets;
    let h0 = (item % sets) * SET;
    let g = h0 / (params.heads / params.kv_heads);
    let row0 = q_row(b, i, h0);
    var q0: array<vec4<f32>, HD4>;
    var q1: array<vec4<f32>, HD4>;
    var q2: array<vec4<f32>, HD4>;
    var q3: array<vec4<f32>, HD4>;
    var acc0: array<vec4<f32>, VD4>;
    var acc1: array<vec4<f32>, VD4>;
    var acc2: array<vec4<f32>, VD4>;
    var acc3: array<vec4<f32>, VD4>;
    for (var c = 0u; c < HD4; c++) {
        q0[c] = query4(row0, i, c);
        if (SET > 1u) { q1[c] = query4(row0 + 1u, i, c); }
        if (SET > 2u) { q2[c] = query4(row0 + 2u, i, c); }
        if (SET > 3u) { q3[c] = query4(row0 + 3u, i, c); }
    }
    for (var c = 0u; c < VD4; c++) {
        acc0[c] = vec4<f32>(0.0);
        if (SET > 1u) { acc1[c] = vec4<f32>(0.0); }
        if (SET > 2u) { acc2[c] = vec4<f32>(0.0); }
        if (SET > 3u) { acc3[c] = vec4<f32>(0.0); }
    }
    var ml0 = vec2<f32>(0.0);
    var ml1 = vec2<f32>(0.0);
    var ml2 = vec2<f32>(0.0);
    var ml3 = vec2<f32>(0.0);
    let begin = chunk * params.chunk_keys;
    let n = min(begin + params.chunk_keys, visible_keys(i));
    for (var j = begin; j < n; j++) {
        let s = key_dots(&q0, &q1, &q2, &q3, kv_row(b, j, g), j) * params.scale;
        let w0 = softmax_step(&ml0, s.x, j, begin);
        var w1 = vec2<f32>(0.0);
        var w2 = vec2<f32>(0.0);
        var w3 = vec2<f32>(0.0);
        if (SET > 1u) { w1 = softmax_step(&ml1, s.y, j, begin); }
        if (SET > 2u) { w2 = softmax_step(&ml2, s.z, j, begin); }
        if (SET > 3u) { w3 = softmax_step(&ml3, s.w, j, begin); }
        // the row's scale read once for its vec4s (a CPU adapter loads lane by lane)
        let vs = value_scale(b, j);
        for (var c = 0u; c < VD4; c++) {
            let v4 = value4_scaled(b, j, g, c, vs);
            acc0[c] = fma(vec4<f32>(w0.x), v4, acc0[c] * w0.y);
            if (SET > 1u) { acc1[c] = fma(vec4<f32>(w1.x), v4, acc1[c] * w1.y); }
            if (SET > 2u) { acc2[c] = fma(vec4<f32>(w2.x), v4, acc2[c] * w2.y); }
            if (SET > 3u) { acc3[c] = fma(vec4<f32>(w3.x), v4, acc3[c] * w3.y); }
        }
    }
    store_part(row0, chunk, &acc0, ml0);
    if (SET > 1u) { store_part(row0 + 1u, chunk, &acc1, ml1); }
    if (SET > 2u) { store_part(row0 + 2u, chunk, &acc2, ml2); }
    if (SET > 3u) { store_part(row0 + 3u, chunk, &acc3, ml3); }
}
#else
#ifndef SPLIT_KEYS
const BQ: u32 = 64u;
#ifdef BLOCK_KEYS
const BK: u32 = {{BLOCK_KEYS}}u;
#else
const BK: u32 = 16u;
#endif
const TILE4: u32 = BK * HD4;
const VTILE4: u32 = BK * VD4;
const LOADS: u32 = (TILE4 + BQ - 1u) / BQ;
const VLOADS: u32 = (VTILE4 + BQ - 1u) / BQ;

var<workgroup> ks: array<vec4<f32>, TILE4>;
var<workgroup> vs: array<vec4<f32>, VTILE4>;

@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let b = grid.wg.z;
    let h = grid.wg.y;
    let g = h / (params.heads / params.kv_heads);
    let i = grid.wg.x * BQ + li;
    let is_query = i < params.queries;
    // Keys needed by the block's last query (uniform, so the barriers below are too).
    let end = min(params.key_end, visible_keys(min(params.queries, grid.wg.x * BQ + BQ) - 1u));
    var n_mine = 0u;
    var row = 0u;
    var qv: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, VD4>;
    var m = 0.0;
    var l = 0.0;
    var started = params.first == 0u;
    for (var c = 0u; c < HD4; c++) {
        qv[c] = vec4<f32>(0.0);
    }
    for (var c = 0u; c < VD4; c++) {
        acc[c] = vec4<f32>(0.0);
    }
    if (is_query) {
        n_mine = min(params.key_end, visible_keys(i));
        row = q_row(b, i, h);
        for (var c = 0u; c < HD4; c++) {
            qv[c] = query4(row, i, c);
        }
        if (started) {
            m = ml[2u * row];
            l = ml[2u * row + 1u];
            for (var c = 0u; c < VD4; c++) {
                acc[c] = out[row * VD4 + c];
            }
        }
    }
    for (var j0 = params.key_begin; j0 < end; j0 += BK) {
        for (var r = 0u; r < LOADS; r++) {
            let e = r * BQ + li;
            if (e < TILE4) {
                let j = j0 + e / HD4;
                var kk = vec4<f32>(0.0);
                if (j < params.kv_len) {
                    kk = key4(kv_row(b, j, g), j, e % HD4);
                }
                ks[e] = kk;
            }
        }
        for (var r = 0u; r < VLOADS; r++) {
            let e = r * BQ + li;
            if (e < VTILE4) {
                let j = j0 + e / VD4;
                var vv = vec4<f32>(0.0);
                if (j < params.kv_len) {
                    vv = value4(b, j, g, e % VD4);
                }
                vs[e] = vv;
            }
        }
        workgroupBarrier();
        if (j0 < n_mine) {
            let count = min(BK, n_mine - j0);
            var p: array<f32, BK>;
            var tile_max = -3.0e38;
            for (var jj = 0u; jj < BK; jj++) {
                p[jj] = 0.0;
                if (jj < count) {
                    var s = 0.0;
                    for (var c = 0u; c < HD4; c++) {
                        s += dot(qv[c], ks[jj * HD4 + c]);
                    }
                    p[jj] = s * params.scale;
                    tile_max = max(tile_max, p[jj]);
                }
            }
            var m_new = tile_max;
            var alpha = 0.0;
            if (started) {
                m_new = max(m, tile_max);
                alpha = exp(m - m_new);
            }
            var tile_sum = 0.0;
            for (var jj = 0u; jj < BK; jj++) {
                if (jj < count) {
                    p[jj] = exp(p[jj] - m_new);
                    tile_sum += p[jj];
                }
            }
            l = l * alpha + tile_sum;
            for (var c = 0u; c < VD4; c++) {
                var t = vec4<f32>(0.0);
                for (var jj = 0u; jj < BK; jj++) {
                    t = fma(vec4<f32>(p[jj]), vs[jj * VD4 + c], t);
                }
                acc[c] = acc[c] * alpha + t;
            }
            m = m_new;
            started = true;
        }
        workgroupBarrier();
    }
    if (is_query) {
        finish_row(row, &acc, m, l);
    }
}
#else
const T: u32 = 256u;
const LANES: u32 = T / VD4;

var<workgroup> qs: array<vec4<f32>, HD4>;
var<workgroup> ps: array<f32, 256>;
var<workgroup> red: array<f32, 256>;
var<workgroup> part: array<vec4<f32>, 256>;

fn block_max(li: u32, x: f32) -> f32 {
    red[li] = x;
    workgroupBarrier();
    for (var stride = T / 2u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            red[li] = max(red[li], red[li + stride]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn block_sum(li: u32, x: f32) -> f32 {
    red[li] = x;
    workgroupBarrier();
    for (var stride = T / 2u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            red[li] = red[li] + red[li + stride];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let i = grid.wg.x;
    let h = grid.wg.y;
    let b = grid.wg.z;
    let g = h / (params.heads / params.kv_heads);
    let n = min(params.key_end, visible_keys(i));
    let row = q_row(b, i, h);
    if (li < HD4) {
        qs[li] = query4(row, i, li);
    }
    // Invocation (lane, c) accumulates dims 4c..4c+3 over keys lane, lane + LANES, ….
    let lane = li / VD4;
    let c = li % VD4;
    var m = 0.0;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    var started = params.first == 0u;
    if (started) {
        m = ml[2u * row];
        l = ml[2u * row + 1u];
        if (lane == 0u) {
            acc = out[row * VD4 + c];
        }
    }
    workgroupBarrier();
    for (var j0 = params.key_begin; j0 < n; j0 += T) {
        let j = j0 + li;
        var s = -3.0e38;
        if (j < n) {
            let kr = kv_row(b, j, g);
            var sum = 0.0;
            for (var e = 0u; e < HD4; e++) {
                sum += dot(qs[e], key4(kr, j, e));
            }
            s = sum * params.scale;
        }
        let bm = block_max(li, s);
        var m_new = bm;
        var alpha = 0.0;
        if (started) {
            m_new = max(m, bm);
            alpha = exp(m - m_new);
        }
        var p = 0.0;
        if (j < n) {
            p = exp(s - m_new);
        }
        ps[li] = p;
        // block_sum's barriers also publish ps.
        l = l * alpha + block_sum(li, p);
        if (lane < LANES) {
            let count = min(T, n - j0);
            var t = vec4<f32>(0.0);
            for (var jj = lane; jj < count; jj += LANES) {
                t = fma(vec4<f32>(ps[jj]), value4(b, j0 + jj, g, c), t);
            }
            acc = acc * alpha + t;
        }
        m = m_new;
        started = true;
        workgroupBarrier();
    }
    if (lane < LANES) {
        part[lane * VD4 + c] = acc;
    }
    workgroupBarrier();
    if (li < VD4) {
        var o = vec4<f32>(0.0);
        for (var r = 0u; r < LANES; r++) {
            o += part[r * VD4 + li];
        }
        if (params.last != 0u) {
            out[row * VD4 + li] = o / l;
        } else {
            out[row * VD4 + li] = o;
        }
    }
    if (li == 0u && params.last == 0u) {
        ml[2u * row] = m;
        ml[2u * row + 1u] = l;
    }
}
#endif
#endif
