//! Token embedding with image-feature scatter, bit-exact against the reference: text only,
//! image tokens (including more image tokens than feature rows and out-of-range ids), and a
//! table split across bindings. Runs natively and in the browser.

mod common;

use common::{assert_exact, encoder, submit, upload, upload_u32, values, zeros};
use pocketvlm_format::Encoding;
use pocketvlm_format::quant::QuantizedTable;
use pocketvlm_format::quant::pack::pack;
use pocketvlm_runtime::kernels::embed::{Embed, EmbedShape, EmbedTable, ImageFeatures, embed_reference};
use pocketvlm_runtime::kernels::util::rows_per_chunk;
use pocketvlm_runtime::tensor::Tensor;
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

async fn embed_case(gpu: &Gpu, ids: &[u32], vocab: usize, d: usize, image: Option<(usize, u32)>, seed: u64) {
    let shape = EmbedShape { tokens: ids.len(), vocab, d };
    let table = values(seed, vocab * d);
    let features = values(seed + 1, image.map_or(1, |(rows, _)| rows.max(1)) * d);
    let (ib, fb) = (upload_u32(gpu, ids).await, upload(gpu, &features).await);
    let tb =
        EmbedTable::new(Tensor::from_f32(gpu, "table", vec![vocab, d], &table).await.unwrap(), None).unwrap();
    let out = zeros(gpu, ids.len() * d).await;
    let mut enc = encoder(gpu);
    let img = image.map(|(rows, token_id)| ImageFeatures { features: &fb, rows, token_id });
    Embed::for_table(&tb, image.is_some()).encode(gpu, &mut enc, shape, &ib, &tb, img, &out).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&out, ids.len() * d).await.unwrap();
    let want = embed_reference(ids, &table, image.map(|(rows, id)| (&features[..rows * d], id)), shape);
    assert_exact(&format!("embed {shape:?} image {image:?}"), &got, &want);
}

async fn check_cases(gpu: &Gpu) {
    embed_case(gpu, &[0], 1, 1, None, 1).await;
    embed_case(gpu, &[3, 1, 4, 1, 5, 9, 2, 6, 49, 0], 50, 7, None, 2).await;
    // Out-of-range ids give zero rows.
    embed_case(gpu, &[3, 50, 1000, u32::MAX, 2], 50, 7, None, 3).await;
    // Image tokens (id 45, a valid vocabulary id) take feature rows in order; the fifth has no row.
    let ids = [1, 45, 45, 3, 45, 49, 60, 45, 45, 7];
    embed_case(gpu, &ids, 50, 7, Some((4, 45)), 4).await;
    // A long prompt: 300 image tokens between text, wider rows than a workgroup.
    let mut long: Vec<u32> = (0..40).collect();
    long.extend(std::iter::repeat_n(49_190, 300));
    long.extend(100..130);
    embed_case(gpu, &long, 49_280 / 64, 300, None, 5).await;
    let mut with_image = long.clone();
    with_image.iter_mut().for_each(|id| *id %= 700);
    with_image[40..340].fill(699);
    embed_case(gpu, &with_image, 700, 300, Some((300, 699)), 6).await;
}

/// Stored tables read as the contract says: bf16 / f16 widened exactly, and the INT8 and INT4
/// tables with one f32 or f16 scale per row (`f32(q) · s`, [`QuantizedTable::lookup`]) — bit-exact.
async fn stored_table_case(
    gpu: &Gpu,
    ids: &[u32],
    vocab: usize,
    d: usize,
    encoding: Encoding,
    f16_scales: bool,
) {
    let shape = EmbedShape { tokens: ids.len(), vocab, d };
    let raw = values(vocab as u64 + d as u64, vocab * d);
    let (values_t, scales_t, want_table) = match encoding {
        Encoding::I8 | Encoding::I4 => {
            let bits = encoding.packed_bits().unwrap();
            let q: Vec<i8> = raw.iter().map(|v| (v * bits.qmax() as f32).round() as i8).collect();
            let mut s: Vec<f32> = values(9, vocab).iter().map(|v| v.abs() * 0.01 + 1e-4).collect();
            let scale_bytes: Vec<u8> = if f16_scales {
                s.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32());
                s.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
            } else {
                s.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            let all: Vec<usize> = (0..vocab).collect();
            let want = QuantizedTable::lookup(&q, &s, d, &all);
            let packed = pack(bits, &q, d).unwrap();
            let se = if f16_scales { Encoding::F16 } else { Encoding::F32 };
            let v = Tensor::upload(gpu, "table", vec![vocab, d], encoding, &packed).await.unwrap();
            let sc = Tensor::upload(gpu, "scales", vec![vocab], se, &scale_bytes).await.unwrap();
            (v, Some(sc), want)
        }
        _ => {
            let bytes: Vec<u8> = match encoding {
                Encoding::BF16 => raw.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
                _ => raw.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            };
            let want = encoding.decode_f32(&bytes, &[vocab, d]);
            (Tensor::upload(gpu, "table", vec![vocab, d], encoding, &bytes).await.unwrap(), None, want)
        }
    };
    let table = EmbedTable::new(values_t, scales_t).unwrap();
    let ib = upload_u32(gpu, ids).await;
    let out = zeros(gpu, ids.len() * d).await;
    let mut enc = encoder(gpu);
    Embed::for_table(&table, false).encode(gpu, &mut enc, shape, &ib, &table, None, &out).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&out, ids.len() * d).await.unwrap();
    let want = embed_reference(ids, &want_table, None, shape);
    assert_exact(&format!("embed {encoding:?} f16 scales {f16_scales} {shape:?}"), &got, &want);
}

async fn check_stored_tables(gpu: &Gpu) {
    let ids = [0, 5, 299, 17, 17, 1, 400];
    for (d, encoding, f16) in [
        (7, Encoding::BF16, false),
        (16, Encoding::F16, false),
        (7, Encoding::I8, false),
        (13, Encoding::I8, true),
        (48, Encoding::I8, false),
        (7, Encoding::I4, false),
        (13, Encoding::I4, true),
        (48, Encoding::I4, false),
    ] {
        stored_table_case(gpu, &ids, 300, d, encoding, f16).await;
    }
}

async fn check_split_binding() {
    let gpu =
        Gpu::new(&DeviceOptions { max_storage_binding: Some(4096), ..Default::default() }).await.unwrap();
    let (vocab, d) = (300, 16);
    let chunk = rows_per_chunk(&gpu, "test", vocab, &[(d * 4) as u64]).unwrap();
    assert!(chunk < vocab, "expected several table chunks, got {chunk} rows");
    let ids: Vec<u32> = vec![0, 299, 64, 63, 128, 17, 298, 290, 290, 5, 300, 250];
    embed_case(&gpu, &ids, vocab, d, None, 7).await;
    embed_case(&gpu, &ids, vocab, d, Some((2, 290)), 8).await;
    // Stored 16-bit and INT8 tables split the same way (their scales with them).
    stored_table_case(&gpu, &ids, vocab, 32, Encoding::I8, true).await;
    stored_table_case(&gpu, &ids, vocab, 40, Encoding::BF16, false).await;
    // Mismatched variant and image features is a typed error.
    let buf = zeros(&gpu, 1024).await;
    let out = zeros(&gpu, 1024).await;
    let mut enc = encoder(&gpu);
    let shape = EmbedShape { tokens: 2, vocab: 4, d: 4 };
    let tb = EmbedTable::new(Tensor::from_f32(&gpu, "table", vec![4, 4], &[0.0; 16]).await.unwrap(), None)
        .unwrap();
    let err =
        Embed::for_table(&tb, true).encode(&gpu, &mut enc, shape, &buf, &tb, None, &out).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Shape(_)), "{err}");
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn embed_matches_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_cases(&gpu));
    pollster::block_on(check_stored_tables(&gpu));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn embed_split_binding() {
    pollster::block_on(check_split_binding());
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn embed_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_cases(&gpu).await;
    check_stored_tables(&gpu).await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn embed_split_binding_in_browser() {
    check_split_binding().await;
}
