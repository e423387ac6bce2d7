// Attention with materialised scores, for CPU adapters and many queries (vision, prefill): the
// same product as attention.wgsl,
//   out[b, i, h, :] = sum_j p_ij * v_j,   p_ij = exp(s_ij - m_i) / l_i,
//   s_ij = scale * q[b, i, h, :] . k[b, j, g, :],   m_i = max_j s_ij,   l_i = sum_j exp(s_ij - m_i)
// over the keys visible to query i, as three register-blocked stages with no workgroup memory and
// no barriers (each costs ~70 us on SwiftShader), the way matmul_blocked.wgsl does a matmul:
//   STAGE_SCORES  one invocation per 8 queries x 8 keys of a head: 64 scores, each an fma chain
//                 over the head dimension (ascending) times the scale;
//   STAGE_SOFTMAX one invocation per query row: max, exp(s - m) summed in blocks of 64 keys
//                 (16 vec4 terms per lane, then the blocks, then the 4 lanes), then p = e / l;
//                 keys past the row's visible ones get p = 0;
//   STAGE_VALUES  one invocation per 8 queries x 8 values: sum_j p_ij v_j in blocks of 64 keys
//                 (an fma chain per block, then the blocks added).
// Every sum is blocked (no chain longer than 64 terms plus one term per 64 keys), so the error
// bound of attention.wgsl's variants holds here too. Each load of an invocation serves all of its
// queries or keys: per vec4 of the head dimension the scores stage reads 8 query and 8 key vec4s
// for 256 fmas, per key the values stage reads 2 value vec4s for its 8 queries (on SwiftShader
// 8 x 8 blocks ran both stages ~1.4x faster than 4 x 4 and 4 x 16 blocks; 8 x 16 ran slower,
// spilling). The queries, keys and sums are members of structs and every loop over them is
// written out: SwiftShader keeps an array indexed in a loop in memory (these stages ran 1.8x
// slower), and lavapipe's LLVM compiles the structs' code faster than it did loops over arrays
// of sums (BENCHMARKS.md, Speed XIX). One form for every adapter.
//
// Queries are taken 8 at a time per (batch, head) plane: row block rb covers queries
// 8 (rb % QB) .. +7 of plane rb / QB = b * heads + h, QB = ceil(queries / 8), so an invocation's
// 8 queries share one key head. One call of the three stages covers row blocks
// block_begin .. block_begin + blocks (the host splits the planes so the score buffer fits a
// binding): scores[(8 lb + r) * score_stride4 + c] holds keys 4c..4c+3 of row r of local block
// lb, score_stride4 = ceil(key_end / 4) vec4s (key_end = the keys any query of the call sees).
// Values are per-head rows or a shared latent (lib/attention.wgsl's value4).
//
// With OPERAND_TEXTURES (CPU adapters) the scores stage reads the queries and keys, and the values
// stage per-head values, from textures holding one batch element's rows (lib/texels.wgsl): the
// call covers that element's planes only, and those operands' rows are counted from it
// (operand_batch). The same bits and the same arithmetic: results identical to storage.

#include grid
#include block

#include attention
#ifdef OPERAND_TEXTURES
#include texels
#endif

@group(0) @binding(0) var<uniform> params: Params;
#ifdef STAGE_SCORES
#ifdef OPERAND_TEXTURES
@group(0) @binding(1) var q: texture_2d<u32>;
@group(0) @binding(2) var k: texture_2d<u32>;
#else
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
#endif
#include attention_qk
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
#ifdef OPERAND_TEXTURES
@group(0) @binding(2) var v: texture_2d<u32>;
#else
@group(0) @binding(2) var<storage, read> v: array<vec4<f32>>;
#endif
#endif
#endif
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
#ifdef LATENT_I8
@group(0) @binding(4) var<storage, read> vscale: array<f32>;
#endif
#endif

// Queries per row block (encode_scores' SCORE_ROWS): lib/block.wgsl's Index8 and Rows8 write its
// 8 out.
const ROWS: u32 = 8u;

// Keys 64 at a time (16 vec4s) per block of a blocked sum.
const SUM_BLOCK4: u32 = 16u;

// The row block of this call's local block lb: (b, h, first query).
struct Block {
    b: u32,
    h: u32,
    i0: u32,
}

fn row_block(lb: u32) -> Block {
    let qb = (params.queries + ROWS - 1u) / ROWS;
    let rb = params.block_begin + lb;
    let plane = rb / qb;
    return Block(plane / params.heads, plane % params.heads, (rb % qb) * ROWS);
}

// The batch element the stage's operands count rows from: 0 with OPERAND_TEXTURES (the textures
// hold only the call's element b), else b.
fn operand_batch(b: u32) -> u32 {
#ifdef OPERAND_TEXTURES
    return 0u;
#else
    return b;
#endif
}

// Keys the block's last query sees (the most of its 8, since visibility grows with i).
fn block_keys(blk: Block) -> u32 {
    return visible_keys(min(blk.i0 + ROWS - 1u, params.queries - 1u));
}

// base + stride * r for the block's rows r (queries i0 + r), r clamped to the last query's (a
// clamped row repeats its work and stores nothing): the block's query indices (base i0, stride
// 1) or the offsets of its score rows.
fn block_rows(blk: Block, base: u32, stride: u32) -> Index8 {
    return clamped_rows(base, params.queries - 1u - blk.i0, stride);
}

#ifdef STAGE_SCORES
// Vec4s of score rows per invocation: its keys are KEY_QUADS quads (8 keys), written out in
// `main` (encode_scores' SCORE_KEY_QUADS).
const KEY_QUADS: u32 = 2u;

// Keys 4c..4c+3 of kv head g: each key's index (clamped to the last key of the call; clamped
// keys' scores lie past every row's visible keys) and row.
struct KeyQuad {
    j: vec4<u32>,
    row: vec4<u32>,
}

fn key_quad(b: u32, g: u32, c: u32) -> KeyQuad {
    let j = min(vec4<u32>(4u * c) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.key_end - 1u));
    return KeyQuad(j, vec4<u32>(kv_row(b, j.x, g), kv_row(b, j.y, g), kv_row(b, j.z, g), kv_row(b, j.w, g)));
}

// Vec4 d of the block's queries (the query indices i and their rows qr).
fn queries4(i: Index8, qr: Index8, d: u32) -> Rows8 {
    return Rows8(query4(qr.r0, i.r0, d), query4(qr.r1, i.r1, d), query4(qr.r2, i.r2, d), query4(qr.r3, i.r3, d),
        query4(qr.r4, i.r4, d), query4(qr.r5, i.r5, d), query4(qr.r6, i.r6, d), query4(qr.r7, i.r7, d));
}

// acc + each query's vec4 d (x) times vec4 d of the quad's four keys (read here), per key.
fn quad_scores(acc: Rows8, x: Rows8, kq: KeyQuad, d: u32) -> Rows8 {
    let k0 = key4(kq.row.x, kq.j.x, d);
    let k1 = key4(kq.row.y, kq.j.y, d);
    let k2 = key4(kq.row.z, kq.j.z, d);
    let k3 = key4(kq.row.w, kq.j.w, d);
    return rows_step(acc, x, k0, k1, k2, k3);
}

// The block's scores of key quad c (past the rows' vec4s: nothing), scaled, into its 8 rows from
// `row0` (rows of clamped queries are the block's own, never read).
fn store_scores(row0: u32, stride4: u32, c: u32, acc: Rows8) {
    if (c >= stride4) {
        return;
    }
    let at = row0 + c;
    scores[at] = acc.r0 * params.scale;
    scores[at + stride4] = acc.r1 * params.scale;
    scores[at + 2u * stride4] = acc.r2 * params.scale;
    scores[at + 3u * stride4] = acc.r3 * params.scale;
    scores[at + 4u * stride4] = acc.r4 * params.scale;
    scores[at + 5u * stride4] = acc.r5 * params.scale;
    scores[at + 6u * stride4] = acc.r6 * params.scale;
    scores[at + 7u * stride4] = acc.r7 * params.scale;
}
#endif

#ifdef STAGE_VALUES
// Value vec4s per invocation (encode_scores' SCORE_VALUE_COLUMNS), written out in `main`.
const VALUE_COLUMNS: u32 = 2u;

// part + sum_k p[k] v_k for one query's probabilities p of four keys and their values v0..v3:
// an fma chain in key order.
fn weigh(part: vec4<f32>, p: vec4<f32>, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(p.w), v3, fma(vec4<f32>(p.z), v2, fma(vec4<f32>(p.y), v1, fma(vec4<f32>(p.x), v0, part))));
}

// weigh for every query of the block: p holds their probabilities of the four keys.
fn weigh_rows(part: Rows8, p: Rows8, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> Rows8 {
    return Rows8(weigh(part.r0, p.r0, v0, v1, v2, v3), weigh(part.r1, p.r1, v0, v1, v2, v3),
        weigh(part.r2, p.r2, v0, v1, v2, v3), weigh(part.r3, p.r3, v0, v1, v2, v3),
        weigh(part.r4, p.r4, v0, v1, v2, v3), weigh(part.r5, p.r5, v0, v1, v2, v3),
        weigh(part.r6, p.r6, v0, v1, v2, v3), weigh(part.r7, p.r7, v0, v1, v2, v3));
}

// a + b, per query.
fn add_rows(a: Rows8, b: Rows8) -> Rows8 {
    return Rows8(a.r0 + b.r0, a.r1 + b.r1, a.r2 + b.r2, a.r3 + b.r3, a.r4 + b.r4, a.r5 + b.r5, a.r6 + b.r6, a.r7 + b.r7);
}

// Vec4 c of the score rows pr (probabilities of keys 4c..4c+3), per query.
fn probs(pr: Index8, c: u32) -> Rows8 {
    return Rows8(scores[pr.r0 + c], scores[pr.r1 + c], scores[pr.r2 + c], scores[pr.r3 + c],
        scores[pr.r4 + c], scores[pr.r5 + c], scores[pr.r6 + c], scores[pr.r7 + c]);
}

// Keys 4c..4c+3 (clamped to the block's last visible key n - 1: past a row's keys its p is 0)
// and each key's row scale, read once for the invocation's value columns.
struct ValueKeys {
    j: vec4<u32>,
    s: vec4<f32>,
}

fn value_keys(b: u32, c: u32, n: u32) -> ValueKeys {
    let j = min(vec4<u32>(4u * c) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(n - 1u));
    let s = vec4<f32>(value_scale(b, j.x), value_scale(b, j.y), value_scale(b, j.z), value_scale(b, j.w));
    return ValueKeys(j, s);
}

// part + the four keys' value vec4 column `col` weighted by their probabilities p, per query.
fn column_step(part: Rows8, p: Rows8, b: u32, g: u32, keys: ValueKeys, col: u32) -> Rows8 {
    return weigh_rows(part, p, value4_scaled(b, keys.j.x, g, col, keys.s.x),
        value4_scaled(b, keys.j.y, g, col, keys.s.y), value4_scaled(b, keys.j.z, g, col, keys.s.z),
        value4_scaled(b, keys.j.w, g, col, keys.s.w));
}

// Row r's sum x of value vec4 column col into `out`, if the block has query i0 + r.
fn store_value(blk: Block, r: u32, col: u32, x: vec4<f32>) {
    let i = blk.i0 + r;
    if (i < params.queries) {
        out[q_row(blk.b, i, blk.h) * VD4 + col] = x;
    }
}

// The block's sums of value vec4 column `col` into `out` (only existing queries and columns).
fn store_column(blk: Block, col: u32, acc: Rows8) {
    if (col >= VD4) {
        return;
    }
    store_value(blk, 0u, col, acc.r0);
    store_value(blk, 1u, col, acc.r1);
    store_value(blk, 2u, col, acc.r2);
    store_value(blk, 3u, col, acc.r3);
    store_value(blk, 4u, col, acc.r4);
    store_value(blk, 5u, col, acc.r5);
    store_value(blk, 6u, col, acc.r6);
    store_value(blk, 7u, col, acc.r7);
}
#endif

@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let item = invocation_index(grid, 64u, li);
    let stride4 = params.score_stride4;
#ifdef STAGE_SCORES
    // item = (local block lb, key group kg of KEY_QUADS vec4s), key groups fastest.
    let groups = (stride4 + KEY_QUADS - 1u) / KEY_QUADS;
    if (item >= params.blocks * groups) {
        return;
    }
    let lb = item / groups;
    let kg = item % groups;
    let blk = row_block(lb);
    let c0 = KEY_QUADS * kg; // the group's first vec4 of scores (keys 4 c0 ..)
    if (4u * c0 >= block_keys(blk)) {
        return; // above the causal diagonal of all 8 queries: never read
    }
    let g = blk.h / (params.heads / params.kv_heads);
    let qi = block_rows(blk, blk.i0, 1u);
    let ob = operand_batch(blk.b);
    let qr = Index8(q_row(ob, qi.r0, blk.h), q_row(ob, qi.r1, blk.h), q_row(ob, qi.r2, blk.h),
        q_row(ob, qi.r3, blk.h), q_row(ob, qi.r4, blk.h), q_row(ob, qi.r5, blk.h),
        q_row(ob, qi.r6, blk.h), q_row(ob, qi.r7, blk.h));
    let k0 = key_quad(ob, g, c0);
    let k1 = key_quad(ob, g, c0 + 1u);
    var acc0 = Rows8(); // the 8 queries' scores of key quad c0
    var acc1 = Rows8();
    for (var d = 0u; d < HD4; d++) {
        let x = queries4(qi, qr, d);
        acc0 = quad_scores(acc0, x, k0, d);
        acc1 = quad_scores(acc1, x, k1, d);
    }
    let row0 = ROWS * lb * stride4;
    store_scores(row0, stride4, c0, acc0);
    store_scores(row0, stride4, c0 + 1u, acc1);
#endif
#ifdef STAGE_SOFTMAX
    // item = local row ROWS lb + r.
    if (item >= ROWS * params.blocks) {
        return;
    }
    let blk = row_block(item / ROWS);
    let i = blk.i0 + item % ROWS;
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
    // item = (local block lb, column block cb of VALUE_COLUMNS vec4s), column blocks fastest.
    let cbs = (VD4 + VALUE_COLUMNS - 1u) / VALUE_COLUMNS;
    if (item >= params.blocks * cbs) {
        return;
    }
    let lb = item / cbs;
    let cb = item % cbs;
    let blk = row_block(lb);
    let g = blk.h / (params.heads / params.kv_heads);
    let n = block_keys(blk);
    let n4 = (n + 3u) / 4u;
    let pr = block_rows(blk, ROWS * lb * stride4, stride4); // score rows
    // value vec4 columns (clamped to VD4)
    let col0 = min(VALUE_COLUMNS * cb, VD4 - 1u);
    let col1 = min(VALUE_COLUMNS * cb + 1u, VD4 - 1u);
    var acc0 = Rows8(); // the 8 queries' sums of value vec4 column col0
    var acc1 = Rows8();
    for (var c0 = 0u; c0 < n4; c0 += SUM_BLOCK4) {
        var part0 = Rows8();
        var part1 = Rows8();
        for (var c = c0; c < min(c0 + SUM_BLOCK4, n4); c++) {
            let keys = value_keys(blk.b, c, n);
            let p = probs(pr, c);
            part0 = column_step(part0, p, operand_batch(blk.b), g, keys, col0);
            part1 = column_step(part1, p, operand_batch(blk.b), g, keys, col1);
        }
        acc0 = add_rows(acc0, part0);
        acc1 = add_rows(acc1, part1);
    }
    store_column(blk, VALUE_COLUMNS * cb, acc0);
    store_column(blk, VALUE_COLUMNS * cb + 1u, acc1);
#endif
}
