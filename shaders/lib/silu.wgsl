// SiLU, shared by elementwise.wgsl (SILU_MUL) and rotate_quantize.wgsl (SILU_MUL), so both
// compute silu(g) u with the same operations.

// v * sigmoid(v) = v / (1 + exp(-v)). Below -87 exp(-v) would overflow; the true value is
// below 2e-36 in magnitude there, and f32 PyTorch gives v / inf = -0 as well.
fn silu(v: f32) -> f32 {
    if (v < -87.0) {
        return -0.0;
    }
    return v / (1.0 + exp(-v));
}
