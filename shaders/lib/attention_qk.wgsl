// The queries and keys of an attention kernel (see attention.wgsl) as its scores read them. The
// including shader declares `q` and `k` (and `table` with ROPE) with its own binding numbers.
//
// As stored, or with ROPE rotated on load: q and k hold the projections before RoPE, query i of
// the call sits at position q_offset + i and key j at position j (the decoder's cached keys,
// plain or from a latent, one per cached token), and each vec4 read is rotated as transformers'
// Llama does (non-interleaved, "rotate_half"; kernels/rope.rs's reference):
//   x'[e]        = x[e] * cos[e] - x[e + half] * sin[e]
//   x'[e + half] = x[e + half] * cos[e] + x[e] * sin[e]         e < half = HD / 2
// with cos/sin from table [max_positions, 2, half] read as vec4s where HD % 8 == 0 (a vec4 never
// straddles the halves), element by element otherwise (ROPE_ELEMENTS, HD % 8 == 4). A key is
// rotated once per query head reading it, which costs far less than a dispatch rotating them all
// on a CPU adapter.

#ifdef ROPE
#ifdef ROPE_ELEMENTS
// Head dims whose halves are not whole vec4s (HD % 8 == 4): every element is rotated with its
// partner in the other half read on its own.

// Element e of a row rotated to position `pos`, given it (`x`) and its partner (`y`, element
// (e + HD / 2) % HD).
fn rotated_element(x: f32, y: f32, pos: u32, e: u32) -> f32 {
    let i = e % (HD / 2u);
    let at = pos * HD + i;
    let bt = at + HD / 2u;
    let cs = table[at / 4u][at % 4u];
    let sn = table[bt / 4u][bt % 4u];
    if (e < HD / 2u) {
        return x * cs - y * sn;
    }
    return x * cs + y * sn;
}

// Vec4 c of query i's row `row` (in rows of HD).
fn query4(row: u32, i: u32, c: u32) -> vec4<f32> {
    var out = vec4<f32>(0.0);
    for (var t = 0u; t < 4u; t++) {
        let e = 4u * c + t;
        let p = (e + HD / 2u) % HD;
        out[t] = rotated_element(q[row * HD4 + e / 4u][e % 4u], q[row * HD4 + p / 4u][p % 4u], params.q_offset + i, e);
    }
    return out;
}

// Vec4 c of key j's row `row` (kv_row(b, j, g)).
fn key4(row: u32, j: u32, c: u32) -> vec4<f32> {
    var out = vec4<f32>(0.0);
    for (var t = 0u; t < 4u; t++) {
        let e = 4u * c + t;
        let p = (e + HD / 2u) % HD;
        out[t] = rotated_element(k[row * HD4 + e / 4u][e % 4u], k[row * HD4 + p / 4u][p % 4u], j, e);
    }
    return out;
}

// q · k_j for a query held in `qv` (rotated).
fn key_dot(qv: ptr<function, array<vec4<f32>, HD4>>, row: u32, j: u32) -> f32 {
    var sum = 0.0;
    for (var c = 0u; c < HD4; c++) {
        sum += dot((*qv)[c], key4(row, j, c));
    }
    return sum;
}
#else
// The vec4s c and c + HD4 / 2 (c < HD4 / 2) of a row, `a` and `b`, rotated to position `pos`.
fn rotated_pair(a: vec4<f32>, b: vec4<f32>, pos: u32, c: u32) -> array<vec4<f32>, 2> {
    let at = pos * HD4 + c;
    let cs = table[at];
    let sn = table[at + HD4 / 2u];
    return array<vec4<f32>, 2>(a * cs - b * sn, b * cs + a * sn);
}

// Vec4 c of a row rotated to position `pos`, given the row's vec4s c % (HD4 / 2) (`lo`) and
// c % (HD4 / 2) + HD4 / 2 (`hi`).
fn rotated4(lo: vec4<f32>, hi: vec4<f32>, pos: u32, c: u32) -> vec4<f32> {
    let pair = rotated_pair(lo, hi, pos, c % (HD4 / 2u));
    return select(pair[0], pair[1], c >= HD4 / 2u);
}
#endif
#endif

#ifndef ROPE_ELEMENTS
// Vec4 c of query i's row `row` (in rows of HD).
fn query4(row: u32, i: u32, c: u32) -> vec4<f32> {
#ifdef ROPE
    let base = row * HD4 + c % (HD4 / 2u);
    return rotated4(q[base], q[base + HD4 / 2u], params.q_offset + i, c);
#else
    return q[row * HD4 + c];
#endif
}

// Vec4 c of key j's row `row` (kv_row(b, j, g)).
fn key4(row: u32, j: u32, c: u32) -> vec4<f32> {
#ifdef ROPE
    let base = row * HD4 + c % (HD4 / 2u);
    return rotated4(k[base], k[base + HD4 / 2u], j, c);
#else
    return k[row * HD4 + c];
#endif
}

// q · k_j for a query held in `qv` (rotated), with ROPE each pair of the key's halves read and
// rotated once (key4 reads a pair for each half).
fn key_dot(qv: ptr<function, array<vec4<f32>, HD4>>, row: u32, j: u32) -> f32 {
    var sum = 0.0;
#ifdef ROPE
    let half4 = HD4 / 2u;
    for (var c = 0u; c < half4; c++) {
        let pair = rotated_pair(k[row * HD4 + c], k[row * HD4 + c + half4], j, c);
        sum += dot((*qv)[c], pair[0]);
        sum += dot((*qv)[c + half4], pair[1]);
    }
#else
    for (var c = 0u; c < HD4; c++) {
        sum += dot((*qv)[c], k[row * HD4 + c]);
    }
#endif
    return sum;
}
#endif
