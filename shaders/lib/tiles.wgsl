// The column tiles of a quantized weight (`QuantWeightsGpu`, `kernels::quant::tile`): columns in
// quads (four columns, one vec4<u32> per word), quads in tiles of TILE_QUADS, each tile stored
// whole — word 0 of its quads, then word 1, ... — and the last tile holding the quads left over.
// A run of neighbouring invocations (a CPU adapter's SIMD lanes, a GPU's subgroup) reading word k
// of neighbouring quads reads one contiguous piece, and walking k onwards continues it: every
// tile is one sequential stream.
const TILE_QUADS: u32 = {{TILE_QUADS}}u;

// Where quad `cq`'s words start (in vec4<u32>, word 0) and how far apart its consecutive words
// lie, for a weight of `quads` quads and `ww` words per column: word k at start + k * step.
fn quad_words(cq: u32, quads: u32, ww: u32) -> vec2<u32> {
    let first = cq - cq % TILE_QUADS;
    let step = min(TILE_QUADS, quads - first);
    return vec2<u32>(first * ww + (cq - first), step);
}

// The 16-byte word i of the bound columns' tiled words, from the including kernel's binding `w`:
// an array<vec4<u32>> bound at those columns, or with WEIGHT_TEXTURE a texture_2d<u32> holding
// the whole weight (`TiledWords::Texture`: texel t, row-major, TEXTURE_WIDTH texels a row, is the
// 16-byte word t; a weight of fewer texels is one narrower row, where t < TEXTURE_WIDTH lands
// too) whose bound columns begin at texel `params.w_first`. CPU adapters fetch texels
// with vector gathers, where llvmpipe loads storage buffers one lane at a time.
#ifdef WEIGHT_TEXTURE
const TEXTURE_WIDTH: u32 = {{TEXTURE_WIDTH}}u;
#endif

fn weight_word(i: u32) -> vec4<u32> {
#ifdef WEIGHT_TEXTURE
    let t = params.w_first + i;
    return textureLoad(w, vec2<u32>(t % TEXTURE_WIDTH, t / TEXTURE_WIDTH), 0);
#else
    return w[i];
#endif
}
