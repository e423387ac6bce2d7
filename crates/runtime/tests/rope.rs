//! The CPU cos/sin table against values transformers' `LlamaRotaryEmbedding` produces. Runs
//! natively and in the browser. (RoPE as the attention kernel applies it on load, against the
//! f64 reference: `tests/attention.rs` and `tests/latent.rs`.)

use pocketvlm_runtime::kernels::rope::rope_table;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// Entries of `LlamaRotaryEmbedding(rope_theta = 100000, head_dim = 64)`'s cos/sin as computed
/// by transformers 5.23 on PyTorch 2.15 (f32 bit patterns), and its inverse frequencies.
/// (Elsewhere PyTorch's vectorised cos/sin may differ from the correctly rounded table by 1 ULP.)
#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn rope_table_matches_transformers() {
    let table = rope_table(100000.0, 64, 8192);
    let known: [(usize, usize, u32, u32); 6] = [
        (1, 1, 0x3f44282c, 0x3f247e9c),
        (1000, 3, 0x3f5d07d3, 0x3f012827),
        (4095, 10, 0x3f13050b, 0xbf5192e9),
        (8191, 0, 0xbf2579d9, 0xbf43546a),
        (8191, 31, 0x3f7e3d0e, 0x3defd6b3),
        (777, 17, 0xbe12c7e2, 0x3f7d5b3d),
    ];
    for (p, i, cos, sin) in known {
        assert_eq!(table[p * 64 + i].to_bits(), cos, "cos at position {p}, frequency {i}");
        assert_eq!(table[p * 64 + 32 + i].to_bits(), sin, "sin at position {p}, frequency {i}");
    }
    // Position 0: cos 1, sin 0; position 1: the inverse frequencies themselves as angles.
    assert!(table[..32].iter().all(|&c| c == 1.0) && table[32..64].iter().all(|&s| s == 0.0));
    let inv = [0x3f800000u32, 0x3f32a506, 0x3ef953cf, 0x3eadfcff];
    for (i, bits) in inv.into_iter().enumerate() {
        let angle = f32::from_bits(bits);
        assert_eq!(table[64 + 32 + i], f64::from(angle).sin() as f32, "inv_freq[{i}]");
    }
}
