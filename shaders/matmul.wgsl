// Tiled f32 matrix multiply against a weight in Hugging Face's [out, in] layout:
//   y[r, col_offset + c] = sum_k x[r, k] * w[c, k]  (+ bias[col_offset + c])
// for r < m, c < n, k < k_dim. `w` may be a slice of a larger weight (rows col_offset..+n),
// bound at an offset, so weights larger than one storage binding are processed in chunks.
//
// Each 16x16 workgroup computes a 64x64 output tile; each invocation a 4x4 block. The K loop
// stages 64x16 slices of x and w in workgroup memory. Out-of-range elements load as zero.

#ifdef F16_STORAGE
enable f16;
#endif

#include grid
#include linear
#include weight

const TILE: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> xs: array<f32, 1024>; // [BK][TILE]
var<workgroup> ws: array<f32, 1024>; // [BK][TILE]

@compute @workgroup_size(16, 16, 1)
fn main(
    grid: Grid,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = grid.wg.y * TILE;
    let col0 = grid.wg.x * TILE;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }

    for (var k0 = 0u; k0 < params.k_dim; k0 += BK) {
        for (var i = 0u; i < 4u; i++) {
            let idx = li + i * 256u;
            let r = idx / BK;
            let kk = idx % BK;
            let gk = k0 + kk;
            let gr = row0 + r;
            var xv = 0.0;
            if (gr < params.m && gk < params.k_dim) {
                xv = x[gr * params.k_dim + gk];
            }
            xs[kk * TILE + r] = xv;
            let gc = col0 + r;
            var wv = 0.0;
            if (gc < params.n && gk < params.k_dim) {
                wv = weight(gc * params.k_dim + gk);
            }
            ws[kk * TILE + r] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[kk * TILE + lid.y * 4u + i];
                b[i] = ws[kk * TILE + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if (r >= params.m) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if (c < params.n) {
                var v = acc[i * 4u + j];
#ifdef BIAS
                v += bias[params.col_offset + c];
#endif
                y[r * params.ldy + params.col_offset + c] = v;
            }
        }
    }
}
