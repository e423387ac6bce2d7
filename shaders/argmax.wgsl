// Row-wise argmax: idx[r] = the first index of the largest value of x[r, 0..n] (torch.argmax
// semantics: NaN counts as the largest value, ties go to the lowest index). One 256-invocation
// workgroup per row: strided scan, then a tree reduction in workgroup memory (9 barriers), or with
// SUBGROUPS a butterfly within each subgroup (subgroupShuffleXor over its power-of-two size),
// the subgroups' winners in workgroup memory, and invocation 0 picking among them in order (one
// barrier). `better` is a total order (ties broken by index), so every order of comparisons picks
// the same element.

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
// An index no element has: the invocation saw no element, and it loses every comparison.
const NONE: u32 = 0xffffffffu;

#ifdef SUBGROUPS
#include subgroups
var<workgroup> best_value: array<f32, 64>;
var<workgroup> best_index: array<u32, 64>;
#else
var<workgroup> best_value: array<f32, 256>;
var<workgroup> best_index: array<u32, 256>;
#endif

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

// Whether (vo, io) replaces the best so far (vb, ib), either of which may be NONE.
fn replaces(vo: f32, io: u32, vb: f32, ib: u32) -> bool {
    return io != NONE && (ib == NONE || better(vo, io, vb, ib));
}

@compute @workgroup_size(256, 1, 1)
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
    let row = workgroup_index(grid);
    if (row >= params.rows) {
        return;
    }
    let base = row * params.n;
    var bv = 0.0;
    var bi = NONE;
    for (var i = li; i < params.n; i += WG) {
        let v = x[base + i];
        if (replaces(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
#ifdef SUBGROUPS
    for (var m = 1u; m < subgroup.size; m = m * 2u) {
        let vo = subgroupShuffleXor(bv, m);
        let io = subgroupShuffleXor(bi, m);
        if (replaces(vo, io, bv, bi)) {
            bv = vo;
            bi = io;
        }
    }
    if (subgroup.lane == 0u) {
        best_value[subgroup.id] = bv;
        best_index[subgroup.id] = bi;
    }
    workgroupBarrier();
    if (li == 0u) {
        bv = best_value[0];
        bi = best_index[0];
        for (var k = 1u; k < subgroup.count; k++) {
            if (replaces(best_value[k], best_index[k], bv, bi)) {
                bv = best_value[k];
                bi = best_index[k];
            }
        }
        idx[row] = bi;
    }
#else
    best_value[li] = bv;
    best_index[li] = bi;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            let vo = best_value[li + stride];
            let io = best_index[li + stride];
            if (replaces(vo, io, best_value[li], best_index[li])) {
                best_value[li] = vo;
                best_index[li] = io;
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        idx[row] = best_index[0];
    }
#endif
}
