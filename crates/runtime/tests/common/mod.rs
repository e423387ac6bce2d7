//! Helpers shared by the kernel tests (natively and in the browser).
#![allow(dead_code)]

use pocketvlm_runtime::{DeviceBuffer, Encoder, Gpu};

pub use pocketvlm_runtime::bench::values;

/// Deterministic integers in `0..bound`.
pub fn indices(seed: u64, len: usize, bound: u32) -> Vec<u32> {
    values(seed, len).iter().map(|v| (((v + 1.0) * 0.5 * bound as f32) as u32).min(bound - 1)).collect()
}

pub async fn upload(gpu: &Gpu, data: &[f32]) -> DeviceBuffer {
    gpu.storage_buffer("test input", bytemuck::cast_slice(data)).await.unwrap()
}

pub async fn upload_u32(gpu: &Gpu, data: &[u32]) -> DeviceBuffer {
    gpu.storage_buffer("test input", bytemuck::cast_slice(data)).await.unwrap()
}

pub async fn zeros(gpu: &Gpu, len: usize) -> DeviceBuffer {
    gpu.zeroed_buffer("test output", (len * 4) as u64).await.unwrap()
}

pub fn encoder(gpu: &Gpu) -> Encoder {
    gpu.encoder()
}

pub fn submit(gpu: &Gpu, encoder: Encoder) {
    gpu.submit(encoder);
}

pub async fn read_u32(gpu: &Gpu, buffer: &wgpu::Buffer, len: usize) -> Vec<u32> {
    let bytes = gpu.read_bytes(buffer, (len * 4) as u64).await.unwrap();
    bytemuck::pod_collect_to_vec::<u8, u32>(&bytes[..len * 4])
}

/// Assert `|got[i] − want[i]| ≤ tol(i)` (and that NaN appears in both or neither); returns the
/// largest error as a fraction of its tolerance.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f32;
    for i in 0..got.len() {
        let (g, w, t) = (got[i], want[i], tol(i));
        if g == w {
            continue;
        }
        if g.is_nan() || w.is_nan() {
            assert!(g.is_nan() && w.is_nan(), "{what}[{i}] = {g}, expected {w}");
            continue;
        }
        let err = (g - w).abs();
        assert!(err <= t, "{what}[{i}] = {g}, expected {w} (error {err:e}, tolerance {t:e})");
        if t > 0.0 {
            worst = worst.max(err / t);
        }
    }
    worst
}

/// Assert exact (bitwise for non-NaN) equality.
pub fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        assert!(
            got[i].to_bits() == want[i].to_bits() || (got[i] == 0.0 && want[i] == 0.0),
            "{what}[{i}] = {}, expected {}",
            got[i],
            want[i]
        );
    }
}

pub const EPS: f32 = f32::EPSILON;

/// A GPU, as far as kernel choice goes, with subgroups where the adapter has them: its workgroup
/// reductions go through them (`Capabilities::subgroup_reductions`; lavapipe has subgroups, and
/// as a CPU adapter does not use them itself).
#[cfg(not(target_arch = "wasm32"))]
pub async fn subgroup_gpu() -> Gpu {
    let pretend = pocketvlm_runtime::Pretend { cpu: false, shader_f16: false, subgroups: true };
    let options = pocketvlm_runtime::DeviceOptions { pretend: Some(pretend), ..Default::default() };
    let gpu = Gpu::new(&options).await.expect("a GPU adapter");
    if gpu.adapter.name.contains("llvmpipe") {
        assert!(gpu.caps.subgroup_reductions(), "lavapipe offers subgroups");
    }
    gpu
}
