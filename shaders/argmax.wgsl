// Row-wise argmax: idx[r] = the first index of the largest value of x[r, 0..n] (torch.argmax
// semantics: NaN counts as the largest value, ties go to the lowest index). One 256-invocation
// workgroup per row: strided scan, then a tree reduction in workgroup memory.

#include grid

struct Params {
    rows: u32,
    n: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<u32>;

const WG: u32 = 256u;

var<workgroup> best_value: array<f32, 256>;
var<workgroup> best_index: array<u32, 256>;

// NaN test on the bits (compilers may assume floats are never NaN).
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Whether (va, ia) beats (vb, ib).
fn better(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    let na = is_nan(va);
    let nb = is_nan(vb);
    if (na || nb) {
        return na && (!nb || ia < ib);
    }
    return va > vb || (va == vb && ia < ib);
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = workgroup_index(wg, nwg);
    if (row >= params.rows) {
        return;
    }
    let base = row * params.n;
    // Invocations without elements hold an index no real element has, which loses every tie.
    var bv = 0.0;
    var bi = 0xffffffffu;
    for (var i = li; i < params.n; i += WG) {
        let v = x[base + i];
        if (bi == 0xffffffffu || better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    best_value[li] = bv;
    best_index[li] = bi;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            let vo = best_value[li + stride];
            let io = best_index[li + stride];
            let mine = best_index[li];
            if (io != 0xffffffffu && (mine == 0xffffffffu || better(vo, io, best_value[li], mine))) {
                best_value[li] = vo;
                best_index[li] = io;
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        idx[row] = best_index[0];
    }
}
