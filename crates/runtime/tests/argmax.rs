//! Argmax against torch.argmax semantics (first index on ties, NaN wins), over one vocabulary-
//! sized row and several rows, reducing through subgroups (natively, where the adapter has them)
//! and through a tree in workgroup memory. Runs natively and in the browser.

mod common;

use common::{encoder, read_u32, submit, upload, values, zeros};
use pocketvlm_runtime::kernels::argmax::{Argmax, argmax_reference};
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

async fn argmax_rows(gpu: &Gpu, x: &[f32], rows: usize) -> Vec<u32> {
    let n = x.len() / rows;
    let (xb, ib) = (upload(gpu, x).await, zeros(gpu, rows).await);
    let mut enc = encoder(gpu);
    Argmax.encode(gpu, &mut enc, rows, n, &xb, &ib).await.unwrap();
    submit(gpu, enc);
    read_u32(gpu, &ib, rows).await
}

async fn check_cases(gpu: &Gpu) {
    let vocab = 49_280;
    let mut cases: Vec<(&str, Vec<f32>)> = vec![
        ("single", vec![-3.0]),
        ("random vocabulary row", values(1, vocab)),
        ("ascending", (0..1000).map(|i| i as f32).collect()),
        ("all equal", vec![0.5; 777]),
        ("signed zeros", vec![-0.0, 0.0, -0.0]),
        ("all -inf", vec![f32::NEG_INFINITY; 300]),
        ("inf", vec![1.0, f32::INFINITY, 2.0, f32::INFINITY]),
        ("NaN", vec![1.0, 5.0, f32::NAN, 7.0, f32::NAN]),
    ];
    // Ties between invocations' slices and within one slice.
    let mut ties = values(2, vocab);
    for i in [40_000, 1_000, 30_000, 1_256] {
        ties[i] = 2.0;
    }
    cases.push(("ties", ties));
    for (what, x) in &cases {
        let got = argmax_rows(gpu, x, 1).await;
        assert_eq!(got[0], argmax_reference(x), "{what}");
    }
    assert_eq!(argmax_reference(&cases[8].1), 1_000);
    assert_eq!(argmax_reference(&cases[7].1), 2);
    // Several rows at once.
    let (rows, n) = (5, 1003);
    let x = values(3, rows * n);
    let got = argmax_rows(gpu, &x, rows).await;
    let want: Vec<u32> = x.chunks(n).map(argmax_reference).collect();
    assert_eq!(got, want);
    // The largest value in each invocation's slice in turn (row r's at column r, and once more
    // among ties at r + 256): every invocation, subgroup and reduction step must pass it on.
    let (rows, n) = (300, 700);
    let mut x = values(4, rows * n);
    for r in 0..rows {
        x[r * n + r] = 2.0;
        if r + 256 < n {
            x[r * n + r + 256] = 2.0;
        }
    }
    let got = argmax_rows(gpu, &x, rows).await;
    let want: Vec<u32> = x.chunks(n).map(argmax_reference).collect();
    assert_eq!(want, (0..rows as u32).collect::<Vec<_>>());
    assert_eq!(got, want);
    // An empty row is a typed error.
    let buf = zeros(gpu, 4).await;
    let out = zeros(gpu, 4).await;
    let mut enc = encoder(gpu);
    let err = Argmax.encode(gpu, &mut enc, 1, 0, &buf, &out).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
}

/// Natively the adapter's own (lavapipe, a CPU adapter, reduces in a tree in workgroup memory, as
/// the browser does), then a GPU with subgroups (lavapipe has them), which reduces through them.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn argmax_matches_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_cases(&gpu));
    let gpu = pollster::block_on(common::subgroup_gpu());
    pollster::block_on(check_cases(&gpu));
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn argmax_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_cases(&gpu).await;
}
