// Matrix-vector product for a few rows (decode), against a weight in [out, in] layout:
//   y[r, col_offset + c] = sum_k x[r, k] * w[c, k]  (+ bias[col_offset + c])
// for r < ROWS (compile-time, 1..=4), c < n. Same bindings and Params as matmul.wgsl; `w` may be
// a row chunk of a larger weight bound at an offset.
//
// Default: each 256-invocation workgroup computes 8 output columns, 32 invocations per column:
// each invocation sums a strided slice of k (consecutive invocations read consecutive weights),
// then the 32 partial sums are reduced in workgroup memory.
// PER_COLUMN (CPU adapters: lavapipe, SwiftShader): each invocation computes one whole column
// with no workgroup memory and no barriers, 256 columns per workgroup. CPU implementations run
// barriers slowly (on SwiftShader the default variant is ~10-100x slower for a 49280-column
// lm_head), while their invocations are SIMD slots for which one row per slot costs nothing.
// Workgroups lie on a 2-D grid.

#ifdef F16_STORAGE
enable f16;
#endif

#include grid
#include linear
#include weight

#ifdef ROWS
const ROWS: u32 = {{ROWS}}u;
#else
const ROWS: u32 = 1u;
#endif
#ifdef PER_COLUMN
@compute @workgroup_size(256, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let c = invocation_index(grid, 256u, li);
    if (c >= params.n) {
        return;
    }
    let k_dim = params.k_dim;
    var acc: array<f32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        acc[r] = 0.0;
    }
    let wb = c * k_dim;
    for (var kk = 0u; kk < k_dim; kk++) {
        let wv = weight(wb + kk);
        for (var r = 0u; r < ROWS; r++) {
            acc[r] = fma(x[r * k_dim + kk], wv, acc[r]);
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        var v = acc[r];
#ifdef BIAS
        v += bias[params.col_offset + c];
#endif
        y[r * params.ldy + params.col_offset + c] = v;
    }
}
#else
const COLS: u32 = 8u;
const LANES: u32 = 32u;

var<workgroup> partial: array<f32, 256 * ROWS>;

@compute @workgroup_size(256, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let lane = li % LANES;
    let c = workgroup_index(grid) * COLS + li / LANES;
    let k_dim = params.k_dim;
    var acc: array<f32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        acc[r] = 0.0;
    }
    if (c < params.n) {
        let wb = c * k_dim;
        for (var kk = lane; kk < k_dim; kk += LANES) {
            let wv = weight(wb + kk);
            for (var r = 0u; r < ROWS; r++) {
                acc[r] = fma(x[r * k_dim + kk], wv, acc[r]);
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        partial[r * 256u + li] = acc[r];
    }
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            for (var r = 0u; r < ROWS; r++) {
                partial[r * 256u + li] = partial[r * 256u + li] + partial[r * 256u + li + stride];
            }
        }
        workgroupBarrier();
    }
    if (lane == 0u && c < params.n) {
        for (var r = 0u; r < ROWS; r++) {
            var v = partial[r * 256u + li];
#ifdef BIAS
            v += bias[params.col_offset + c];
#endif
            y[r * params.ldy + params.col_offset + c] = v;
        }
    }
}
#endif
