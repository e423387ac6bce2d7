//! LayerNorm and RMSNorm against f64 references, in every layout (a 256- or a 32-invocation
//! workgroup per row — reducing in a tree in workgroup memory, and natively also through
//! subgroups — and one invocation per row) and in the residual form (`x ← x + r`, then the norm
//! of the sum; `x` must equal the f32 sums bit for bit): odd widths, offset rows, and the
//! row-chunked path under a forced small binding limit. Runs natively and in the browser.

mod common;

use common::{EPS, assert_close, encoder, submit, upload, values, zeros};
use pocketvlm_runtime::kernels::norm::{
    LayerNorm, NormLayout, NormShape, RmsNorm, layer_norm_reference, rms_norm_reference,
};
use pocketvlm_runtime::kernels::util::rows_per_chunk;
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// Rows of values in [-1, 1) with every third row shifted by 3 (a mean far from zero).
fn inputs(seed: u64, shape: NormShape) -> Vec<f32> {
    let mut x = values(seed, shape.rows * shape.d);
    for r in (0..shape.rows).step_by(3) {
        for v in &mut x[r * shape.d..(r + 1) * shape.d] {
            *v += 3.0;
        }
    }
    x
}

/// Sequential additions per sum in the kernel: a strided slice per invocation of a `w`-wide
/// workgroup (256, or 32 for the narrow one), then a `w`-wide tree (log2 `w` levels), or with
/// subgroups each subgroup's sum (at most its size, in the device's order) and the subgroups'
/// sums in order (`w` / the smallest size); or the whole row in order.
fn sum_terms(gpu: &Gpu, d: usize, layout: NormLayout) -> f32 {
    if layout == NormLayout::PerRow {
        return d as f32;
    }
    let (fewest, most) = gpu.caps.subgroup_sizes;
    let w = layout.invocations();
    let terms = if gpu.caps.subgroup_reductions() {
        d.div_ceil(w) + most as usize + w / fewest as usize
    } else {
        d.div_ceil(w) + w.ilog2() as usize
    };
    terms as f32
}

/// The input as the norm sees it: `x`, or `x + r` (with `r` uploaded) in the residual form —
/// `(x0, r, x)`, the uploaded input, the residual and the f32 sums.
fn residual_inputs(seed: u64, shape: NormShape, residual: bool) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
    let x0 = inputs(seed, shape);
    if !residual {
        return (x0.clone(), None, x0);
    }
    let r: Vec<f32> = values(seed + 7, x0.len()).iter().map(|v| v * 0.5).collect();
    let sum = x0.iter().zip(&r).map(|(a, b)| a + b).collect();
    (x0, Some(r), sum)
}

/// With a residual, the updated `x` must be the f32 sums exactly.
async fn check_residual(gpu: &Gpu, what: &str, xb: &wgpu::Buffer, x: &[f32], residual: bool) {
    if residual {
        let got = gpu.read_f32(xb, x.len()).await.unwrap();
        assert!(got.iter().zip(x).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: x ≠ x + r");
    }
}

async fn layer_norm_case(gpu: &Gpu, shape: NormShape, seed: u64, layout: NormLayout, residual: bool) {
    let NormShape { rows, d } = shape;
    let eps = 1e-6;
    let (x0, r, x) = residual_inputs(seed, shape, residual);
    let g: Vec<f32> = values(seed + 1, d).iter().map(|v| v * 2.0).collect();
    let b = values(seed + 2, d);
    let (xb, gb, bb, yb) =
        (upload(gpu, &x0).await, upload(gpu, &g).await, upload(gpu, &b).await, zeros(gpu, rows * d).await);
    let rb = match &r {
        Some(r) => Some(upload(gpu, r).await),
        None => None,
    };
    let mut enc = encoder(gpu);
    LayerNorm { eps }
        .encode(gpu, &mut enc, layout, shape, (&xb, rb.as_deref()), (&gb, &bb), &yb)
        .await
        .unwrap();
    submit(gpu, enc);
    let what = format!("layer_norm {shape:?} {layout:?} residual {residual}");
    check_residual(gpu, &what, &xb, &x, residual).await;
    let got = gpu.read_f32(&yb, rows * d).await.unwrap();
    let want = layer_norm_reference(&x, &g, &b, eps, shape);
    // Error model: the mean is off by ≤ c·ε·mean|x| (c sequential additions plus the division),
    // the inverse standard deviation by ≤ (c/2 + 3)·ε relative, and the final subtract, multiplies
    // and add by a few ε more.
    let c = sum_terms(gpu, d, layout) + 3.0;
    let stats: Vec<(f64, f64, f64)> = (0..rows)
        .map(|r| {
            let row = &x[r * d..(r + 1) * d];
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / d as f64;
            let abs_mean = row.iter().map(|&v| f64::from(v).abs()).sum::<f64>() / d as f64;
            (mean, 1.0 / (var + f64::from(eps)).sqrt(), abs_mean)
        })
        .collect();
    let worst = assert_close(&what, &got, &want, |i| {
        let (r, j) = (i / d, i % d);
        let (mean, rstd, abs_mean) = stats[r];
        let xhat = ((f64::from(x[i]) - mean) * rstd).abs() as f32;
        let gj = g[j].abs();
        gj * (rstd as f32) * c * EPS * abs_mean as f32
            + gj * xhat * (c / 2.0 + 6.0) * EPS
            + 2.0 * EPS * want[i].abs()
            + 1e-30
    });
    eprintln!("{what}: worst error {worst:.3} of tolerance");
}

async fn rms_norm_case(gpu: &Gpu, shape: NormShape, seed: u64, layout: NormLayout, residual: bool) {
    let NormShape { rows, d } = shape;
    let eps = 1e-5;
    let (x0, r, x) = residual_inputs(seed, shape, residual);
    let g: Vec<f32> = values(seed + 1, d).iter().map(|v| v * 2.0).collect();
    let (xb, gb, yb) = (upload(gpu, &x0).await, upload(gpu, &g).await, zeros(gpu, rows * d).await);
    let rb = match &r {
        Some(r) => Some(upload(gpu, r).await),
        None => None,
    };
    let mut enc = encoder(gpu);
    RmsNorm { eps }
        .encode(gpu, &mut enc, layout, shape, (&xb, rb.as_deref()), &gb, (&yb, None))
        .await
        .unwrap();
    submit(gpu, enc);
    let what = format!("rms_norm {shape:?} {layout:?} residual {residual}");
    check_residual(gpu, &what, &xb, &x, residual).await;
    let got = gpu.read_f32(&yb, rows * d).await.unwrap();
    let want = rms_norm_reference(&x, &g, eps, shape);
    // Error model: the mean square is off by ≤ (c + 3)·ε relative, its inverse square root by
    // half that plus 2 ε, and the two multiplies add 2 ε.
    let c = sum_terms(gpu, d, layout) + 3.0;
    let worst = assert_close(&what, &got, &want, |i| want[i].abs() * (c / 2.0 + 6.0) * EPS + 1e-30);
    eprintln!("{what}: worst error {worst:.3} of tolerance");
}

async fn check_sizes(gpu: &Gpu) {
    let cases = [(1, 1), (3, 7), (5, 256), (2, 257), (7, 768), (3, 960), (2, 2048), (4, 1153)];
    for (i, &(rows, d)) in cases.iter().enumerate() {
        for layout in NormLayout::ALL {
            for residual in [false, true] {
                layer_norm_case(gpu, NormShape { rows, d }, 10 + i as u64, layout, residual).await;
                rms_norm_case(gpu, NormShape { rows, d }, 40 + i as u64, layout, residual).await;
            }
        }
    }
    // The automatic layout: a wide workgroup per row on GPUs; on CPU adapters one invocation
    // per row, but a narrow workgroup per row for a decode step's few rows where the adapter
    // works on rows in workgroups (lavapipe, not the browser's SwiftShader).
    let few = NormLayout::FEW_ROWS;
    let for_few = if gpu.caps.workgroup_rows { NormLayout::NarrowWorkgroup } else { NormLayout::PerRow };
    for (rows, want) in
        [(1, for_few), (few, for_few), (few + 1, NormLayout::PerRow), (1024, NormLayout::PerRow)]
    {
        let want = if gpu.caps.cpu { want } else { NormLayout::Workgroup };
        assert_eq!(NormLayout::for_gpu(gpu, rows), want, "{rows} rows");
    }
}

async fn check_split_binding() {
    let gpu =
        Gpu::new(&DeviceOptions { max_storage_binding: Some(4096), ..Default::default() }).await.unwrap();
    let shape = NormShape { rows: 37, d: 128 };
    let chunk = rows_per_chunk(&gpu, "test", shape.rows, &[(shape.d * 4) as u64]).unwrap();
    assert!(chunk < shape.rows, "expected several row chunks, got {chunk}");
    for layout in NormLayout::ALL {
        layer_norm_case(&gpu, shape, 3, layout, true).await;
        rms_norm_case(&gpu, shape, 4, layout, true).await;
    }
    // A single row wider than one binding is a typed error.
    let (x, g, y) = (zeros(&gpu, 2000).await, zeros(&gpu, 2000).await, zeros(&gpu, 2000).await);
    let mut enc = encoder(&gpu);
    let err = RmsNorm { eps: 1e-5 }
        .encode(
            &gpu,
            &mut enc,
            NormLayout::Workgroup,
            NormShape { rows: 1, d: 2000 },
            (&x, None),
            &g,
            (&y, None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::BindingTooLarge { .. }), "{err}");
    // Bad shapes are typed errors too.
    let err = RmsNorm { eps: 1e-5 }
        .encode(
            &gpu,
            &mut enc,
            NormLayout::Workgroup,
            NormShape { rows: 0, d: 4 },
            (&x, None),
            &g,
            (&y, None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    let err = RmsNorm { eps: 1e-5 }
        .encode(
            &gpu,
            &mut enc,
            NormLayout::Workgroup,
            NormShape { rows: 2, d: 1500 },
            (&x, None),
            &g,
            (&y, None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    // A residual that is the input or the output, or too short, is a typed error.
    let small = NormShape { rows: 2, d: 8 };
    for r in [&x, &y] {
        let err = RmsNorm { eps: 1e-5 }
            .encode(&gpu, &mut enc, NormLayout::Workgroup, small, (&x, Some(r)), &g, (&y, None))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    }
    let short = zeros(&gpu, 15).await;
    let err = RmsNorm { eps: 1e-5 }
        .encode(&gpu, &mut enc, NormLayout::Workgroup, small, (&x, Some(&short)), &g, (&y, None))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
}

/// Natively the adapter's own (on lavapipe, a CPU adapter, the workgroup layout reduces in a tree
/// in workgroup memory, as in the browser), then a GPU with subgroups (where the adapter has
/// them: lavapipe does), whose workgroup layout reduces through them.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn norms_match_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_sizes(&gpu));
    let gpu = pollster::block_on(common::subgroup_gpu());
    pollster::block_on(check_sizes(&gpu));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn norms_split_binding() {
    pollster::block_on(check_split_binding());
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn norms_match_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_sizes(&gpu).await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn norms_split_binding_in_browser() {
    check_split_binding().await;
}
