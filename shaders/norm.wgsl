// Row normalisation of x [rows, d] (row-major):
//   layer norm (default): y = (x - mean) * inverseSqrt(var + eps) * gamma + beta, with the biased
//                         variance var = mean((x - mean)^2), computed in two passes;
//   RMS (#ifdef RMS):     y = gamma * (x * inverseSqrt(mean(x^2) + eps)).
// RESIDUAL: first x <- x + residual (one f32 add per value, written back to x), then normalise
// the sum: the residual stream's add and the next norm in one dispatch.
// Layouts: one 256-invocation workgroup per row, each invocation summing a strided slice of the
// row and the partial sums reduced in workgroup memory (GPUs); or, with PER_ROW, one invocation
// per row summing it in order, no workgroup memory and no barriers (CPU adapters, where each
// barrier costs tens of microseconds). Rows lie on a 2-D grid (workgroup_index).

#include grid

struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#ifdef RESIDUAL
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
#ifdef RMS
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#ifdef RESIDUAL
@group(0) @binding(4) var<storage, read> residual: array<f32>;
#endif
#else
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
#ifdef RESIDUAL
@group(0) @binding(5) var<storage, read> residual: array<f32>;
#endif
#endif

// x[i] as the norm sees it, read by the first pass over the row (with RESIDUAL: x[i] + residual[i],
// stored back; later passes read x[i], written by the same invocation).
fn first_read(i: u32) -> f32 {
#ifdef RESIDUAL
    let v = x[i] + residual[i];
    x[i] = v;
    return v;
#else
    return x[i];
#endif
}

#ifdef PER_ROW
@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = workgroup_index(wg, nwg) * 64u + li;
    if (row >= params.rows) {
        return;
    }
    let d = params.d;
    let base = row * d;
    let n = f32(d);
#ifdef RMS
    var sq = 0.0;
    for (var i = base; i < base + d; i++) {
        let v = first_read(i);
        sq = fma(v, v, sq);
    }
    let r = inverseSqrt(sq / n + params.eps);
    for (var i = 0u; i < d; i++) {
        y[base + i] = gamma[i] * (x[base + i] * r);
    }
#else
    var s = 0.0;
    for (var i = base; i < base + d; i++) {
        s += first_read(i);
    }
    let mean = s / n;
    var sq = 0.0;
    for (var i = base; i < base + d; i++) {
        let c = x[i] - mean;
        sq = fma(c, c, sq);
    }
    let r = inverseSqrt(sq / n + params.eps);
    for (var i = 0u; i < d; i++) {
        y[base + i] = (x[base + i] - mean) * r * gamma[i] + beta[i];
    }
#endif
}
#else
const WG: u32 = 256u;

var<workgroup> partial: array<f32, 256>;

// Sum of `v` over the workgroup (every invocation gets the total).
fn workgroup_sum(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            partial[li] = partial[li] + partial[li + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = workgroup_index(wg, nwg);
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    if (row >= params.rows) {
        return;
    }
    let d = params.d;
    let base = row * d;
    let n = f32(d);

#ifdef RMS
    var sq = 0.0;
    for (var i = li; i < d; i += WG) {
        let v = first_read(base + i);
        sq = fma(v, v, sq);
    }
    let r = inverseSqrt(workgroup_sum(li, sq) / n + params.eps);
    for (var i = li; i < d; i += WG) {
        y[base + i] = gamma[i] * (x[base + i] * r);
    }
#else
    var s = 0.0;
    for (var i = li; i < d; i += WG) {
        s += first_read(base + i);
    }
    let mean = workgroup_sum(li, s) / n;
    var sq = 0.0;
    for (var i = li; i < d; i += WG) {
        let c = x[base + i] - mean;
        sq = fma(c, c, sq);
    }
    let r = inverseSqrt(workgroup_sum(li, sq) / n + params.eps);
    for (var i = li; i < d; i += WG) {
        y[base + i] = (x[base + i] - mean) * r * gamma[i] + beta[i];
    }
#endif
}
#endif
