// Steps 3-5 of per-token activation quantization (quantize.wgsl, rotate_quantize.wgsl), as the
// contract (`pocketvlm_format::quant`, `ActivationQuant::quantize`) computes them:
//   s < f32 MIN_POSITIVE (0 or subnormal):  q = 0, s = 0
//   r = 1 / s                               correctly rounded (integer long division below;
//                                           WGSL's `/` allows 2.5 ULP)
//   q_j = clamp(roundTiesEven(x_j * r), -qmax, qmax), four per u32 word as i8 lanes (lane b =
//   bits 8b..8b+7, the order of dot4I8Packed).

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

// 1 / s, or 0 where s quantizes the row to zeros (s < MIN_POSITIVE, NaN included).
fn inverse_scale(s: f32) -> f32 {
    if (!(s >= MIN_NORMAL)) {
        return 0.0;
    }
    return reciprocal(s);
}

// The word of the four values `v` with reciprocal scale `r` and integer bound `qmax`.
fn quantize4(v: vec4<f32>, r: f32, qmax: i32) -> u32 {
    let limit = vec4<f32>(f32(qmax));
    let q = vec4<u32>(vec4<i32>(clamp(round(v * r), -limit, limit))) & vec4<u32>(0xffu);
    return q.x | (q.y << 8u) | (q.z << 16u) | (q.w << 24u);
}
