// The queries and keys of an attention kernel (see attention.wgsl) as its scores read them. The
// including shader declares `q` and `k` (and `table` with ROPE) with its own binding numbers:
// storage arrays of vec4s, or with OPERAND_TEXTURES texture_2d<u32>s.
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

// Vec4 t of the queries and of the keys: from storage, or with OPERAND_TEXTURES from textures
// holding the same f32 bits as 16-byte words (lib/texels.wgsl), rows of OPERAND_TEXTURES texels.
#ifdef OPERAND_TEXTURES
fn q4(t: u32) -> vec4<f32> {
    return texel_f32(q, t);
}

fn k4(t: u32) -> vec4<f32> {
    return texel_f32(k, t);
}
#else
fn q4(t: u32) -> vec4<f32> {
    return q[t];
}

fn k4(t: u32) -> vec4<f32> {
    return k[t];
}
#endif

#ifdef PER_QUERY
// A query row held in registers, and the key dots of the PER_QUERY variant's set of SET heads
// (attention.wgsl): each head's dot sums its vec4 products in the order of the key's vec4s as
// key_dots reads them, the same for every SET.
alias Query = ptr<function, array<vec4<f32>, HD4>>;

// s.h += q_h[c] · key vec4 `kc`, for the SET heads.
fn add_dots(s: ptr<function, vec4<f32>>, q0: Query, q1: Query, q2: Query, q3: Query, c: u32, kc: vec4<f32>) {
    (*s).x += dot((*q0)[c], kc);
    if (SET > 1u) { (*s).y += dot((*q1)[c], kc); }
    if (SET > 2u) { (*s).z += dot((*q2)[c], kc); }
    if (SET > 3u) { (*s).w += dot((*q3)[c], kc); }
}
#endif

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
        out[t] = rotated_element(q4(row * HD4 + e / 4u)[e % 4u], q4(row * HD4 + p / 4u)[p % 4u], params.q_offset + i, e);
    }
    return out;
}

// Vec4 c of key j's row `row` (kv_row(b, j, g)).
fn key4(row: u32, j: u32, c: u32) -> vec4<f32> {
    var out = vec4<f32>(0.0);
    for (var t = 0u; t < 4u; t++) {
        let e = 4u * c + t;
        let p = (e + HD / 2u) % HD;
        out[t] = rotated_element(k4(row * HD4 + e / 4u)[e % 4u], k4(row * HD4 + p / 4u)[p % 4u], j, e);
    }
    return out;
}

#ifdef PER_QUERY
// q_h · k_j for the SET query heads held (rotated) in `q0`..`q3` (component h; those past SET
// are 0 and not read), each key vec4 read once for them.
fn key_dots(q0: Query, q1: Query, q2: Query, q3: Query, row: u32, j: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    for (var c = 0u; c < HD4; c++) {
        add_dots(&s, q0, q1, q2, q3, c, key4(row, j, c));
    }
    return s;
}
#endif
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
    return rotated4(q4(base), q4(base + HD4 / 2u), params.q_offset + i, c);
#else
    return q4(row * HD4 + c);
#endif
}

// Vec4 c of key j's row `row` (kv_row(b, j, g)).
fn key4(row: u32, j: u32, c: u32) -> vec4<f32> {
#ifdef ROPE
    let base = row * HD4 + c % (HD4 / 2u);
    return rotated4(k4(base), k4(base + HD4 / 2u), j, c);
#else
    return k4(row * HD4 + c);
#endif
}

#ifdef PER_QUERY
// q_h · k_j for the SET query heads held (rotated) in `q0`..`q3` (component h; those past SET
// are 0 and not read), each key vec4 read once for them; with ROPE each pair of the key's
// halves read and rotated once (key4 reads a pair for each half).
fn key_dots(q0: Query, q1: Query, q2: Query, q3: Query, row: u32, j: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
#ifdef ROPE
    let half4 = HD4 / 2u;
    for (var c = 0u; c < half4; c++) {
        let pair = rotated_pair(k4(row * HD4 + c), k4(row * HD4 + c + half4), j, c);
        add_dots(&s, q0, q1, q2, q3, c, pair[0]);
        add_dots(&s, q0, q1, q2, q3, c + half4, pair[1]);
    }
#else
    for (var c = 0u; c < HD4; c++) {
        add_dots(&s, q0, q1, q2, q3, c, k4(row * HD4 + c));
    }
#endif
    return s;
}
#endif
#endif
