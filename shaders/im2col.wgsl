// Patch extraction for a Conv2d with kernel = stride = P (no padding): pixels [tiles, C, S, S]
// (row-major f32) become rows of patches [tiles * N * N, C * P * P] with N = floor(S / P),
//   cols[(t * N + py) * N + px, (c * P + ky) * P + kx] = pixels[t, c, py * P + ky, px * P + kx],
// so that a matmul against the conv weight [D, C, P, P] (viewed as [D, C * P * P]) is the conv.
// When P does not divide S the last S - N * P pixel rows and columns are never read, as in a
// strided convolution without padding (SmolVLM-Instruct: S = 384, P = 14, N = 27).
// One invocation per output element on a 2-D grid.

#include grid

struct Params {
    n: u32,
    channels: u32,
    size: u32,
    patch_size: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> pixels: array<f32>;
@group(0) @binding(2) var<storage, read_write> cols: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let e = invocation_index(grid, 256u, li);
    if (e >= params.n) {
        return;
    }
    let p = params.patch_size;
    let side = params.size / p;
    let width = params.channels * p * p;
    let col = e % width;
    let row = e / width;
    let kx = col % p;
    let ky = (col / p) % p;
    let c = col / (p * p);
    let px = row % side;
    let py = (row / side) % side;
    let t = row / (side * side);
    cols[e] = pixels[((t * params.channels + c) * params.size + py * p + ky) * params.size + px * p + kx];
}
