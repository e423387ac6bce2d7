// What every attention kernel shares (attention.wgsl, attention_scores.wgsl): the uniform block,
// the head and value widths, and the row arithmetic of the layouts described in attention.wgsl.
// A shader including this declares `params` itself, with its own binding number (and includes
// attention_values to read values).

struct Params {
    queries: u32,
    heads: u32,
    kv_heads: u32,
    kv_len: u32,
    kv_capacity: u32,
    q_offset: u32,
    causal: u32,
    scale: f32,
    // The pass of the query-tiled and split-keys variants: keys key_begin..key_end, whether it is
    // the first and the last pass. The others read key_end only (all keys of the call).
    key_begin: u32,
    key_end: u32,
    first: u32,
    last: u32,
    // The stored latent row: f32 values (LATENT_F32) or words (LATENT_I8).
    value_width: u32,
    // Per-query variant: keys per chunk, chunks per row.
    chunk_keys: u32,
    chunks: u32,
    // Scores variant: this call's row blocks, vec4s per score row.
    block_begin: u32,
    blocks: u32,
    score_stride4: u32,
    _pad0: u32,
    _pad1: u32,
}

#ifdef HEAD_DIM
const HD: u32 = {{HEAD_DIM}}u;
#else
const HD: u32 = 64u;
#endif
const HD4: u32 = HD / 4u;
#ifdef VALUE_DIM
const VD: u32 = {{VALUE_DIM}}u;
#else
const VD: u32 = HD;
#endif
const VD4: u32 = VD / 4u;

// Keys visible to query i of this call.
fn visible_keys(i: u32) -> u32 {
    if (params.causal != 0u) {
        return min(params.kv_len, params.q_offset + i + 1u);
    }
    return params.kv_len;
}

// Index of the (query, head) row, in units of rows of HD.
fn q_row(b: u32, i: u32, h: u32) -> u32 {
    return (b * params.queries + i) * params.heads + h;
}

fn kv_row(b: u32, j: u32, g: u32) -> u32 {
    return (b * params.kv_capacity + j) * params.kv_heads + g;
}
