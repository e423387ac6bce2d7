// Token embedding with image-feature scatter, one 256-invocation workgroup per token (2-D grid):
//   out[t, :] = table[ids[t], :]                       for text tokens,
//   out[t, :] = image[k, :]                            for the k-th token equal to image_token
//                                                      (k counts image tokens before t),
//   out[t, :] = 0                                      for ids >= vocab or k >= image_rows.
// The table may be bound in row chunks: this dispatch sees rows row0..row0 + rows and copies the
// tokens whose id falls there; the dispatch with `first` set also writes image and zero rows.

struct Params {
    tokens: u32,
    d: u32,
    row0: u32,
    rows: u32,
    vocab: u32,
    image_token: u32,
    image_rows: u32,
    first: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#ifdef IMAGE
@group(0) @binding(4) var<storage, read> image: array<f32>;

var<workgroup> image_index: atomic<u32>;
#endif

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = wg.y * nwg.x + wg.x;
    if (t >= params.tokens) {
        return;
    }
    let id = ids[t];
    let d = params.d;
    let dst = t * d;
#ifdef IMAGE
    if (params.first != 0u) {
        // k = number of image tokens among ids[0..t], counted by the whole workgroup.
        if (li == 0u) {
            atomicStore(&image_index, 0u);
        }
        workgroupBarrier();
        var count = 0u;
        for (var j = li; j < t; j += WG) {
            count += select(0u, 1u, ids[j] == params.image_token);
        }
        if (count > 0u) {
            atomicAdd(&image_index, count);
        }
        workgroupBarrier();
        let k = atomicLoad(&image_index);
        if (id == params.image_token) {
            for (var i = li; i < d; i += WG) {
                var value = 0.0;
                if (k < params.image_rows) {
                    value = image[k * d + i];
                }
                out[dst + i] = value;
            }
            return;
        }
    }
    if (id == params.image_token) {
        return;
    }
#endif
    if (id >= params.row0 && id < params.row0 + params.rows) {
        let src = (id - params.row0) * d;
        for (var i = li; i < d; i += WG) {
            out[dst + i] = table[src + i];
        }
    } else if (params.first != 0u && id >= params.vocab) {
        for (var i = li; i < d; i += WG) {
            out[dst + i] = 0.0;
        }
    }
}
