// The maximum over a 64-invocation workgroup (quantize.wgsl WORKGROUP, rotate_quantize.wgsl): max
// is exact in any order, so the result is the row's M whichever invocation saw which values.
// Each shader takes one such maximum, its last reduction: with SUBGROUPS through the subgroups
// (lib/subgroups.wgsl, one barrier; the entry point calls subgroups_enter first), else every
// invocation reads the 64 values after one barrier.

#ifdef SUBGROUPS
#include subgroups

// The largest `value` of the workgroup, in every invocation.
fn workgroup_max(li: u32, value: f32) -> f32 {
    return subgroups_max_last(value);
}
#else
var<workgroup> peak: array<f32, 64>;

// The largest `value` of the workgroup, in every invocation.
fn workgroup_max(li: u32, value: f32) -> f32 {
    peak[li] = value;
    workgroupBarrier();
    var most = 0.0;
    for (var k = 0u; k < 64u; k++) {
        most = max(most, peak[k]);
    }
    return most;
}
#endif
