// Per-token symmetric activation quantization, steps 2-5 of the integer contract
// (`pocketvlm_format::quant`, `ActivationQuant::quantize`), bit-identical to the CPU reference:
//   M = max_j |x_j|                         exact
//   s = M * k                               one f32 multiply (k = f32(rho / qmax), from the host)
//   s < f32 MIN_POSITIVE (0 or subnormal):  q = 0, s = 0
//   r = 1 / s                               correctly rounded (integer long division below;
//                                           WGSL's `/` allows 2.5 ULP)
//   q_j = clamp(roundTiesEven(x_j * r), -qmax, qmax)
// Integers are packed four per u32 word as i8 lanes (lane b = bits 8b..8b+7, the order of
// dot4I8Packed), INT4 activations included (their lanes hold -7..7); each row has `words` words
// (a multiple of 2, so an INT4 weight word's two activation words always exist) and the lanes
// past `cols` are zero.
//
// Buffers: x f32 [tokens, cols]; q u32 [tokens, words]; scales f32 [tokens].
// Default: one invocation per token, no barriers (what CPU adapters run fastest; see rotate.wgsl);
// 64-invocation workgroups on a 2-D grid. With WORKGROUP (GPUs): one 64-invocation workgroup per
// token; the invocations take the columns j = li, li + 64, ... for M (their maxima meet in
// workgroup memory: max is exact in any order, so M is the same) and the words w = li, li + 64,
// ... for q (each word from its own four values, as above): the same integers and scale.

#include grid

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

const MIN_NORMAL: f32 = 1.17549435e-38;

// The correctly rounded f32 reciprocal of a positive normal `s` below 2^126 (activation scales
// are at most max|f32| / 7 < 2^126, so 1/s is normal too). With s = ms 2^(e-23), ms the 24-bit
// significand: a power of two inverts exactly; otherwise 1/s = (2^47 / ms) 2^(-24-e), and the
// 24-bit quotient Q = floor(2^47 / ms) comes from restoring division, rounded to nearest (a tie
// would need ms to divide 2^48, i.e. a power of two).
fn reciprocal(s: f32) -> f32 {
    let bits = bitcast<u32>(s);
    let e = i32((bits >> 23u) & 0xffu) - 127;
    let ms = (bits & 0x7fffffu) | 0x800000u;
    if (ms == 0x800000u) {
        return bitcast<f32>(u32(127 - e) << 23u);
    }
    var rem = 0x800000u;
    var quotient = 0u;
    for (var i = 0u; i < 24u; i++) {
        rem = rem << 1u;
        quotient = quotient << 1u;
        if (rem >= ms) {
            rem -= ms;
            quotient |= 1u;
        }
    }
    if (2u * rem > ms) {
        quotient += 1u;
    }
    return bitcast<f32>((u32(126 - e) << 23u) | (quotient - 0x800000u));
}

// q_j of the four values of word `w` of a row starting at `base`, with reciprocal scale `r`.
fn quantize_word(base: u32, w: u32, r: f32) -> u32 {
    let limit = f32(params.qmax);
    var word = 0u;
    for (var b = 0u; b < 4u; b++) {
        let j = 4u * w + b;
        if (j < params.cols) {
            let v = i32(clamp(round(x[base + j] * r), -limit, limit));
            word |= (u32(v) & 0xffu) << (8u * b);
        }
    }
    return word;
}

#ifdef WORKGROUP
var<workgroup> peak: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = workgroup_index(wg, nwg);
    if (t >= params.tokens) {
        return;
    }
    let base = t * params.cols;
    var big = 0.0;
    for (var j = li; j < params.cols; j += 64u) {
        big = max(big, abs(x[base + j]));
    }
    peak[li] = big;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h = h >> 1u) {
        if (li < h) {
            peak[li] = max(peak[li], peak[li + h]);
        }
        workgroupBarrier();
    }
    let s = peak[0] * params.step;
    let out = t * params.words;
    let zero = !(s >= MIN_NORMAL);
    var r = 0.0;
    if (!zero) {
        r = reciprocal(s);
    }
    for (var w = li; w < params.words; w += 64u) {
        if (zero) {
            q[out + w] = 0u;
        } else {
            q[out + w] = quantize_word(base, w, r);
        }
    }
    if (li == 0u) {
        scales[t] = select(s, 0.0, zero);
    }
}
#else
@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = (workgroup_index(wg, nwg)) * 64u + li;
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
    let out = t * params.words;
    if (!(s >= MIN_NORMAL)) {
        for (var w = 0u; w < params.words; w++) {
            q[out + w] = 0u;
        }
        scales[t] = 0.0;
        return;
    }
    let r = reciprocal(s);
    for (var w = 0u; w < params.words; w++) {
        q[out + w] = quantize_word(base, w, r);
    }
    scales[t] = s;
}
#endif
