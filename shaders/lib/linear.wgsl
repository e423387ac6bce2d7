// The float linear kernels' (matmul.wgsl, matmul_blocked.wgsl, matvec.wgsl) uniform block and
// output bindings: y[r, col_offset + c] for r < m, c < n (row stride ldy) from x [m, k_dim] and a
// weight's rows col_offset..col_offset+n, plus bias [.., n] with BIAS. The kernel declares x (1)
// and w (2) itself, as scalars or four at a time.

struct Params {
    m: u32,
    n: u32,
    k_dim: u32,
    ldy: u32,
    col_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#ifdef BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
