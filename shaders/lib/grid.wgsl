// Kernels lay their workgroups on a 2-D grid (rows of num_workgroups.x), since one dimension
// stops at 65 535 workgroups; this is the workgroup's index along the flattened grid.
fn workgroup_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y * nwg.x + wg.x;
}
