// Register-blocked f32 matrix multiply for CPU adapters, the same product as matmul.wgsl:
//   y[r, col_offset + c] = sum_k x[r, k] * w[c, k]  (+ bias[col_offset + c])
// for r < m, c < n, k < k_dim (a multiple of 4), `w` in Hugging Face's [out, in] layout, possibly
// a row chunk of a larger weight bound at an offset.
//
// Each invocation computes a 4x4 block (4 rows x 4 columns) straight from storage, four k at a
// time (vec4 loads of x and of the widened weight); no workgroup memory, no barriers, which CPU
// implementations run far faster than a tiled kernel's barriers (~70 us each on SwiftShader).
// Every output is the same fma chain over k ascending, from 0, bias added last, as in
// matmul.wgsl, so both kernels give bit-identical results. Out-of-range rows and columns are
// clamped on load and skipped on store. Blocks lie on a 2-D grid of 64-invocation workgroups,
// column blocks fastest.

#ifdef F16_STORAGE
enable f16;
#endif

#include grid
#include block
#include half

#include linear

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
#ifdef F16_STORAGE
@group(0) @binding(2) var<storage, read> w: array<vec4<f16>>;
#else
#ifdef W16
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
#endif
#endif

// Weight elements 4i..4i+3, widened exactly to f32 (see lib/weight.wgsl's `weight`).
fn weight4(i: u32) -> vec4<f32> {
#ifdef F16_STORAGE
    return vec4<f32>(w[i]);
#else
#ifdef W16
    let p = w[i];
    return vec4<f32>(half_in(p.x, false), half_in(p.x, true), half_in(p.y, false), half_in(p.y, true));
#else
    return w[i];
#endif
#endif
}

@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let id = invocation_index(grid, 64u, li);
    let column_blocks = (params.n + 3u) / 4u;
    let c0 = (id % column_blocks) * 4u;
    let r0 = (id / column_blocks) * 4u;
    if (r0 >= params.m) {
        return;
    }
    let k4 = params.k_dim / 4u;
    // The block's rows and columns as separate values, not arrays a loop indexes: SwiftShader's
    // compiler keeps such an array in memory (BENCHMARKS.md, Speed XVIII).
    let xr0 = min(r0, params.m - 1u) * k4;
    let xr1 = min(r0 + 1u, params.m - 1u) * k4;
    let xr2 = min(r0 + 2u, params.m - 1u) * k4;
    let xr3 = min(r0 + 3u, params.m - 1u) * k4;
    let wr0 = min(c0, params.n - 1u) * k4;
    let wr1 = min(c0 + 1u, params.n - 1u) * k4;
    let wr2 = min(c0 + 2u, params.n - 1u) * k4;
    let wr3 = min(c0 + 3u, params.n - 1u) * k4;
    // acc_i[j]: row r0 + i, column c0 + j
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k4; kk++) {
        let b0 = weight4(wr0 + kk);
        let b1 = weight4(wr1 + kk);
        let b2 = weight4(wr2 + kk);
        let b3 = weight4(wr3 + kk);
        acc0 = block_step(acc0, x[xr0 + kk], b0, b1, b2, b3);
        acc1 = block_step(acc1, x[xr1 + kk], b0, b1, b2, b3);
        acc2 = block_step(acc2, x[xr2 + kk], b0, b1, b2, b3);
        acc3 = block_step(acc3, x[xr3 + kk], b0, b1, b2, b3);
    }
    let acc = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + i;
        if (r >= params.m) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = c0 + j;
            if (c >= params.n) {
                break;
            }
            var v = acc[i][j];
#ifdef BIAS
            v += bias[params.col_offset + c];
#endif
            y[r * params.ldy + params.col_offset + c] = v;
        }
    }
}
