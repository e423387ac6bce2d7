// One step of a 4 x 4 register block of dot products (matmul_blocked.wgsl, the scores of
// attention_scores.wgsl): given four consecutive k of a row `a` and of four columns b0..b3,
//   s[j] <- fma(a.w, bj.w, fma(a.z, bj.z, fma(a.y, bj.y, fma(a.x, bj.x, s[j])))),  j < 4,
// so each of the block's dot products is one fma chain over k ascending.
fn block_step(s: vec4<f32>, a: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    var t = fma(vec4<f32>(a.x), vec4<f32>(b0.x, b1.x, b2.x, b3.x), s);
    t = fma(vec4<f32>(a.y), vec4<f32>(b0.y, b1.y, b2.y, b3.y), t);
    t = fma(vec4<f32>(a.z), vec4<f32>(b0.z, b1.z, b2.z, b3.z), t);
    return fma(vec4<f32>(a.w), vec4<f32>(b0.w, b1.w, b2.w, b3.w), t);
}
