// Signed integers packed in u32 words as `crates/format/src/quant/pack.rs` lays them out.

// INT8: lane l (0..4) in byte l, low byte first.
fn i8_in(word: u32, lane: u32) -> i32 {
    return bitcast<i32>(word << (24u - 8u * lane)) >> 24u;
}

// INT4: eight values per word, values 0..3 in the low nibbles of bytes 0..3 and values 4..7 in
// their high nibbles.
fn i4_in(word: u32, lane: u32) -> i32 {
    let shift = 8u * (lane % 4u) + 4u * (lane / 4u);
    return bitcast<i32>(word << (28u - shift)) >> 28u;
}
