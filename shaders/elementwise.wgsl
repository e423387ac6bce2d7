// Elementwise operations, one invocation per element, 256 per workgroup, on a 2-D grid:
// element i = (wg.y * num_workgroups.x + wg.x) * 256 + local index; i >= n does nothing.
// Tensors larger than one storage binding are processed in chunks bound at offsets.
//
//   GELU:           x[i] = gelu_tanh(x[i])                          (in place)
//   SILU_MUL:       out[i] = silu(gate[i]) * up[i]
//   SILU_MUL_FUSED: out[r, c] = silu(gu[r, c]) * gu[r, width + c]    (gu is [rows, 2 * width])
//   ADD:            acc[i] = acc[i] + x[(start + i) % period]          (in place; period = length of x)

#include grid
#include silu

struct Params {
    n: u32,
    width: u32,
    start: u32,
    period: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#ifdef GELU
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
#endif
#ifdef SILU_MUL
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#endif
#ifdef SILU_MUL_FUSED
@group(0) @binding(1) var<storage, read> gu: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#endif
#ifdef ADD
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif

// 0.5 v (1 + tanh(k (v + 0.044715 v^3))) with k = sqrt(2 / pi), written as v / (1 + exp(-2 k (...))),
// which is the same function without tanh's overflow (sinh / cosh) or 1 + tanh's cancellation.
// |v| > 10 saturates exactly as f32 tanh does (exp(-2u) < 1e-37 there).
fn gelu_tanh(v: f32) -> f32 {
    if (v > 10.0) {
        return v;
    }
    if (v < -10.0) {
        return v * 0.0;
    }
    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    return v / (1.0 + exp(-2.0 * u));
}

@compute @workgroup_size(256, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let i = invocation_index(grid, 256u, li);
    if (i >= params.n) {
        return;
    }
#ifdef GELU
    x[i] = gelu_tanh(x[i]);
#endif
#ifdef SILU_MUL
    out[i] = silu(gate[i]) * up[i];
#endif
#ifdef SILU_MUL_FUSED
    let r = i / params.width;
    let c = i % params.width;
    out[i] = silu(gu[r * 2u * params.width + c]) * gu[r * 2u * params.width + params.width + c];
#endif
#ifdef ADD
    acc[i] = acc[i] + x[(params.start + i) % params.period];
#endif
}
