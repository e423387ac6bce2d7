// Row normalisation of x [rows, d] (row-major):
//   layer norm (default): y = (x - mean) * inverseSqrt(var + eps) * gamma + beta, with the biased
//                         variance var = mean((x - mean)^2), computed in two passes;
//   RMS (#ifdef RMS):     y = gamma * (x * inverseSqrt(mean(x^2) + eps)).
// RESIDUAL: first x <- x + residual (one f32 add per value, written back to x), then normalise
// the sum: the residual stream's add and the next norm in one dispatch.
// QUANTIZE: then y's row also quantized for the integer product that reads it, steps 2-5 of the
// integer contract exactly as quantize.wgsl computes them (M = max |y_j| exact in any order,
// s = M * step, the integers of lib/activation.wgsl from the y values as stored): q u32 [rows,
// words], scales f32 [rows]; the norm and the quantization of its output in one dispatch.
// Layouts: one WG-invocation workgroup per row (WG a power of two, 32 to 256), each invocation
// summing a strided slice of the row and the partial sums reduced in workgroup memory (a tree,
// log2(WG) + 1 barriers per reduction, or with SUBGROUPS each subgroup's sum and the subgroups'
// sums in order, 2 barriers, lib/subgroups.wgsl); or, with PER_ROW, WG invocations each taking
// one row and summing it in order, no workgroup memory and no barriers (CPU adapters, where each
// barrier costs tens of microseconds). Rows lie on a 2-D grid (workgroup_index).

#include grid
#ifdef QUANTIZE
#include activation
#endif

struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    words: u32,
    qmax: i32,
    step: f32,
    _pad0: u32,
    _pad1: u32,
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
#ifdef QUANTIZE
// the bindings after the norm's own (QUANTIZE holds the first one's number)
@group(0) @binding({{QUANTIZE}}) var<storage, read_write> q: array<u32>;
@group(0) @binding({{QUANTIZE_SCALES}}) var<storage, read_write> scales: array<f32>;
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

const WG: u32 = {{WG}}u;

#ifdef PER_ROW

// A row's total, summed by one invocation: its own partial sum.
fn row_total(li: u32, v: f32) -> f32 {
    return v;
}

// A row's maximum, found by one invocation: its own.
fn row_max(li: u32, v: f32) -> f32 {
    return v;
}

// One invocation wrote the whole row: nothing to wait for.
fn row_written() {}
#else
#ifdef SUBGROUPS
#include subgroups

// A row's total over the workgroup's subgroups (every invocation gets it).
fn row_total(li: u32, v: f32) -> f32 {
    return subgroups_sum(v);
}

// A row's maximum over the workgroup's subgroups (exact in any order; every invocation gets it).
fn row_max(li: u32, v: f32) -> f32 {
    return subgroups_max(v);
}
#else
var<workgroup> partial: array<f32, WG>;

// A row's total, summed by the whole workgroup (every invocation gets it).
fn row_total(li: u32, v: f32) -> f32 {
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

// A row's maximum over the workgroup (exact in any order; every invocation gets it).
fn row_max(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            partial[li] = max(partial[li], partial[li + stride]);
        }
        workgroupBarrier();
    }
    let most = partial[0];
    workgroupBarrier();
    return most;
}
#endif

// Wait until every invocation's part of the row is written to y.
fn row_written() {
    storageBarrier();
}
#endif

#ifdef QUANTIZE
// Quantize row `row` of y (starting at `base`), whose values this invocation wrote at columns
// first, first + step, ... with largest magnitude `big`: this invocation packs words first,
// first + step, ... (each from its own four values as stored; lanes past d are zero).
fn quantize_row(row: u32, base: u32, first: u32, step: u32, li: u32, big: f32) {
    let s = row_max(li, big) * params.step;
    let r = inverse_scale(s);
    row_written();
    let d = params.d;
    for (var w = first; w < params.words; w += step) {
        var v = vec4<f32>(0.0);
        for (var b = 0u; b < 4u; b++) {
            if (4u * w + b < d) {
                v[b] = y[base + 4u * w + b];
            }
        }
        q[row * params.words + w] = select(0u, quantize4(v, r, params.qmax), r != 0.0);
    }
    if (first == 0u) {
        scales[row] = select(0.0, s, r != 0.0);
    }
}
#endif

// Normalise the row starting at `base`: this invocation visits columns first, first + step, ...
// and `row_total` combines the partial sums of the invocations sharing the row. Returns the
// largest |y| this invocation wrote.
fn normalize(base: u32, first: u32, step: u32, li: u32) -> f32 {
    var big = 0.0;
    let d = params.d;
    let n = f32(d);
#ifdef RMS
    var sq = 0.0;
    for (var i = first; i < d; i += step) {
        let v = first_read(base + i);
        sq = fma(v, v, sq);
    }
    let r = inverseSqrt(row_total(li, sq) / n + params.eps);
    for (var i = first; i < d; i += step) {
        let v = gamma[i] * (x[base + i] * r);
        y[base + i] = v;
        big = max(big, abs(v));
    }
#else
    var s = 0.0;
    for (var i = first; i < d; i += step) {
        s += first_read(base + i);
    }
    let mean = row_total(li, s) / n;
    var sq = 0.0;
    for (var i = first; i < d; i += step) {
        let c = x[base + i] - mean;
        sq = fma(c, c, sq);
    }
    let r = inverseSqrt(row_total(li, sq) / n + params.eps);
    for (var i = first; i < d; i += step) {
        let v = (x[base + i] - mean) * r * gamma[i] + beta[i];
        y[base + i] = v;
        big = max(big, abs(v));
    }
#endif
    return big;
}

@compute @workgroup_size(WG, 1, 1)
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
#ifdef PER_ROW
    let row = invocation_index(grid, WG, li);
    if (row >= params.rows) {
        return;
    }
    let big = normalize(row * params.d, 0u, 1u, li);
#ifdef QUANTIZE
    quantize_row(row, row * params.d, 0u, 1u, li, big);
#endif
#else
    let row = workgroup_index(grid);
    // Uniform across the workgroup, so the barriers in row_total stay in uniform control flow.
    if (row >= params.rows) {
        return;
    }
    let big = normalize(row * params.d, li, WG, li);
#ifdef QUANTIZE
    quantize_row(row, row * params.d, li, WG, li, big);
#endif
#endif
}
