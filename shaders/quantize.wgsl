// Per-token symmetric activation quantization, steps 2-5 of the integer contract
// (`pocketvlm_format::quant`, `ActivationQuant::quantize`), bit-identical to the CPU reference:
//   M = max_j |x_j|                         exact
//   s = M * k                               one f32 multiply (k = f32(rho / qmax), from the host)
//   then r = 1 / s and the integers q_j as lib/activation.wgsl computes them.
// Integers are packed four per u32 word as i8 lanes (lane b = bits 8b..8b+7, the order of
// dot4I8Packed), INT4 activations included (their lanes hold -7..7); each row has `words` words
// (what the products read: `kernels::quant::activation_words`, or a latent cache's rows) and the
// lanes past `cols` are zero.
//
// Buffers: x f32 [tokens, cols]; q u32 [tokens, words]; scales f32 [tokens].
// Default: one invocation per token, no barriers (what CPU adapters run fastest; see rotate.wgsl);
// 64-invocation workgroups on a 2-D grid. With WORKGROUP (GPUs): one 64-invocation workgroup per
// token; the invocations take the columns j = li, li + 64, ... for M (their maxima meet in
// workgroup memory: max is exact in any order, so M is the same) and the words w = li, li + 64,
// ... for q (each word from its own four values, as above): the same integers and scale.

#include grid
#include activation

struct Params {
    tokens: u32,
    cols: u32,
    words: u32,
    qmax: i32,
    step: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<f32>;

// q_j of the four values of word `w` of a row starting at `base`, with reciprocal scale `r`
// (lanes past `cols` are zero).
fn quantize_word(base: u32, w: u32, r: f32) -> u32 {
    var v = vec4<f32>(0.0);
    for (var b = 0u; b < 4u; b++) {
        if (4u * w + b < params.cols) {
            v[b] = x[base + 4u * w + b];
        }
    }
    return quantize4(v, r, params.qmax);
}

#ifdef WORKGROUP
#include workgroup_max

@compute @workgroup_size(64, 1, 1)
fn main(
    grid: Grid,
    @builtin(local_invocation_index) li: u32,
#ifdef SUBGROUPS
    sg: Subgroup,
#endif
) {
#ifdef SUBGROUPS
    subgroups_enter(sg);
#endif
    let t = workgroup_index(grid);
    if (t >= params.tokens) {
        return;
    }
    let base = t * params.cols;
    var big = 0.0;
    for (var j = li; j < params.cols; j += 64u) {
        big = max(big, abs(x[base + j]));
    }
    let s = workgroup_max(li, big) * params.step;
    let r = inverse_scale(s);
    let out = t * params.words;
    for (var w = li; w < params.words; w += 64u) {
        q[out + w] = select(0u, quantize_word(base, w, r), r != 0.0);
    }
    if (li == 0u) {
        scales[t] = select(0.0, s, r != 0.0);
    }
}
#else
@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let t = invocation_index(grid, 64u, li);
    if (t >= params.tokens) {
        return;
    }
    let cols = params.cols;
    let base = t * cols;
    var big = 0.0;
    for (var j = 0u; j < cols; j++) {
        big = max(big, abs(x[base + j]));
    }
    let s = big * params.step;
    let r = inverse_scale(s);
    let out = t * params.words;
    for (var w = 0u; w < params.words; w++) {
        q[out + w] = select(0u, quantize_word(base, w, r), r != 0.0);
    }
    scales[t] = select(0.0, s, r != 0.0);
}
#endif
