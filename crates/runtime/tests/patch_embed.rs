//! Patch embedding (im2col + matmul + position add) against the conv written out directly, on
//! odd sizes (patches that do not divide the tile included: the grid floors, as transformers'
//! strided conv does) and under a forced small binding limit. Runs natively and in the browser.

mod common;

use common::{EPS, assert_close, encoder, submit, upload, values, zeros};
use pocketvlm_runtime::kernels::patch_embed::{PatchEmbed, PatchEmbedShape, patch_embed_reference};
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

async fn patch_embed_case(gpu: &Gpu, shape: PatchEmbedShape, seed: u64) {
    let PatchEmbedShape { tiles, channels, image_size, patch, hidden } = shape;
    let (n2, k) = (shape.patches(), channels * patch * patch);
    let pixels = values(seed, tiles * channels * image_size * image_size);
    let weight = values(seed + 1, hidden * k);
    let bias = values(seed + 2, hidden);
    let pos = values(seed + 3, n2 * hidden);
    let (pb, wb, bb, qb) = (
        upload(gpu, &pixels).await,
        upload(gpu, &weight).await,
        upload(gpu, &bias).await,
        upload(gpu, &pos).await,
    );
    let out = zeros(gpu, tiles * n2 * hidden).await;
    let mut enc = encoder(gpu);
    PatchEmbed.encode(gpu, &mut enc, shape, &pb, &wb, &bb, &qb, &out).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&out, tiles * n2 * hidden).await.unwrap();
    let want = patch_embed_reference(&pixels, &weight, &bias, &pos, shape);
    // The conv is a length-K fma chain plus the bias, as in the matmul test: (K + 2)·ε·Σ|w·x|
    // (+ |bias|); adding the position embedding rounds once more (ε·|out|).
    let side = shape.side();
    let worst = assert_close(&format!("patch embed {shape:?}"), &got, &want, |i| {
        let (o, token, t) = (i % hidden, (i / hidden) % n2, i / (hidden * n2));
        let (py, px) = (token / side, token % side);
        let mut abs = bias[o].abs();
        for c in 0..channels {
            for ky in 0..patch {
                for kx in 0..patch {
                    let w = weight[((o * channels + c) * patch + ky) * patch + kx];
                    let x = pixels
                        [((t * channels + c) * image_size + py * patch + ky) * image_size + px * patch + kx];
                    abs += (w * x).abs();
                }
            }
        }
        (k as f32 + 2.0) * EPS * abs + EPS * want[i].abs() + 1e-30
    });
    eprintln!("patch embed {shape:?}: worst error {worst:.3} of tolerance");
}

async fn check_shapes(gpu: &Gpu) {
    // (tiles, channels, image_size, patch, hidden); 10/4, 30/14 and 132/14 floor to 2, 2 and 9
    // patches per side (SmolVLM-Instruct's 384/14 floors to 27 the same way).
    let cases = [
        (1, 1, 1, 1, 1),
        (2, 3, 12, 4, 5),
        (3, 3, 28, 14, 10),
        (2, 3, 32, 16, 70),
        (1, 3, 48, 16, 65),
        (2, 1, 10, 4, 3),
        (2, 3, 30, 14, 6),
        (2, 3, 132, 14, 24),
    ];
    for (i, &(tiles, channels, image_size, patch, hidden)) in cases.iter().enumerate() {
        patch_embed_case(gpu, PatchEmbedShape { tiles, channels, image_size, patch, hidden }, 70 + i as u64)
            .await;
    }
    let buf = zeros(gpu, 4096).await;
    let out = zeros(gpu, 4096).await;
    let mut enc = encoder(gpu);
    // A patch larger than the tile gives no patches.
    let bad = PatchEmbedShape { tiles: 1, channels: 3, image_size: 3, patch: 4, hidden: 2 };
    let err = PatchEmbed.encode(gpu, &mut enc, bad, &buf, &buf, &buf, &buf, &out).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
}

async fn check_split_binding() {
    let gpu =
        Gpu::new(&DeviceOptions { max_storage_binding: Some(4096), ..Default::default() }).await.unwrap();
    // Pixels, patch rows, matmul rows and the output all need several bindings.
    patch_embed_case(
        &gpu,
        PatchEmbedShape { tiles: 6, channels: 3, image_size: 16, patch: 4, hidden: 20 },
        5,
    )
    .await;
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn patch_embed_matches_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_shapes(&gpu));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn patch_embed_split_binding() {
    pollster::block_on(check_split_binding());
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn patch_embed_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_shapes(&gpu).await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn patch_embed_split_binding_in_browser() {
    check_split_binding().await;
}
