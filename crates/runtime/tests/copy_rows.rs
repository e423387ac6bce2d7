//! Row copies (KV-cache append) against the reference, and typed errors for overruns. Runs
//! natively and in the browser.

mod common;

use common::{assert_exact, encoder, submit, upload, values};
use pocketvlm_runtime::kernels::copy::{CopyRows, copy_rows_reference};
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

async fn check_cases(gpu: &Gpu) {
    let width = 5 * 64;
    let cache = values(1, 10 * width);
    let new = values(2, 3 * width);
    for copy in [
        CopyRows::append(3, width, 4),
        CopyRows::append(1, width, 9),
        CopyRows { rows: 2, width, src_row: 1, dst_row: 0 },
    ] {
        let (cb, nb) = (upload(gpu, &cache).await, upload(gpu, &new).await);
        let mut enc = encoder(gpu);
        copy.encode(gpu, &mut enc, &nb, &cb).unwrap();
        submit(gpu, enc);
        let got = gpu.read_f32(&cb, cache.len()).await.unwrap();
        assert_exact(&format!("{copy:?}"), &got, &copy_rows_reference(&new, &cache, copy));
    }
    let (cb, nb) = (upload(gpu, &cache).await, upload(gpu, &new).await);
    let mut enc = encoder(gpu);
    for bad in [
        CopyRows::append(3, width, 8),
        CopyRows { rows: 3, width, src_row: 1, dst_row: 0 },
        CopyRows::append(0, width, 0),
    ] {
        let err = bad.encode(gpu, &mut enc, &nb, &cb).unwrap_err();
        assert!(matches!(err, RuntimeError::Shape(_)), "{bad:?}: {err}");
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn copy_rows_matches_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_cases(&gpu));
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn copy_rows_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_cases(&gpu).await;
}

/// The bench's roofline copy rate: a plausible memory rate, and its two buffers let go after.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn the_adapter_copy_rate_is_measured_and_its_buffers_let_go() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    let held = gpu.held_bytes();
    let rate = pollster::block_on(pocketvlm_runtime::bench::roofline::copy_rate(&gpu)).unwrap();
    // any adapter that runs the tests copies between 100 MB/s and 10 TB/s
    assert!(rate > 1e8 && rate < 1e13, "{rate} bytes/s");
    assert_eq!(gpu.held_bytes(), held);
}
