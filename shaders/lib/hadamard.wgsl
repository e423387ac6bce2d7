// The butterflies and signs of an online rotation (rotate.wgsl, rotate_quantize.wgsl), on vec4s
// of four neighbouring values; the contract's order of operations is described in rotate.wgsl.
// The including shader declares `table` (u32 words: the sign mask, then the core's entries).

// Bit i of the table from word `word0` (a sign, or a core entry: set = -1).
fn bit(word0: u32, i: u32) -> bool {
    return ((table[word0 + i / 32u] >> (i % 32u)) & 1u) != 0u;
}

// The butterfly (u, v) <- (u + v, u - v) on vec4 lanes.
fn bf(u: ptr<function, vec4<f32>>, v: ptr<function, vec4<f32>>) {
    let a = *u;
    let b = *v;
    *u = a + b;
    *v = a - b;
}

// The butterflies h = 1 and h = 2 inside the four consecutive values of x.
fn bf_inside(x: vec4<f32>) -> vec4<f32> {
    let y = vec4<f32>(x.x + x.y, x.x - x.y, x.z + x.w, x.z - x.w);
    return vec4<f32>(y.x + y.z, y.y + y.w, y.x - y.z, y.y - y.w);
}

// x, negated in the lanes whose bit (from bit `shift` of `bits`) is set.
fn signed4(x: vec4<f32>, bits: u32, shift: u32) -> vec4<f32> {
    let negate = ((vec4<u32>(bits) >> (vec4<u32>(shift) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u)) != vec4<u32>(0u);
    return select(x, -x, negate);
}
