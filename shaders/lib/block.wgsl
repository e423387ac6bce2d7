// One step of a 4 x 4 register block of dot products (matmul_blocked.wgsl, and through rows_step
// qmatmul.wgsl's f32 sums and the scores of attention_scores.wgsl): given four consecutive k of a row `a` and of four columns b0..b3,
//   s[j] <- fma(a.w, bj.w, fma(a.z, bj.z, fma(a.y, bj.y, fma(a.x, bj.x, s[j])))),  j < 4,
// so each of the block's dot products is one fma chain over k ascending.
fn block_step(s: vec4<f32>, a: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    var t = fma(vec4<f32>(a.x), vec4<f32>(b0.x, b1.x, b2.x, b3.x), s);
    t = fma(vec4<f32>(a.y), vec4<f32>(b0.y, b1.y, b2.y, b3.y), t);
    t = fma(vec4<f32>(a.z), vec4<f32>(b0.z, b1.z, b2.z, b3.z), t);
    return fma(vec4<f32>(a.w), vec4<f32>(b0.w, b1.w, b2.w, b3.w), t);
}

// Eight rows of a register block as struct members, not arrays (the browser's CPU adapter keeps an
// array that a loop indexes in memory, members in registers): an index per row, a vec4 per row
// (the tokens of qmatmul.wgsl's f32-sum blocks, the queries of attention_scores.wgsl's).
struct Index8 {
    r0: u32,
    r1: u32,
    r2: u32,
    r3: u32,
    r4: u32,
    r5: u32,
    r6: u32,
    r7: u32,
}

struct Rows8 {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
    r4: vec4<f32>,
    r5: vec4<f32>,
    r6: vec4<f32>,
    r7: vec4<f32>,
}

// base + min(r, last) * stride for the rows r = 0..7: rows past `last` repeat its index (a
// repeated row redoes a real row's work and stores nothing).
fn clamped_rows(base: u32, last: u32, stride: u32) -> Index8 {
    return Index8(base, base + min(1u, last) * stride, base + min(2u, last) * stride,
        base + min(3u, last) * stride, base + min(4u, last) * stride, base + min(5u, last) * stride,
        base + min(6u, last) * stride, base + min(7u, last) * stride);
}

// block_step for each row: s + each row's four consecutive k of `a` times those of columns b0..b3.
fn rows_step(s: Rows8, a: Rows8, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> Rows8 {
    return Rows8(
        block_step(s.r0, a.r0, b0, b1, b2, b3), block_step(s.r1, a.r1, b0, b1, b2, b3),
        block_step(s.r2, a.r2, b0, b1, b2, b3), block_step(s.r3, a.r3, b0, b1, b2, b3),
        block_step(s.r4, a.r4, b0, b1, b2, b3), block_step(s.r5, a.r5, b0, b1, b2, b3),
        block_step(s.r6, a.r6, b0, b1, b2, b3), block_step(s.r7, a.r7, b0, b1, b2, b3),
    );
}
