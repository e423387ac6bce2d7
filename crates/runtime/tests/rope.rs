//! RoPE against an f64 reference on odd shapes and positions, and the CPU cos/sin table against
//! values transformers' `LlamaRotaryEmbedding` produces. Runs natively and in the browser.
//! (RoPE as the attention kernel applies it on load: `tests/attention.rs`.)

mod common;

use common::{EPS, assert_close, encoder, submit, upload, values};
use pocketvlm_runtime::kernels::rope::{Rope, RopeShape, rope_reference, rope_table};
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

async fn rope_case(gpu: &Gpu, shape: RopeShape, theta: f32, seed: u64) {
    let RopeShape { tokens, heads, kv_heads, head_dim, pos0, max_positions, .. } = shape;
    let table = rope_table(theta, head_dim, max_positions);
    let q: Vec<f32> = values(seed, tokens * heads * head_dim).iter().map(|v| v * 4.0).collect();
    let k = values(seed + 1, tokens * kv_heads * head_dim);
    let (tb, qb, kb) = (upload(gpu, &table).await, upload(gpu, &q).await, upload(gpu, &k).await);
    let mut enc = encoder(gpu);
    Rope.encode(gpu, &mut enc, shape, &tb, &qb, &kb).await.unwrap();
    submit(gpu, enc);
    for (name, x, buffer, h) in [("q", &q, &qb, heads), ("k", &k, &kb, kv_heads)] {
        let got = gpu.read_f32(buffer, x.len()).await.unwrap();
        let want = rope_reference(x, &table, tokens, h, head_dim, pos0);
        // Two products and one sum (possibly fused), plus rounding the reference:
        // ≤ 3 ε (|x_i·cos| + |x_j·sin|).
        let half = head_dim / 2;
        let worst = assert_close(&format!("rope {name} {shape:?}"), &got, &want, |i| {
            let (t, j) = (i / (h * head_dim), i % head_dim);
            let row = (pos0 + t) * head_dim;
            let (c, s) = (table[row + j % half].abs(), table[row + half + j % half].abs());
            let partner = if j < half { x[i + half] } else { x[i - half] };
            3.0 * EPS * (x[i].abs() * c + partner.abs() * s) + 1e-30
        });
        eprintln!("rope {name} {shape:?}: worst error {worst:.3} of tolerance");
    }
}

async fn check_shapes(gpu: &Gpu) {
    let cases = [
        (1, 1, 1, 2, 0, 1, 10000.0),
        (5, 3, 1, 64, 7, 64, 100000.0),
        (37, 15, 5, 64, 0, 40, 100000.0),
        (1, 15, 5, 64, 8191, 8192, 100000.0),
        (6, 4, 2, 72, 100, 200, 10000.0),
        (3, 9, 3, 64, 1000, 2048, 100000.0),
    ];
    for (i, &(tokens, heads, kv_heads, head_dim, pos0, max_positions, theta)) in cases.iter().enumerate() {
        let shape = RopeShape { tokens, heads, kv_heads, head_dim, pos0, max_positions, bound: tokens };
        rope_case(gpu, shape, theta, 50 + i as u64).await;
    }
    // Positions past the table and odd head dimensions are typed errors.
    let (t, q, k) =
        (upload(gpu, &[0.0; 64]).await, upload(gpu, &[0.0; 64]).await, upload(gpu, &[0.0; 64]).await);
    let mut enc = encoder(gpu);
    let bad =
        RopeShape { tokens: 2, heads: 1, kv_heads: 1, head_dim: 4, pos0: 15, max_positions: 16, bound: 2 };
    let err = Rope.encode(gpu, &mut enc, bad, &t, &q, &k).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    let bad =
        RopeShape { tokens: 1, heads: 1, kv_heads: 1, head_dim: 3, pos0: 0, max_positions: 4, bound: 1 };
    let err = Rope.encode(gpu, &mut enc, bad, &t, &q, &k).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    // Bindings narrower than the rows rotated, or wider than the buffers, are typed errors.
    let bad =
        RopeShape { tokens: 2, heads: 1, kv_heads: 1, head_dim: 4, pos0: 0, max_positions: 4, bound: 1 };
    let err = Rope.encode(gpu, &mut enc, bad, &t, &q, &k).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    let bad =
        RopeShape { tokens: 2, heads: 1, kv_heads: 1, head_dim: 4, pos0: 0, max_positions: 4, bound: 17 };
    let err = Rope.encode(gpu, &mut enc, bad, &t, &q, &k).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
}

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

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn rope_matches_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_shapes(&gpu));
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn rope_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_shapes(&gpu).await;
}
