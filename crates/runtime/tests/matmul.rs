//! The matmul kernels (tiled, register-blocked and the few-row matvec, both of its variants) against a CPU
//! reference: odd sizes, bias, vision-sized row counts, and the split-binding paths for weights
//! and for inputs/outputs.
//! Runs natively (`cargo test`, e.g. on Vulkan lavapipe) and in the browser (wasm-bindgen-test).

use pocketvlm_format::Encoding;
use pocketvlm_runtime::bench::values;
use pocketvlm_runtime::kernels::matmul::{
    MatVec, Matmul, MatmulShape, input_rows_per_chunk, matmul_reference, weight_rows_per_chunk,
};
use pocketvlm_runtime::{DeviceOptions, Gpu};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// Which kernel a case runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// `Matmul::encode`: matvec for m ≤ 4, tiled otherwise.
    Auto,
    /// `Matmul::encode_tiled` whatever m.
    Tiled,
    /// `Matmul::encode_blocked` (register-blocked, no barriers) whatever m; k % 4 == 0.
    Blocked,
    /// `MatVec` (m ≤ 4) with the given `per_column` variant, whatever the adapter.
    MatVec(bool),
}

async fn run_case(gpu: &Gpu, shape: MatmulShape, with_bias: bool, seed: u64) {
    let _ = run_path(gpu, shape, with_bias, seed, Path::Auto).await;
}

/// Run one case on `path`, check it against the reference and return the output.
async fn run_path(gpu: &Gpu, shape: MatmulShape, with_bias: bool, seed: u64, path: Path) -> Vec<f32> {
    let MatmulShape { m, n, k } = shape;
    let x = values(seed, m * k);
    let w = values(seed + 1, n * k);
    let b = values(seed + 2, n);
    let xb = gpu.storage_buffer("x", bytemuck::cast_slice(&x)).await.unwrap();
    let wb = gpu.storage_buffer("w", bytemuck::cast_slice(&w)).await.unwrap();
    let bb = gpu.storage_buffer("b", bytemuck::cast_slice(&b)).await.unwrap();
    let yb = gpu.zeroed_buffer("y", (m * n * 4) as u64).await.unwrap();
    let mut encoder = gpu.encoder();
    let kernel = Matmul::f32(with_bias);
    let bias = with_bias.then_some(&*bb);
    match path {
        Path::Auto => kernel.encode(gpu, &mut encoder, shape, &xb, &wb, bias, &yb).await.unwrap(),
        Path::Tiled => kernel.encode_tiled(gpu, &mut encoder, shape, &xb, &wb, bias, &yb).await.unwrap(),
        Path::Blocked => kernel.encode_blocked(gpu, &mut encoder, shape, &xb, &wb, bias, &yb).await.unwrap(),
        Path::MatVec(per_column) => {
            MatVec { bias: with_bias, weights: Encoding::F32, rows: m, per_column, f16_storage: false }
                .encode(gpu, &mut encoder, n, k, &xb, &wb, bias, &yb)
                .await
                .unwrap()
        }
    }
    gpu.submit(encoder);
    let got = gpu.read_f32(&yb, m * n).await.unwrap();
    let want = matmul_reference(&x, &w, with_bias.then_some(&b[..]), shape);
    for r in 0..m {
        for c in 0..n {
            // Bound for a length-k f32 fma chain: (k + 2)·ε·Σ|x·w| (+ |bias|).
            let abs_sum: f32 = (0..k).map(|i| (x[r * k + i] * w[c * k + i]).abs()).sum::<f32>()
                + if with_bias { b[c].abs() } else { 0.0 };
            let tol = (k as f32 + 2.0) * f32::EPSILON * abs_sum + 1e-30;
            let (g, e) = (got[r * n + c], want[r * n + c]);
            assert!(
                (g - e).abs() <= tol,
                "{shape:?} {path:?} bias={with_bias} y[{r},{c}] = {g}, expected {e} (tol {tol})"
            );
        }
    }
    got
}

/// The register-blocked kernel equals the tiled one bit for bit (the same fma chain per output),
/// on shapes with partial blocks and tiles, with and without bias.
async fn check_blocked(gpu: &Gpu) {
    let cases = [(5, 3, 4), (7, 129, 576), (65, 130, 32), (64, 64, 64), (130, 70, 300), (1024, 96, 768)];
    for (i, &(m, n, k)) in cases.iter().enumerate() {
        let shape = MatmulShape { m, n, k };
        let bias = i % 2 == 1;
        let tiled = run_path(gpu, shape, bias, 500 + i as u64, Path::Tiled).await;
        let blocked = run_path(gpu, shape, bias, 500 + i as u64, Path::Blocked).await;
        let same = tiled.iter().zip(&blocked).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{shape:?} bias={bias}: the blocked kernel differs from the tiled one");
    }
    // k not a multiple of 4 is refused by the blocked kernel (encode then uses the tiled one).
    let b = gpu.zeroed_buffer("b", 4 * 64).await.unwrap();
    let y = gpu.zeroed_buffer("y", 4 * 64).await.unwrap();
    let mut encoder = gpu.encoder();
    let err = Matmul::f32(false)
        .encode_blocked(gpu, &mut encoder, MatmulShape { m: 8, n: 2, k: 3 }, &b, &b, None, &y)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("k % 4"), "{err}");
}

/// A 16-bit weight (f16 or bf16, two per word; f16 also as `array<f16>` where the adapter has
/// `shader-f16`) is widened exactly in the kernel: the product equals the f32 kernel's on the
/// widened values, bit for bit (same fma order), on every path.
async fn run_16bit(gpu: &Gpu, shape: MatmulShape, encoding: Encoding, seed: u64) {
    let MatmulShape { m, n, k } = shape;
    let x = values(seed, m * k);
    let w = values(seed + 1, n * k);
    let bytes: Vec<u8> = match encoding {
        Encoding::BF16 => w.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        _ => w.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
    };
    let widened = encoding.decode_f32(&bytes, &[n, k]);
    let xb = gpu.storage_buffer("x", bytemuck::cast_slice(&x)).await.unwrap();
    let w16 = gpu.storage_buffer("w16", &bytes).await.unwrap();
    let w32 = gpu.storage_buffer("w32", bytemuck::cast_slice(&widened)).await.unwrap();
    let mut variants = vec![(Encoding::F32, false, &w32), (encoding, false, &w16)];
    if encoding == Encoding::F16 && gpu.caps.shader_f16 {
        variants.push((encoding, true, &w16));
    }
    // Beyond the matvec rows: the tiled kernel and (k % 4 == 0) the register-blocked one too.
    let mut paths = vec![Path::Auto];
    if m > MatVec::MAX_ROWS {
        paths.push(Path::Tiled);
        if k % 4 == 0 {
            paths.push(Path::Blocked);
        }
    }
    let mut outputs = Vec::new();
    for &(weights, f16_storage, wb) in &variants {
        for &path in &paths {
            let yb = gpu.zeroed_buffer("y", (m * n * 4) as u64).await.unwrap();
            let mut encoder = gpu.encoder();
            let kernel = Matmul { bias: false, weights, f16_storage };
            match path {
                Path::Tiled => kernel.encode_tiled(gpu, &mut encoder, shape, &xb, wb, None, &yb).await,
                Path::Blocked => kernel.encode_blocked(gpu, &mut encoder, shape, &xb, wb, None, &yb).await,
                _ => kernel.encode(gpu, &mut encoder, shape, &xb, wb, None, &yb).await,
            }
            .unwrap();
            gpu.submit(encoder);
            outputs.push(((weights, f16_storage, path), gpu.read_f32(&yb, m * n).await.unwrap()));
        }
    }
    for ((weights, f16_storage, path), output) in &outputs[1..] {
        let same = outputs[0].1.iter().zip(output).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{shape:?} {weights:?} (array<f16>: {f16_storage}, {path:?}): other values than the f32 widening"
        );
    }
}

/// Binding f16 weights as `array<f16>` on an adapter without `shader-f16` is refused.
async fn check_f16_storage_needs_the_feature(gpu: &Gpu) {
    if gpu.caps.shader_f16 {
        return;
    }
    let x = gpu.zeroed_buffer("x", 16).await.unwrap();
    let w = gpu.zeroed_buffer("w", 8).await.unwrap();
    let y = gpu.zeroed_buffer("y", 16).await.unwrap();
    let kernel = Matmul { bias: false, weights: Encoding::F16, f16_storage: true };
    let mut encoder = gpu.encoder();
    let shape = MatmulShape { m: 1, n: 4, k: 1 };
    let err = kernel.encode(gpu, &mut encoder, shape, &x, &w, None, &y).await.unwrap_err();
    assert!(err.to_string().contains("shader-f16"), "{err}");
}

async fn check_16bit(gpu: &Gpu) {
    for (i, &(m, n, k)) in [(1, 77, 33), (3, 40, 64), (70, 65, 47), (70, 65, 48)].iter().enumerate() {
        for encoding in [Encoding::BF16, Encoding::F16] {
            run_16bit(gpu, MatmulShape { m, n, k }, encoding, 400 + i as u64).await;
        }
    }
}

async fn check_sizes(gpu: &Gpu) {
    let cases =
        [(1, 1, 1), (3, 5, 7), (1, 129, 576), (65, 129, 33), (64, 64, 64), (17, 200, 96), (130, 70, 300)];
    for (i, &(m, n, k)) in cases.iter().enumerate() {
        for bias in [false, true] {
            run_case(gpu, MatmulShape { m, n, k }, bias, 100 + i as u64).await;
        }
    }
    // Few rows: the matvec path (Auto, and both matvec variants explicitly) and the tiled kernel
    // on the same shapes.
    let few = [(1, 960, 960), (2, 33, 1000), (3, 257, 64), (4, 9, 2560), (1, 49_280 / 16, 960), (2, 600, 3)];
    for (i, &(m, n, k)) in few.iter().enumerate() {
        for path in [Path::Auto, Path::Tiled, Path::MatVec(false), Path::MatVec(true)] {
            let _ = run_path(gpu, MatmulShape { m, n, k }, i % 2 == 0, 200 + i as u64, path).await;
        }
    }
    // Vision-sized row count (17 tiles × 1024 patches): dispatch limits along m.
    run_case(gpu, MatmulShape { m: 17 * 1024, n: 3, k: 8 }, true, 300).await;
}

async fn check_split_binding() {
    // 4 KiB bindings: a [100, 40] f32 weight (16 000 bytes) must be processed in chunks.
    let gpu =
        Gpu::new(&DeviceOptions { max_storage_binding: Some(4096), ..Default::default() }).await.unwrap();
    let rows = weight_rows_per_chunk(&gpu, 100, 40, 4).unwrap();
    assert!(rows < 100 && rows > 0, "expected several chunks, got {rows} rows per chunk");
    for bias in [false, true] {
        run_case(&gpu, MatmulShape { m: 9, n: 100, k: 40 }, bias, 7).await;
        // The matvec paths with a chunked weight.
        for path in [Path::MatVec(false), Path::MatVec(true)] {
            let _ = run_path(&gpu, MatmulShape { m: 3, n: 100, k: 40 }, bias, 8, path).await;
        }
    }
    // 16-bit weights in chunks (12 800 bytes; rows whose offsets every adapter can align), every
    // storage of them, matvec and tiled.
    for encoding in [Encoding::BF16, Encoding::F16] {
        for m in [3, 9] {
            run_16bit(&gpu, MatmulShape { m, n: 100, k: 64 }, encoding, 11).await;
        }
    }
    // Inputs and outputs larger than one binding are split into row passes (here also combined
    // with a chunked weight).
    let shape = MatmulShape { m: 100, n: 30, k: 20 };
    let rows = input_rows_per_chunk(&gpu, shape).unwrap();
    assert!(rows < 100 && rows > 0, "expected several row passes, got {rows} rows per pass");
    run_case(&gpu, shape, true, 9).await;
    run_case(&gpu, MatmulShape { m: 70, n: 120, k: 24 }, false, 10).await;
    // The same row passes and weight chunks through the register-blocked kernel.
    let _ = run_path(&gpu, shape, true, 9, Path::Blocked).await;
    let _ = run_path(&gpu, MatmulShape { m: 70, n: 120, k: 24 }, false, 10, Path::Blocked).await;
    // An output larger than one binding is refused with a typed error, not a panic.
    let x = gpu.zeroed_buffer("x", 4).await.unwrap();
    let w = gpu.zeroed_buffer("w", 4 * 2000).await.unwrap();
    let y = gpu.zeroed_buffer("y", 4 * 2000).await.unwrap();
    let mut encoder = gpu.encoder();
    let err = Matmul::f32(false)
        .encode(&gpu, &mut encoder, MatmulShape { m: 1, n: 2000, k: 1 }, &x, &w, None, &y)
        .await
        .unwrap_err();
    assert!(matches!(err, pocketvlm_runtime::RuntimeError::BindingTooLarge { .. }), "{err}");
}

/// The capabilities the kernels rely on are what the device granted: limits within the
/// device's, features exactly the device's.
async fn check_capabilities(gpu: &Gpu) {
    let (limits, features) = (gpu.device.limits(), gpu.device.features());
    assert!(gpu.caps.max_invocations <= limits.max_compute_invocations_per_workgroup);
    assert!(
        gpu.caps.max_storage_binding <= limits.max_storage_buffer_binding_size.min(limits.max_buffer_size)
    );
    assert!(gpu.caps.max_buffer_size <= limits.max_buffer_size);
    assert!(gpu.caps.max_workgroup_storage_bytes <= limits.max_compute_workgroup_storage_size);
    assert!(gpu.caps.max_storage_buffers_per_stage <= limits.max_storage_buffers_per_shader_stage);
    assert!(gpu.caps.max_workgroups_per_dimension <= limits.max_compute_workgroups_per_dimension);
    assert_eq!(gpu.caps.storage_offset_alignment, limits.min_storage_buffer_offset_alignment);
    assert_eq!(gpu.caps.shader_f16, features.contains(wgpu::Features::SHADER_F16));
    assert_eq!(gpu.caps.subgroups, features.contains(wgpu::Features::SUBGROUP));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn matmul_matches_reference() {
    let gpu =
        pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter (lavapipe in CI)");
    eprintln!("adapter: {:?} ({:?}), caps: {:?}", gpu.adapter.name, gpu.adapter.backend, gpu.caps);
    pollster::block_on(check_capabilities(&gpu));
    pollster::block_on(check_sizes(&gpu));
    pollster::block_on(check_blocked(&gpu));
    pollster::block_on(check_16bit(&gpu));
    pollster::block_on(check_f16_storage_needs_the_feature(&gpu));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn matmul_split_binding() {
    pollster::block_on(check_split_binding());
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn matmul_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_capabilities(&gpu).await;
    check_sizes(&gpu).await;
    check_blocked(&gpu).await;
    check_16bit(&gpu).await;
    check_f16_storage_needs_the_feature(&gpu).await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn matmul_split_binding_in_browser() {
    check_split_binding().await;
}
