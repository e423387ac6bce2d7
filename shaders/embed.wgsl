// Token embedding with image-feature scatter (the table f32, bf16, f16, INT8 or INT4, see `entry`), one 256-invocation workgroup per token (2-D grid):
//   out[t, :] = table[ids[t], :]                       for text tokens,
//   out[t, :] = image[k, :]                            for the k-th token equal to image_token
//                                                      (k counts image tokens before t),
//   out[t, :] = 0                                      for ids >= vocab or k >= image_rows.
// The table may be bound in row chunks: this dispatch sees rows row0..row0 + rows and copies the
// tokens whose id falls there; the dispatch with `first` set also writes image and zero rows.

#include grid
#include half
#include int

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
#ifdef TABLE_F32
@group(0) @binding(2) var<storage, read> table: array<f32>;
#else
@group(0) @binding(2) var<storage, read> table: array<u32>;
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#ifdef IMAGE
@group(0) @binding(4) var<storage, read> image: array<f32>;

var<workgroup> image_index: atomic<u32>;
#endif
#ifdef TABLE_INT
#ifdef SCALE_F16
@group(0) @binding({{SCALE_BINDING}}) var<storage, read> row_scales: array<u32>;
#else
@group(0) @binding({{SCALE_BINDING}}) var<storage, read> row_scales: array<f32>;
#endif
#endif

// Element i of chunk row r, widened exactly to f32. TABLE_F32: stored f32. TABLE_BF16 /
// TABLE_F16: two 16-bit values per word (element 2k in the low half). TABLE_I8 / TABLE_I4: the
// integer contract's quantized table, rows of i8 (i4) lanes padded to whole words, one scale per
// row: e = f32(q) * s (one correctly rounded multiply).
fn entry(r: u32, i: u32) -> f32 {
#ifdef TABLE_F32
    return table[r * params.d + i];
#endif
#ifdef TABLE_BF16
    let k = r * params.d + i;
    return bf16_in(table[k / 2u], (k & 1u) == 1u);
#endif
#ifdef TABLE_F16
    let k = r * params.d + i;
    return f16_in(table[k / 2u], (k & 1u) == 1u);
#endif
#ifdef TABLE_I8
    let q = i8_in(table[r * ((params.d + 3u) / 4u) + i / 4u], i % 4u);
#endif
#ifdef TABLE_I4
    let q = i4_in(table[r * ((params.d + 7u) / 8u) + i / 8u], i % 8u);
#endif
#ifdef TABLE_INT
#ifdef SCALE_F16
    let s = f16_in(row_scales[r / 2u], (r & 1u) == 1u);
#else
    let s = row_scales[r];
#endif
    return f32(q) * s;
#endif
}

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let t = workgroup_index(grid);
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
        for (var i = li; i < d; i += WG) {
            out[dst + i] = entry(id - params.row0, i);
        }
    } else if (params.first != 0u && id >= params.vocab) {
        for (var i = li; i < d; i += WG) {
            out[dst + i] = 0.0;
        }
    }
}
