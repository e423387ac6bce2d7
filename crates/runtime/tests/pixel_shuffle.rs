//! The connector's pixel shuffle against the index formula (verified against transformers'
//! `Idefics3Connector.pixel_shuffle`), bit-exact, including SmolVLM's (32, ×4) and SigLIP-so400m's
//! (27, ×3) grids and the tile-chunked path. Runs natively and in the browser.

mod common;

use common::{assert_exact, encoder, submit, upload, values, zeros};
use pocketvlm_runtime::kernels::pixel_shuffle::{PixelShuffle, PixelShuffleShape, pixel_shuffle_reference};
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

async fn shuffle_case(gpu: &Gpu, shape: PixelShuffleShape, seed: u64) {
    let len = shape.tiles * shape.side * shape.side * shape.d;
    let x = values(seed, len);
    let (xb, yb) = (upload(gpu, &x).await, zeros(gpu, len).await);
    let mut enc = encoder(gpu);
    PixelShuffle.encode(gpu, &mut enc, shape, &xb, &yb).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&yb, len).await.unwrap();
    assert_exact(&format!("pixel shuffle {shape:?}"), &got, &pixel_shuffle_reference(&x, shape));
}

/// The formula on small cases (outputs as transformers' `pixel_shuffle` gives them): W = 4,
/// s = 2, element e holds the value e.
#[cfg_attr(not(target_arch = "wasm32"), test)]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn pixel_shuffle_reference_by_hand() {
    let x: Vec<f32> = (0..16).map(|p| p as f32).collect();
    let y = pixel_shuffle_reference(&x, PixelShuffleShape { tiles: 1, side: 4, d: 1, scale: 2 });
    // Output token (I, J) gathers the 2×2 block at rows 2I.., columns 2J.., row-major in the block.
    assert_eq!(y, [0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 12.0, 13.0, 10.0, 11.0, 14.0, 15.0]);
    // Two tiles, D = 2: tile 1's token 3 (I = J = 1) as transformers computes it.
    let x: Vec<f32> = (0..64).map(|p| p as f32).collect();
    let y = pixel_shuffle_reference(&x, PixelShuffleShape { tiles: 2, side: 4, d: 2, scale: 2 });
    assert_eq!(y[(4 + 3) * 8..(4 + 4) * 8], [52.0, 53.0, 54.0, 55.0, 60.0, 61.0, 62.0, 63.0]);
}

async fn check_shapes(gpu: &Gpu) {
    let cases = [
        (1, 1, 1, 1),
        (2, 4, 3, 2),
        (3, 6, 5, 3),
        (1, 8, 7, 4),
        (2, 32, 4, 4),
        (1, 27, 3, 3),
        (1, 32, 768, 4),
    ];
    for (i, &(tiles, side, d, scale)) in cases.iter().enumerate() {
        shuffle_case(gpu, PixelShuffleShape { tiles, side, d, scale }, 80 + i as u64).await;
    }
    let buf = zeros(gpu, 64).await;
    let out = zeros(gpu, 64).await;
    let mut enc = encoder(gpu);
    let bad = PixelShuffleShape { tiles: 1, side: 5, d: 1, scale: 2 };
    let err = PixelShuffle.encode(gpu, &mut enc, bad, &buf, &out).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
}

async fn check_split_binding() {
    let gpu =
        Gpu::new(&DeviceOptions { max_storage_binding: Some(4096), ..Default::default() }).await.unwrap();
    shuffle_case(&gpu, PixelShuffleShape { tiles: 5, side: 4, d: 16, scale: 2 }, 1).await;
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn pixel_shuffle_matches_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_shapes(&gpu));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn pixel_shuffle_split_binding() {
    pollster::block_on(check_split_binding());
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn pixel_shuffle_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_shapes(&gpu).await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn pixel_shuffle_split_binding_in_browser() {
    check_split_binding().await;
}
