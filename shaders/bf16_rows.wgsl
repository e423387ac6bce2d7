// Rows of f32 values stored as bf16, two per u32 word (column 2w in the low half of word w, 2w + 1
// in the high half; an odd last column leaves the high half zero):
//   PACK:  packed[dst_row + t, w] <- bf16(src[t, 2w]) | bf16(src[t, 2w + 1]) << 16   for t < rows
//   WIDEN: dst[t, c] <- f32(packed[t, c / 2] half c % 2)                            for t < rows
// bf16(x) rounds the f32 bits to the nearest bf16, ties to even, and keeps a NaN a quiet NaN, as
// `half::bf16::from_f32` (the CPU reference's rounding): bit for bit. Widening is exact. One
// invocation per word (PACK) or value (WIDEN) on a 2-D grid of 64-invocation workgroups; no
// workgroup memory.

#include grid

struct Params {
    rows: u32,
    width: u32,
    words: u32,
    dst_row: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#ifdef PACK
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;
#else
@group(0) @binding(1) var<storage, read> packed: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
#endif

fn to_bf16(x: u32) -> u32 {
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (x >> 16u) | 0x40u;
    }
    let round = 0x8000u;
    if ((x & round) != 0u && (x & (3u * round - 1u)) != 0u) {
        return (x >> 16u) + 1u;
    }
    return x >> 16u;
}

@compute @workgroup_size(64, 1, 1)
fn main(grid: Grid, @builtin(local_invocation_index) li: u32) {
    let item = invocation_index(grid, 64u, li);
    let width = params.width;
    let words = params.words;
#ifdef PACK
    if (item >= params.rows * words) {
        return;
    }
    let t = item / words;
    let c = (item % words) * 2u;
    let lo = to_bf16(src[t * width + c]);
    var hi = 0u;
    if (c + 1u < width) {
        hi = to_bf16(src[t * width + c + 1u]);
    }
    packed[(params.dst_row + t) * words + item % words] = lo | (hi << 16u);
#else
    if (item >= params.rows * width) {
        return;
    }
    let t = item / width;
    let c = item % width;
    let word = packed[t * words + c / 2u];
    // the bf16 bits become the high half of the f32 (copied as bits: no float conversion)
    dst[item] = select(word << 16u, word & 0xffff0000u, c % 2u == 1u);
#endif
}
