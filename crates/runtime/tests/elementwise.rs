//! GELU (tanh), SiLU·up (separate and fused), and the (broadcasting) add against f64
//! references, including extreme inputs and the chunked path under a forced small binding
//! limit. Runs natively and in the browser.

mod common;

use common::{EPS, assert_close, assert_exact, encoder, submit, upload, values, zeros};
use pocketvlm_runtime::kernels::elementwise::{
    Add, GeluTanh, SiluMul, SiluMulFused, add_reference, gelu_tanh_reference, silu_mul_reference,
};
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const EXTREMES: [f32; 16] = [
    0.0, -0.0, 1e-30, -1e-30, 9.99, 10.01, -9.99, -10.01, 50.0, -50.0, 88.5, -88.5, 1e20, -1e20, 3.4e38,
    -3.4e38,
];

async fn gelu_case(gpu: &Gpu, n: usize, seed: u64) {
    let mut x: Vec<f32> = values(seed, n).iter().map(|v| v * 12.0).collect();
    for (slot, &e) in x.iter_mut().zip(EXTREMES.iter()) {
        *slot = e;
    }
    let xb = upload(gpu, &x).await;
    let mut enc = encoder(gpu);
    GeluTanh.encode(gpu, &mut enc, n, &xb).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&xb, n).await.unwrap();
    let want = gelu_tanh_reference(&x);
    // Error model: the kernel evaluates x / (1 + exp(-2u)); u carries ~4 ε relative error, exp
    // (3 + 2|2u|) ULP, and the add and divide 3.5 ε: ≤ (8 + 6|2u|)·ε relative overall.
    let worst = assert_close(&format!("gelu over {n}"), &got, &want, |i| {
        let v = f64::from(x[i]).clamp(-10.0, 10.0);
        let two_u = (2.0 * (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).abs() as f32;
        (8.0 + 6.0 * two_u) * EPS * want[i].abs() + 1e-30
    });
    eprintln!("gelu over {n}: worst error {worst:.3} of tolerance");
}

/// Tolerance of silu(g)·u: exp is good to (3 + 2|g|) ULP, the add, divide and multiply 4.5 ε.
fn silu_tol(g: f32, want: f32) -> f32 {
    (8.0 + 2.0 * g.abs().min(90.0)) * EPS * want.abs() + 1e-30
}

fn gate_up(seed: u64, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut gate: Vec<f32> = values(seed, n).iter().map(|v| v * 20.0).collect();
    let up: Vec<f32> = values(seed + 1, n).iter().map(|v| v * 3.0).collect();
    for (slot, &e) in gate.iter_mut().zip([0.0, -0.0, -100.0, -87.5, 90.0, 1e30, -1e30, 3.4e38].iter()) {
        *slot = e;
    }
    (gate, up)
}

async fn silu_mul_case(gpu: &Gpu, n: usize, seed: u64) {
    let (gate, up) = gate_up(seed, n);
    let (gb, ub, ob) = (upload(gpu, &gate).await, upload(gpu, &up).await, zeros(gpu, n).await);
    let mut enc = encoder(gpu);
    SiluMul.encode(gpu, &mut enc, n, &gb, &ub, &ob).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&ob, n).await.unwrap();
    let want = silu_mul_reference(&gate, &up);
    let worst = assert_close(&format!("silu_mul over {n}"), &got, &want, |i| silu_tol(gate[i], want[i]));
    eprintln!("silu_mul over {n}: worst error {worst:.3} of tolerance");
}

async fn silu_mul_fused_case(gpu: &Gpu, rows: usize, width: usize, seed: u64) {
    let (gate, up) = gate_up(seed, rows * width);
    let mut gu = Vec::with_capacity(rows * width * 2);
    for r in 0..rows {
        gu.extend_from_slice(&gate[r * width..(r + 1) * width]);
        gu.extend_from_slice(&up[r * width..(r + 1) * width]);
    }
    let (gub, ob) = (upload(gpu, &gu).await, zeros(gpu, rows * width).await);
    let mut enc = encoder(gpu);
    SiluMulFused.encode(gpu, &mut enc, rows, width, &gub, &ob).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&ob, rows * width).await.unwrap();
    let want = silu_mul_reference(&gate, &up);
    assert_close(&format!("fused silu_mul over [{rows}, {width}]"), &got, &want, |i| {
        silu_tol(gate[i], want[i])
    });
}

async fn add_case(gpu: &Gpu, n: usize, period: usize, seed: u64) {
    let acc = values(seed, n);
    let x = values(seed + 1, period);
    let (ab, xb) = (upload(gpu, &acc).await, upload(gpu, &x).await);
    let mut enc = encoder(gpu);
    Add.encode(gpu, &mut enc, n, period, &ab, &xb).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&ab, n).await.unwrap();
    // One f32 addition, correctly rounded: bit-exact.
    assert_exact(&format!("add over {n} (period {period})"), &got, &add_reference(&acc, &x));
}

async fn check_sizes(gpu: &Gpu) {
    for (i, n) in [1, 17, 256, 1000, 4099].into_iter().enumerate() {
        gelu_case(gpu, n.max(EXTREMES.len()), 10 + i as u64).await;
        silu_mul_case(gpu, n.max(8), 20 + i as u64).await;
        add_case(gpu, n, n, 30 + i as u64).await;
    }
    silu_mul_fused_case(gpu, 1, 8, 1).await;
    silu_mul_fused_case(gpu, 5, 37, 2).await;
    silu_mul_fused_case(gpu, 3, 2560, 3).await;
    add_case(gpu, 3 * 70, 70, 4).await;
    add_case(gpu, 5 * 1024, 1024, 5).await;
}

async fn check_split_binding() {
    let gpu =
        Gpu::new(&DeviceOptions { max_storage_binding: Some(4096), ..Default::default() }).await.unwrap();
    gelu_case(&gpu, 5000, 1).await;
    silu_mul_case(&gpu, 3000, 2).await;
    silu_mul_fused_case(&gpu, 40, 32, 3).await;
    add_case(&gpu, 3000, 3000, 4).await;
    add_case(&gpu, 64 * 50, 64, 5).await;
    // A broadcast operand larger than one binding, a shared buffer and a bad period are typed
    // errors.
    let (acc, x) = (zeros(&gpu, 4000).await, zeros(&gpu, 2000).await);
    let mut enc = encoder(&gpu);
    let err = Add.encode(&gpu, &mut enc, 4000, 2000, &acc, &x).await.unwrap_err();
    assert!(matches!(err, RuntimeError::BindingTooLarge { .. }), "{err}");
    let err = Add.encode(&gpu, &mut enc, 100, 100, &acc, &acc).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    let err = Add.encode(&gpu, &mut enc, 100, 30, &acc, &x).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
    let err = GeluTanh.encode(&gpu, &mut enc, 5000, &x).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn elementwise_matches_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_sizes(&gpu));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn elementwise_split_binding() {
    pollster::block_on(check_split_binding());
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn elementwise_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_sizes(&gpu).await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn elementwise_split_binding_in_browser() {
    check_split_binding().await;
}
