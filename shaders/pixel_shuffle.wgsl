// The Idefics3 connector's pixel shuffle (space-to-depth): x [tiles, W * W, D] becomes
// y [tiles, (W / s)^2, s * s * D] with
//   y[t, I * (W / s) + J, (dy * s + dx) * D + d] = x[t, (I * s + dy) * W + J * s + dx, d].
// One invocation per output element on a 2-D grid.

#include grid

struct Params {
    n: u32,
    side: u32,
    d: u32,
    scale: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let e = invocation_index(grid, 256u, li);
    if (e >= params.n) {
        return;
    }
    let s = params.scale;
    let d_all = params.d;
    let out_side = params.side / s;
    let width = s * s * d_all;
    let c = e % width;
    let token = (e / width) % (out_side * out_side);
    let t = e / (width * out_side * out_side);
    let d = c % d_all;
    let dx = (c / d_all) % s;
    let dy = c / (s * d_all);
    let row = token / out_side;
    let col = token % out_side;
    let src = (row * s + dy) * params.side + col * s + dx;
    y[e] = x[(t * params.side * params.side + src) * d_all + d];
}
