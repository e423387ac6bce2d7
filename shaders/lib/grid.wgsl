// Kernels lay their workgroups on a 2-D grid (rows of num_workgroups.x), since one dimension
// stops at 65 535 workgroups. An entry point takes its workgroup's place on the grid as one
// parameter and its index within the workgroup as another,
//   fn main(grid: Grid, @builtin(local_invocation_index) li: u32)
// and these give its indices along the flattened grid. The invocation's index stays apart:
// WGSL's uniformity analysis judges a parameter as a whole, so in one struct with it the
// workgroup's index would count as non-uniform, and a barrier after a branch on it as invalid.
struct Grid {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

// The workgroup's index along the flattened grid.
fn workgroup_index(grid: Grid) -> u32 {
    return grid.wg.y * grid.nwg.x + grid.wg.x;
}

// Invocation `li`'s index along the flattened grid, in workgroups of `size` invocations.
fn invocation_index(grid: Grid, size: u32, li: u32) -> u32 {
    return workgroup_index(grid) * size + li;
}
