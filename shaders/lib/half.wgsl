// 16-bit floats stored two per u32 word, element 2k in the low half, widened exactly to f32.
// bf16 is the high half of an f32; f16 goes through unpack2x16float (exact for every f16).

fn bf16_in(word: u32, odd: bool) -> f32 {
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, odd));
}

fn f16_in(word: u32, odd: bool) -> f32 {
    return unpack2x16float(word)[u32(odd)];
}

// The encoding the shader was built for: BF16 defined → bf16, else f16.
fn half_in(word: u32, odd: bool) -> f32 {
#ifdef BF16
    return bf16_in(word, odd);
#else
    return f16_in(word, odd);
#endif
}
