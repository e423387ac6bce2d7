// Workgroup-wide reductions through subgroups (SUBGROUPS: the device has them). Each subgroup
// reduces its invocations' values with one subgroup operation; its invocation 0 leaves the result
// in the subgroup's slot of workgroup memory; after one barrier every invocation combines the
// slots in subgroup order, and a second barrier frees them for the next reduction (none after a
// workgroup's last one). A tree in workgroup memory takes log2(W) + 1 barriers for W
// invocations; this takes two, or one.
//   sum: subgroupAdd in the device's order, then the slots left to right (a float sum in another
//        order than the tree's: callers hold it to a bound);
//   max: exact in any order.
// WebGPU's subgroups hold 4 to 128 invocations, so a workgroup of at most 256 has at most 64.
// The entry point takes a `Subgroup` argument and calls subgroups_enter with it first.

struct Subgroup {
    @builtin(subgroup_id) id: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(num_subgroups) count: u32,
    @builtin(subgroup_size) size: u32,
}

var<private> subgroup: Subgroup;
var<workgroup> subgroup_slots: array<f32, 64>;

fn subgroups_enter(s: Subgroup) {
    subgroup = s;
}

// Every subgroup's `part` (its invocation 0's) combined in subgroup order: summed with `add`,
// else the largest; in every invocation, after one barrier (the slots stay as they are).
fn subgroups_combine(part: f32, add: bool) -> f32 {
    if (subgroup.lane == 0u) {
        subgroup_slots[subgroup.id] = part;
    }
    workgroupBarrier();
    var all = subgroup_slots[0];
    for (var k = 1u; k < subgroup.count; k++) {
        let next = subgroup_slots[k];
        all = select(max(all, next), all + next, add);
    }
    return all;
}

// The sum of `v` over the workgroup, in every invocation.
fn subgroups_sum(v: f32) -> f32 {
    let total = subgroups_combine(subgroupAdd(v), true);
    workgroupBarrier();
    return total;
}

// The largest `v` of the workgroup, in every invocation.
fn subgroups_max(v: f32) -> f32 {
    let most = subgroups_max_last(v);
    workgroupBarrier();
    return most;
}

// subgroups_max for a workgroup's last reduction: no barrier after it.
fn subgroups_max_last(v: f32) -> f32 {
    return subgroups_combine(subgroupMax(v), false);
}
