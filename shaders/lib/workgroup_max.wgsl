// The maximum over a 64-invocation workgroup (quantize.wgsl WORKGROUP, rotate_quantize.wgsl).

var<workgroup> peak: array<f32, 64>;

// The largest `value` of a 64-invocation workgroup, in every invocation (max is exact in any
// order, so the result is the row's M whichever invocation saw which values).
fn workgroup_max(li: u32, value: f32) -> f32 {
    peak[li] = value;
    workgroupBarrier();
    var most = 0.0;
    for (var k = 0u; k < 64u; k++) {
        most = max(most, peak[k]);
    }
    return most;
}
