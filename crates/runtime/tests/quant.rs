//! The integer contract's kernels against its CPU reference (`pocketvlm_format::quant`), bit for
//! bit: online rotations of every size and construction the compressor emits, per-token INT8 /
//! INT4 activation integers and scales, and whole quantized layers (INT8 and INT4 weights,
//! per-channel and 64 / 128-column groups, f32 and f16 scales, bias, odd widths with padded
//! words, row passes and weight chunks split across small bindings), and layers sharing one
//! quantized input — with the variants CPU adapters get and, under a pretended GPU
//! ([`Pretend`]), those GPUs get (one output per invocation of a rotation's core, a workgroup per
//! token's quantization, one token's product split between 16 invocations per column quad), with
//! their workgroup maxima through subgroups (natively, `common::subgroup_gpu`) and without.
//! Runs natively (`cargo test`, e.g. on Vulkan lavapipe) and in the browser (wasm-bindgen-test).

mod common;

use common::{encoder, read_u32, submit, upload, values, zeros};
use pocketvlm_format::Encoding;
use pocketvlm_format::quant::pack::{Bits, pack};
use pocketvlm_format::quant::{ActivationQuant, Construction, QuantLinear, QuantWeights, Rotation};
use pocketvlm_runtime::kernels::elementwise::SiluMul;
use pocketvlm_runtime::kernels::embed::EmbedTable;
use pocketvlm_runtime::kernels::norm::{NormLayout, NormShape, QuantizedOutput, RmsNorm};
use pocketvlm_runtime::kernels::quant::{
    QMatmul, QuantWeightsGpu, Quantize, QuantizedRows, Rotate, RotationTable, WeightLayout, activation_words,
    rows_words,
};
use pocketvlm_runtime::kernels::rotate_quantize::RotateQuantize;
use pocketvlm_runtime::model::linear::{self, Linear};
use pocketvlm_runtime::model::scratch::Scratch;
use pocketvlm_runtime::tensor::Tensor;
use pocketvlm_runtime::{DeviceOptions, Gpu, Pretend, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// Activations with a wide range: mostly in [-1, 1), a few outliers, a zero row and a row scaled
/// by `tiny`.
fn activations_scaled(seed: u64, rows: usize, cols: usize, tiny: f32) -> Vec<f32> {
    let mut x = values(seed, rows * cols);
    for (i, v) in x.iter_mut().enumerate() {
        if i % 97 == 3 {
            *v *= 40.0;
        }
    }
    if rows > 2 {
        x[cols..2 * cols].fill(0.0);
        x[2 * cols..3 * cols].iter_mut().for_each(|v| *v *= tiny);
    }
    x
}

/// [`activations_scaled`] with a row whose activation scale is subnormal (it quantizes to zeros:
/// the contract's step 3). Its values are partly subnormal too, which a GPU may flush to zero
/// (SwiftShader does): a rotation of them differs, its integers (all zero) do not.
fn activations(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    activations_scaled(seed, rows, cols, 1e-39)
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if what.contains("rotation") {
        eprintln!("{what}: {:?} vs {:?}", &got[..4], &want[..4]);
    }
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
    if !bad.is_empty() {
        eprintln!("{what}: {} of {} differ, first {:?}", bad.len(), got.len(), &bad[..bad.len().min(20)]);
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}[{i}] = {g:e} ({:#x}), expected {w:e} ({:#x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

async fn rotation_case(gpu: &Gpu, n: usize, construction: Construction, seed: Option<u32>) {
    let rows = 5;
    let r = Rotation::new(n, construction, seed).unwrap();
    // tiny but normal values: a rotation of subnormal ones may be flushed to zero
    let x = activations_scaled(n as u64, rows, n, 1e-30);
    let mut want = x.clone();
    r.apply_rows(&mut want).unwrap();
    let table = RotationTable::new(gpu, &r).await.unwrap();
    let data = upload(gpu, &x).await;
    let out = upload(gpu, &vec![f32::NAN; rows * n]).await;
    let mut enc = encoder(gpu);
    Rotate.encode(gpu, &mut enc, &table, &data, &out, rows).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&out, rows * n).await.unwrap();
    assert_bits(&format!("rotation {n} {construction:?} seed {seed:?}"), &got, &want);
}

/// Every width the compressor rotates online (tiny fixture 48, 128, 32, 64; SmolVLM-256M 576,
/// 1536, 768, 3072, 12 288), the other cores (20, 60), and SmolVLM-Instruct's (2.2B): its
/// connector's 10 368 = 648·16 (the largest core a SmolVLM needs), `tiny-2b`'s 216 = 108·2, and
/// the vision MLP's 4304 = 16·269, which has no core and is rotated block-diagonally.
async fn check_rotations(gpu: &Gpu) {
    rotation_case(gpu, 2048, Construction::Kronecker, Some(3)).await;
    rotation_case(gpu, 4096, Construction::Kronecker, Some(3)).await;
    rotation_case(gpu, 8192, Construction::Kronecker, None).await;
    rotation_case(gpu, 8192, Construction::Kronecker, Some(3)).await;
    rotation_case(gpu, 3072, Construction::BlockDiagonal, Some(3)).await;
    for n in [48, 128, 32, 64, 576, 1536, 768, 3072, 12_288, 960, 2560] {
        rotation_case(gpu, n, Construction::Kronecker, Some(0x5eed + n as u32)).await;
    }
    rotation_case(gpu, 576, Construction::BlockDiagonal, Some(7)).await;
    rotation_case(gpu, 10_368, Construction::Kronecker, Some(11)).await;
    rotation_case(gpu, 216, Construction::Kronecker, Some(12)).await;
    rotation_case(gpu, 4304, Construction::BlockDiagonal, Some(13)).await;
    rotation_case(gpu, 48, Construction::Kronecker, None).await;
    rotation_case(gpu, 4, Construction::Kronecker, Some(1)).await;
}

/// The reference integers (packed as the kernels pack them) and scales of `rows` rows of `x`
/// quantized by `act`.
fn quantized_reference(act: &ActivationQuant, x: &[f32], rows: usize) -> (Vec<u32>, Vec<f32>) {
    let cols = x.len() / rows;
    let words = activation_words(cols);
    let mut want_words = vec![0u32; rows * words];
    let mut want_scales = vec![0f32; rows];
    let mut q = vec![0i8; cols];
    for t in 0..rows {
        want_scales[t] = act.quantize(&x[t * cols..(t + 1) * cols], &mut q);
        for (j, &v) in q.iter().enumerate() {
            want_words[t * words + j / 4] |= u32::from(v as u8) << (8 * (j % 4));
        }
    }
    (want_words, want_scales)
}

/// [`quantized_reference`] of the rows of `x` rotated by `r`.
fn rotated_reference(r: &Rotation, act: &ActivationQuant, x: &[f32], rows: usize) -> (Vec<u32>, Vec<f32>) {
    let mut rotated = x.to_vec();
    r.apply_rows(&mut rotated).unwrap();
    quantized_reference(act, &rotated, rows)
}

/// The fused rotation and quantization ([`RotateQuantize`]) of `rows` rows against the reference
/// (rotate, then quantize each row), where the kernel supports the rotation; refused otherwise.
/// With `silu_mul` the rows are `silu(gate) · up`: the reference rotates what [`SiluMul`]
/// computes on this GPU (tested against PyTorch's SiLU in `tests/elementwise.rs`).
async fn rotate_quantize_case(
    gpu: &Gpu,
    rows: usize,
    n: usize,
    construction: Construction,
    bits: Bits,
    silu_mul: bool,
) {
    let r = Rotation::new(n, construction, Some(0x7a + n as u32)).unwrap();
    let act = ActivationQuant::new(bits, 0.9).unwrap();
    let x = activations(n as u64 + rows as u64, rows, n);
    let xb = upload(gpu, &x).await;
    let up = values(n as u64 + 5, rows * n).iter().map(|v| v * 3.0).collect::<Vec<_>>();
    let upb = upload(gpu, &up).await;
    let input = if silu_mul {
        let product = zeros(gpu, rows * n).await;
        let mut enc = encoder(gpu);
        SiluMul.encode(gpu, &mut enc, rows * n, &xb, &upb, &product).await.unwrap();
        submit(gpu, enc);
        gpu.read_f32(&product, rows * n).await.unwrap()
    } else {
        x.clone()
    };
    let (want_words, want_scales) = rotated_reference(&r, &act, &input, rows);
    let words = activation_words(n);
    let table = RotationTable::new(gpu, &r).await.unwrap();
    let (work, out) = (zeros(gpu, rows * n).await, zeros(gpu, rows * n).await);
    let (qb, sb) = (zeros(gpu, rows * words).await, zeros(gpu, rows).await);
    let mut enc = encoder(gpu);
    let what = format!("rotate+quantize {rows}x{n} {construction:?} {bits:?} silu_mul {silu_mul}");
    let up_input = silu_mul.then_some((&*upb, 0));
    let run = RotateQuantize
        .encode(gpu, &mut enc, &table, &act, (&xb, 0), up_input, rows, (&work, &out), (&qb, words), &sb)
        .await;
    if !RotateQuantize::supports(&table, words) {
        assert!(matches!(run, Err(RuntimeError::UnsupportedModel(_))), "{what}: {run:?}");
        return;
    }
    run.unwrap();
    submit(gpu, enc);
    assert_eq!(read_u32(gpu, &qb, rows * words).await, want_words, "{what}: integers");
    assert_bits(&format!("{what}: scales"), &gpu.read_f32(&sb, rows).await.unwrap(), &want_scales);
}

/// Every width [`check_rotations`] covers in one dispatch where the kernel supports it (blocks of
/// at least four values: not 216 = 108·2, which it refuses), over one token and more, and the
/// MLP's `silu(gate) · up` rotated and quantized in one dispatch.
async fn check_rotate_quantize(gpu: &Gpu) {
    let (i8b, i4b) = (Bits::Int8, Bits::Int4);
    let kron = Construction::Kronecker;
    for n in [4, 32, 48, 64, 128, 576, 768, 960, 1536, 2048, 2560, 3072, 4096, 8192, 12_288, 10_368, 216] {
        rotate_quantize_case(gpu, 1, n, kron, i8b, false).await;
    }
    for (rows, n) in [(5, 576), (70, 48), (3, 1536)] {
        rotate_quantize_case(gpu, rows, n, kron, i8b, false).await;
        rotate_quantize_case(gpu, rows, n, kron, i4b, false).await;
    }
    for n in [576, 3072, 4304] {
        rotate_quantize_case(gpu, 4, n, Construction::BlockDiagonal, i8b, false).await;
    }
    // an MLP's down projection input: 256M's 1536, 2.2B's 8192, the tiny fixture's 128
    for (rows, n) in [(1, 1536), (1, 8192), (6, 128)] {
        rotate_quantize_case(gpu, rows, n, kron, i8b, true).await;
        rotate_quantize_case(gpu, rows, n, kron, i4b, true).await;
    }
}

async fn quantize_case(gpu: &Gpu, rows: usize, cols: usize, bits: Bits, clip: f32) {
    let act = ActivationQuant::new(bits, clip).unwrap();
    let x = activations(cols as u64 * 3 + rows as u64, rows, cols);
    let words = activation_words(cols);
    let (want_words, want_scales) = quantized_reference(&act, &x, rows);
    let xb = upload(gpu, &x).await;
    let (qb, sb) = (zeros(gpu, rows * words).await, zeros(gpu, rows).await);
    let mut enc = encoder(gpu);
    Quantize.encode(gpu, &mut enc, &act, (&xb, 0), rows, cols, &qb, &sb).await.unwrap();
    submit(gpu, enc);
    let what = format!("quantize {rows}x{cols} {bits:?} clip {clip}");
    assert_eq!(read_u32(gpu, &qb, rows * words).await, want_words, "{what}: integers");
    assert_bits(&format!("{what}: scales"), &gpu.read_f32(&sb, rows).await.unwrap(), &want_scales);
}

async fn check_quantize(gpu: &Gpu) {
    for (rows, cols) in [(1, 1), (4, 7), (9, 48), (3, 576), (70, 33), (2, 12_288)] {
        quantize_case(gpu, rows, cols, Bits::Int8, 1.0).await;
        quantize_case(gpu, rows, cols, Bits::Int4, 0.9).await;
    }
    quantize_case(gpu, 6, 100, Bits::Int8, 0.37).await;
}

/// An RMSNorm that also quantizes its output ([`QuantizedOutput`]) in `layout`: `x` and the
/// normed rows bit-identical to the norm without it, the integers and scales to the reference
/// quantizing those rows (a zero row, where the scale is 0, included).
async fn norm_quantize_case(gpu: &Gpu, shape: NormShape, layout: NormLayout, residual: bool, bits: Bits) {
    let NormShape { rows, d } = shape;
    let act = ActivationQuant::new(bits, if bits == Bits::Int4 { 0.9 } else { 1.0 }).unwrap();
    let seed = (d * 7 + rows) as u64;
    let mut x = activations_scaled(seed, rows, d, 1.0);
    if rows > 1 {
        x[..d].fill(0.0);
    }
    let r = values(seed + 1, rows * d);
    let gamma: Vec<f32> = values(seed + 2, d).iter().map(|v| v * 2.0).collect();
    let gb = upload(gpu, &gamma).await;
    let rms = RmsNorm { eps: 1e-5 };
    let words = activation_words(d);
    // the norm alone, then with its output quantized, on the same input
    let mut outs = Vec::new();
    for quantize in [false, true] {
        let (xb, rb, yb) = (upload(gpu, &x).await, upload(gpu, &r).await, zeros(gpu, rows * d).await);
        let (qb, sb) = (zeros(gpu, rows * words).await, zeros(gpu, rows).await);
        let out = QuantizedOutput { activation: &act, words: &qb, scales: &sb };
        let mut enc = encoder(gpu);
        let x_in = (&*xb, residual.then_some(&*rb));
        rms.encode(gpu, &mut enc, layout, shape, x_in, &gb, (&yb, quantize.then_some(out))).await.unwrap();
        submit(gpu, enc);
        let q = read_u32(gpu, &qb, rows * words).await;
        let scales = gpu.read_f32(&sb, rows).await.unwrap();
        outs.push((
            gpu.read_f32(&xb, rows * d).await.unwrap(),
            gpu.read_f32(&yb, rows * d).await.unwrap(),
            q,
            scales,
        ));
    }
    let what = format!("norm + quantize {shape:?} {layout:?} residual {residual} {bits:?}");
    let ((x0, y0, ..), (x1, y1, q1, s1)) = (&outs[0], &outs[1]);
    assert_bits(&format!("{what}: x"), x1, x0);
    assert_bits(&format!("{what}: normed"), y1, y0);
    let (want_words, want_scales) = quantized_reference(&act, y1, rows);
    assert_eq!(q1, &want_words, "{what}: integers");
    assert_bits(&format!("{what}: scales"), s1, &want_scales);
}

async fn check_norm_quantize(gpu: &Gpu) {
    for shape in [(1, 576), (3, 7), (2, 257), (5, 1153), (1, 2048)].map(|(rows, d)| NormShape { rows, d }) {
        for layout in NormLayout::ALL {
            norm_quantize_case(gpu, shape, layout, true, Bits::Int8).await;
            norm_quantize_case(gpu, shape, layout, false, Bits::Int4).await;
        }
    }
}

/// One quantized layer: random integers and scales, optional group, bias and online rotation.
#[derive(Clone, Copy, Debug)]
struct LayerCase {
    out: usize,
    cols: usize,
    weight_bits: Bits,
    act_bits: Bits,
    group: Option<usize>,
    f16_scales: bool,
    bias: bool,
    rotate: bool,
}

/// Case `c`'s random integers, scales and bias from `seed`, its online rotations (signs from
/// `rotation_seed`) and its CPU reference.
struct LayerData {
    ints: Vec<i8>,
    scales: Vec<f32>,
    bias: Option<Vec<f32>>,
    online: Vec<Rotation>,
    reference: QuantLinear,
}

fn layer_data(c: &LayerCase, seed: u64, rotation_seed: u32) -> LayerData {
    let &LayerCase { out, cols, weight_bits, act_bits, group, f16_scales, bias, rotate } = c;
    let qmax = weight_bits.qmax() as f32;
    let ints: Vec<i8> = values(seed, out * cols).iter().map(|v| (v * qmax).round() as i8).collect();
    let groups = cols / group.unwrap_or(cols);
    let mut scales: Vec<f32> = values(seed + 1, out * groups).iter().map(|v| v.abs() * 0.02 + 1e-3).collect();
    if f16_scales {
        scales.iter_mut().for_each(|s| *s = half::f16::from_f32(*s).to_f32());
    }
    let bias = bias.then(|| values(seed + 2, out));
    let online = if rotate {
        vec![Rotation::new(cols, Construction::Kronecker, Some(rotation_seed)).unwrap()]
    } else {
        vec![]
    };
    let weights = QuantWeights::new(weight_bits, out, cols, group, ints.clone(), scales.clone()).unwrap();
    let reference = QuantLinear::new(weights, act_quant(act_bits), online.clone(), bias.clone()).unwrap();
    LayerData { ints, scales, bias, online, reference }
}

fn act_quant(bits: Bits) -> ActivationQuant {
    ActivationQuant::new(bits, if bits == Bits::Int4 { 0.9 } else { 1.0 }).unwrap()
}

/// The GPU layer of `data` (activations quantized to `act_bits`) with its uploaded `weights`.
async fn gpu_layer(gpu: &Gpu, data: &LayerData, act_bits: Bits, weights: QuantWeightsGpu) -> Linear {
    let mut tables = Vec::new();
    for r in &data.online {
        tables.push(RotationTable::new(gpu, r).await.unwrap());
    }
    let bias = match &data.bias {
        Some(b) => Some(Tensor::from_f32(gpu, "b", vec![b.len()], b).await.unwrap()),
        None => None,
    };
    Linear::from(linear::Matrix::Quant(Box::new(linear::QuantLinear {
        weights,
        activation: act_quant(act_bits),
        online: tables,
        bias,
    })))
}

/// The GPU layer of case `c` with random integers and scales from `seed` (rotated online with
/// signs from `rotation_seed`), and its CPU reference.
async fn build_layer(gpu: &Gpu, c: &LayerCase, seed: u64, rotation_seed: u32) -> (Linear, QuantLinear) {
    let data = layer_data(c, seed, rotation_seed);
    let weights = gpu_weights(gpu, c, &data.ints, &data.scales).await;
    (gpu_layer(gpu, &data, c.act_bits, weights).await, data.reference)
}

/// Layers of `cases` (alike but for their widths, no biases) stacked in one uploaded weight
/// ([`QuantWeightsGpu::stack`]), each with its CPU reference.
async fn build_stacked(gpu: &Gpu, cases: &[LayerCase], seed: u64) -> Vec<(Linear, QuantLinear)> {
    let data: Vec<LayerData> =
        cases.iter().enumerate().map(|(i, c)| layer_data(c, seed + 10 * i as u64, 5)).collect();
    let outs: Vec<usize> = cases.iter().map(|c| c.out).collect();
    let total = LayerCase { out: outs.iter().sum(), ..cases[0] };
    let ints: Vec<i8> = data.iter().flat_map(|d| d.ints.iter().copied()).collect();
    let scales: Vec<f32> = data.iter().flat_map(|d| d.scales.iter().copied()).collect();
    let views = gpu_weights(gpu, &total, &ints, &scales).await.stack(&outs).unwrap();
    let mut layers = Vec::new();
    for (d, w) in data.into_iter().zip(views) {
        layers.push((gpu_layer(gpu, &d, cases[0].act_bits, w).await, d.reference));
    }
    layers
}

/// Integers `ints` and `scales` of case `c` packed and uploaded as the GPU stores them.
async fn gpu_weights(gpu: &Gpu, c: &LayerCase, ints: &[i8], scales: &[f32]) -> QuantWeightsGpu {
    let &LayerCase { out, cols, weight_bits, group, f16_scales, .. } = c;
    let encoding = if weight_bits == Bits::Int4 { Encoding::I4 } else { Encoding::I8 };
    let packed = pack(weight_bits, ints, cols).unwrap();
    let scale_shape = match group {
        Some(g) => vec![out, cols / g],
        None => vec![out],
    };
    let scale_tensor = if f16_scales {
        let bytes: Vec<u8> = scales.iter().flat_map(|s| half::f16::from_f32(*s).to_le_bytes()).collect();
        Tensor::upload(gpu, "s", scale_shape, Encoding::F16, &bytes).await.unwrap()
    } else {
        Tensor::from_f32(gpu, "s", scale_shape, scales).await.unwrap()
    };
    QuantWeightsGpu::upload(gpu, "w", vec![out, cols], encoding, &packed, scale_tensor, group).await.unwrap()
}

async fn layer_case(gpu: &Gpu, rows: usize, c: LayerCase, seed: u64) {
    let (layer, reference) = build_layer(gpu, &c, seed, seed as u32).await;
    let LayerCase { out, cols, weight_bits, act_bits, group, f16_scales, bias, rotate } = c;
    let x = activations(seed + 3, rows, cols);
    let want = reference.forward(&x).unwrap();
    let xb = upload(gpu, &x).await;
    let yb = zeros(gpu, rows * out).await;
    let mut enc = encoder(gpu);
    layer.forward(gpu, &mut enc, &mut Scratch::default(), rows, &xb, &yb).await.unwrap();
    submit(gpu, enc);
    let got = gpu.read_f32(&yb, rows * out).await.unwrap();
    let what = format!(
        "layer {rows}x{cols} -> {out} w{}a{} group {group:?} f16 scales {f16_scales} bias {bias} rotate {rotate}",
        weight_bits.bits(),
        act_bits.bits()
    );
    assert_bits(&what, &got, &want);
}

/// Layers reading one input (q/k/v, gate/up) through `linear::forward_shared`: with the same
/// input steps the input is transformed and quantized once (fewer dispatches than one by one),
/// with other rotations each layer quantizes its own; every output bit-identical to its
/// reference either way.
async fn check_shared_input(gpu: &Gpu) {
    let (rows, cols) = (5, 64);
    for rotation_seeds in [[7, 7, 7], [7, 8, 7]] {
        let mut layers = Vec::new();
        for (i, (&out, &rs)) in [24, 8, 8].iter().zip(&rotation_seeds).enumerate() {
            let c = LayerCase { rotate: true, bias: i == 0, ..case(out, cols, Bits::Int4, Bits::Int8) };
            layers.push((build_layer(gpu, &c, 300 + 10 * i as u64, rs).await, out));
        }
        let x = activations(299, rows, cols);
        let xb = upload(gpu, &x).await;
        let mut ys = Vec::new();
        for (_, out) in &layers {
            ys.push(zeros(gpu, rows * out).await);
        }
        let pairs: Vec<(&Linear, &wgpu::Buffer)> =
            layers.iter().map(|((l, _), _)| l).zip(ys.iter().map(|y| &**y)).collect();
        let mut enc = encoder(gpu);
        linear::forward_shared(gpu, &mut enc, &mut Scratch::default(), rows, (&*xb).into(), &pairs)
            .await
            .unwrap();
        let shared_dispatches = enc.dispatches();
        submit(gpu, enc);
        let mut enc = encoder(gpu);
        for (layer, y) in &pairs {
            layer.forward(gpu, &mut enc, &mut Scratch::default(), rows, &xb, y).await.unwrap();
        }
        let separate_dispatches = enc.dispatches();
        drop(enc);
        let shared = rotation_seeds.iter().all(|&s| s == rotation_seeds[0]);
        assert_eq!(shared, shared_dispatches < separate_dispatches, "{rotation_seeds:?}");
        for (((_, reference), out), y) in layers.iter().zip(&ys) {
            let got = gpu.read_f32(y, rows * out).await.unwrap();
            assert_bits(
                &format!("shared input {rotation_seeds:?}, {out} outputs"),
                &got,
                &reference.forward(&x).unwrap(),
            );
        }
    }
}

/// Layers stacked in one weight ([`QuantWeightsGpu::stack`]) read through
/// `linear::forward_shared`: one rotation and quantization, then one product writing every
/// layer's output (two dispatches for all), each output bit-identical to its layer's reference —
/// for one token and for blocks of tokens, INT8 and INT4, per channel and grouped, f32 and f16
/// scales, two and three layers. Boundaries off the tile grid are not stackable.
async fn check_stacked(gpu: &Gpu) {
    let (i8b, i4b) = (Bits::Int8, Bits::Int4);
    let base = |out, w| LayerCase { rotate: true, ..case(out, 128, w, i8b) };
    let cases = [
        vec![base(64, i8b), base(32, i8b)],
        vec![
            LayerCase { f16_scales: true, ..base(128, i8b) },
            LayerCase { f16_scales: true, ..base(40, i8b) },
        ],
        vec![LayerCase { group: Some(64), ..base(96, i4b) }, LayerCase { group: Some(64), ..base(64, i4b) }],
        vec![base(64, i4b), base(64, i4b), base(36, i4b)],
        vec![LayerCase { rotate: false, ..base(128, i8b) }, LayerCase { rotate: false, ..base(128, i8b) }],
    ];
    for (i, parts) in cases.iter().enumerate() {
        let layers = build_stacked(gpu, parts, 700 + 50 * i as u64).await;
        for rows in [1, 5] {
            let x = activations(698 + i as u64, rows, 128);
            let xb = upload(gpu, &x).await;
            let mut ys = Vec::new();
            for c in parts {
                ys.push(zeros(gpu, rows * c.out).await);
            }
            let pairs: Vec<(&Linear, &wgpu::Buffer)> =
                layers.iter().map(|(l, _)| l).zip(ys.iter().map(|y| &**y)).collect();
            let mut enc = encoder(gpu);
            linear::forward_shared(gpu, &mut enc, &mut Scratch::default(), rows, (&*xb).into(), &pairs)
                .await
                .unwrap();
            let dispatches = enc.dispatches();
            submit(gpu, enc);
            let what = format!("stacked {parts:?}, {rows} rows");
            // as many dispatches as the first layer alone: its input steps, one product
            let mut alone = encoder(gpu);
            linear::forward_shared(
                gpu,
                &mut alone,
                &mut Scratch::default(),
                rows,
                (&*xb).into(),
                &pairs[..1],
            )
            .await
            .unwrap();
            assert_eq!(dispatches, alone.dispatches(), "{what}: one product for all layers");
            drop(alone);
            for ((_, reference), (c, y)) in layers.iter().zip(parts.iter().zip(&ys)) {
                let got = gpu.read_f32(y, rows * c.out).await.unwrap();
                assert_bits(&format!("{what}: {} outputs", c.out), &got, &reference.forward(&x).unwrap());
            }
        }
    }
    let layout = WeightLayout::new(128, Encoding::I8, None, Encoding::F32).unwrap();
    let stackable = |outs: &[usize]| QuantWeightsGpu::stackable(gpu, outs, &layout);
    assert!(stackable(&[64, 64, 8]));
    assert!(!stackable(&[24, 8]), "a layer starting off the tile grid");
    // the second layer's scales start 128 bytes in: stackable where a binding may start there
    let align = u64::from(gpu.caps.storage_offset_alignment.max(4));
    assert_eq!(stackable(&[32, 8]), 128 % align == 0, "scales at an offset a binding may not start at");
    assert!(!stackable(&[64]), "one layer");
}

fn case(out: usize, cols: usize, w: Bits, a: Bits) -> LayerCase {
    LayerCase {
        out,
        cols,
        weight_bits: w,
        act_bits: a,
        group: None,
        f16_scales: false,
        bias: false,
        rotate: false,
    }
}

async fn check_layers(gpu: &Gpu) {
    let (i8b, i4b) = (Bits::Int8, Bits::Int4);
    let mut seed = 10;
    for rows in [1, 3, 4, 5, 37] {
        for (out, cols) in [(1, 1), (13, 7), (48, 48), (5, 33), (128, 48)] {
            for (w, a) in [(i8b, i8b), (i4b, i8b), (i4b, i4b)] {
                seed += 1;
                layer_case(gpu, rows, case(out, cols, w, a), seed).await;
            }
        }
        seed += 1;
        layer_case(gpu, rows, LayerCase { group: Some(64), ..case(19, 128, i4b, i8b) }, seed).await;
        layer_case(gpu, rows, LayerCase { group: Some(128), bias: true, ..case(9, 384, i4b, i4b) }, seed + 1)
            .await;
        layer_case(gpu, rows, LayerCase { f16_scales: true, bias: true, ..case(31, 48, i8b, i8b) }, seed + 2)
            .await;
        layer_case(
            gpu,
            rows,
            LayerCase { group: Some(64), f16_scales: true, ..case(7, 192, i4b, i8b) },
            seed + 3,
        )
        .await;
        layer_case(gpu, rows, LayerCase { rotate: true, bias: true, ..case(40, 48, i8b, i8b) }, seed + 4)
            .await;
        layer_case(gpu, rows, LayerCase { rotate: true, ..case(32, 576, i4b, i4b) }, seed + 5).await;
    }
    // The 2.2B decoder's widths: o_proj (2048, rotated online) and down_proj (8192).
    layer_case(gpu, 7, LayerCase { rotate: true, ..case(24, 2048, i8b, i8b) }, 97).await;
    layer_case(gpu, 7, case(24, 8192, i8b, i8b), 96).await;
    layer_case(gpu, 1, LayerCase { group: Some(128), ..case(24, 8192, i4b, i8b) }, 95).await;
    layer_case(gpu, 7, LayerCase { rotate: true, ..case(24, 8192, i8b, i8b) }, 98).await;
    // A vision-MLP-like layer over many rows.
    layer_case(gpu, 300, LayerCase { rotate: true, bias: true, ..case(64, 128, i4b, i8b) }, 99).await;
}

/// The integer product with one-word and with four-word loads ([`QMatmul::new`]), for one
/// token split between invocations ([`QMatmul::split_k`]), and for blocks of INT8 products with
/// f32 sums ([`QMatmul::float_sums`]; chunks of 1024 values, crossed by the 2080-column case),
/// gives the reference's bits on the same rows, partial blocks of tokens and columns included,
/// and weights whose columns are padded to whole groups of four words ([`WeightLayout`]). Layers
/// pick four-word loads where the widths allow ([`QMatmul::vec4_fits`]) — for blocks of tokens
/// unless the adapter reads INT4 ones one word at a time
/// ([`pocketvlm_runtime::Capabilities::one_word_int4_blocks`]) — and one-word loads otherwise,
/// the split for one token on GPUs only, and f32 sums on CPU adapters only
/// ([`pocketvlm_runtime::Capabilities::float_block_sums`]). Four-word loads on widths that do
/// not allow them (narrow columns, activation rows of a word count not a multiple of 4), f32
/// sums without them, and a split over several tokens, are refused.
async fn check_loads(gpu: &Gpu) {
    // one-word INT4 blocks on the browser's CPU adapter only (SwiftShader in Chromium)
    let browser_cpu = cfg!(target_arch = "wasm32") && gpu.caps.cpu;
    assert_eq!(gpu.caps.one_word_int4_blocks, browser_cpu, "one-word INT4 blocks on {:?}", gpu.adapter.name);
    assert_eq!(gpu.caps.float_block_sums, gpu.caps.cpu, "f32 block sums on {:?}", gpu.adapter.name);
    let (i8b, i4b) = (Bits::Int8, Bits::Int4);
    let aligned = [
        case(13, 64, i8b, i8b),
        // 19 column quads: two whole tiles of the weight layout and a last one of three
        case(76, 64, i8b, i8b),
        // more words than a texture row holds: whole rows and a padded last one
        case(1100, 64, i8b, i8b),
        case(6, 96, i4b, i8b),
        LayerCase { group: Some(64), f16_scales: true, ..case(9, 256, i4b, i8b) },
        LayerCase { group: Some(128), ..case(5, 256, i4b, i4b) },
        // 33 INT8 and 33 INT4 words per column, padded to 36
        case(13, 132, i8b, i8b),
        case(6, 264, i4b, i4b),
        // 520 INT8 words per column: f32-sum chunks of 64, 64 and 2 four-word steps
        case(7, 2080, i8b, i8b),
    ];
    for (n, c) in aligned.iter().enumerate() {
        let seed = 400 + 10 * n as u64;
        let (_, reference) = build_layer(gpu, c, seed, 1).await;
        let weights = gpu_weights(gpu, c, &reference.weights.values, &reference.weights.scales).await;
        for rows in [1, 3, 6, 37] {
            let stride = activation_words(c.cols);
            let xs = activations(seed + 3, rows, c.cols);
            let x = upload(gpu, &xs).await;
            let words = zeros(gpu, rows * stride).await;
            let a_scales = zeros(gpu, rows).await;
            let mut enc = encoder(gpu);
            Quantize
                .encode(gpu, &mut enc, &reference.activation, (&x, 0), rows, c.cols, &words, &a_scales)
                .await
                .unwrap();
            let a = QuantizedRows::new(&words, &a_scales, rows, stride);
            let picked = QMatmul::for_rows(gpu, &weights, &a, false);
            let wide = rows == 1 || !(gpu.caps.one_word_int4_blocks && c.weight_bits == Bits::Int4);
            assert_eq!(
                picked.vec4, wide,
                "{c:?}, {rows} rows: four-word loads fit, picked where the adapter wants"
            );
            assert_eq!(picked.split_k, rows == 1 && !gpu.caps.cpu, "{c:?}: split for one token on GPUs");
            let int8_blocks = rows > 1 && c.weight_bits == Bits::Int8;
            assert_eq!(
                picked.float_sums,
                gpu.caps.float_block_sums && int8_blocks,
                "{c:?}, {rows} rows: f32 sums for blocks of INT8 products where the adapter wants"
            );
            let mut variants = Vec::new();
            for vec4 in [false, true] {
                let plain = QMatmul::new(&weights, rows, false, vec4);
                variants.push(plain);
                if rows == 1 {
                    variants.push(QMatmul { split_k: true, ..plain });
                }
            }
            if int8_blocks {
                variants.push(QMatmul { float_sums: true, ..QMatmul::new(&weights, rows, false, true) });
            }
            let mut outputs = Vec::new();
            for kernel in variants {
                let y = zeros(gpu, rows * c.out).await;
                kernel.encode(gpu, &mut enc, &a, &weights, None, (&y, 0)).await.unwrap();
                outputs.push((kernel, y));
            }
            submit(gpu, enc);
            let want = reference.forward(&xs).unwrap();
            for (kernel, y) in &outputs {
                let got = gpu.read_f32(y, rows * c.out).await.unwrap();
                let QMatmul { vec4, split_k, float_sums, .. } = kernel;
                let what = format!(
                    "{rows} rows of {c:?}: four-word {vec4}, split {split_k}, f32 sums {float_sums} vs the reference"
                );
                assert_bits(&what, &got, &want);
            }
        }
    }
    // Widths that do not allow four-word loads: columns of 9 INT8 words and of 6 and 5 INT4 words
    // (too narrow to pad), and activation rows of 9 and 13 words (a latent cache's narrowest)
    // over padded columns.
    let misaligned = [
        (case(4, 36, i8b, i8b), activation_words(36)),
        (case(4, 48, i4b, i8b), activation_words(48)),
        (case(4, 40, i4b, i4b), activation_words(40)),
        (case(4, 132, i8b, i8b), 33),
        (case(4, 264, i4b, i8b), 67),
    ];
    for (c, stride) in misaligned {
        let (_, reference) = build_layer(gpu, &c, 7, 1).await;
        let weights = gpu_weights(gpu, &c, &reference.weights.values, &reference.weights.scales).await;
        let words = zeros(gpu, rows_words(2, stride, c.cols)).await;
        let scales = zeros(gpu, 2).await;
        let y = zeros(gpu, 2 * c.out).await;
        let a = QuantizedRows::new(&words, &scales, 2, stride);
        assert!(!QMatmul::for_rows(gpu, &weights, &a, false).vec4, "{c:?}: four-word loads do not fit");
        let forced = QMatmul::new(&weights, 2, false, true);
        match forced.encode(gpu, &mut encoder(gpu), &a, &weights, None, (&y, 0)).await {
            Err(RuntimeError::Shape(m)) => assert!(m.contains("four-word"), "{m}"),
            other => panic!("{c:?}: expected a Shape error, got {other:?}"),
        }
        let float = QMatmul { float_sums: true, ..QMatmul::new(&weights, 2, false, false) };
        match float.encode(gpu, &mut encoder(gpu), &a, &weights, None, (&y, 0)).await {
            Err(RuntimeError::Shape(m)) => assert!(m.contains("f32-sum"), "{m}"),
            other => {
                panic!("{c:?}: expected a Shape error for f32 sums without four-word loads, got {other:?}")
            }
        }
        let split = QMatmul { split_k: true, ..QMatmul::new(&weights, 2, false, false) };
        match split.encode(gpu, &mut encoder(gpu), &a, &weights, None, (&y, 0)).await {
            Err(RuntimeError::Shape(m)) => assert!(m.contains("split-k"), "{m}"),
            other => panic!("{c:?}: expected a Shape error for a split over 2 tokens, got {other:?}"),
        }
        // Bindings narrower than the rows, or wider than the buffers hold, are typed errors.
        let plain = QMatmul::new(&weights, 2, false, false);
        for rows in [1, 3] {
            let a = QuantizedRows::new(&words, &scales, 2, stride).spanning(rows);
            match plain.encode(gpu, &mut encoder(gpu), &a, &weights, None, (&y, 0)).await {
                Err(RuntimeError::Shape(_)) => {}
                other => panic!("{c:?}: rows bound as {rows}: expected a Shape error, got {other:?}"),
            }
        }
    }
}

/// 4 KiB bindings: inputs and outputs in row passes, weights and scales in column panels; on the
/// adapter's own kind or `pretend`ing another.
async fn check_split_binding(pretend: Option<Pretend>) {
    let options = DeviceOptions { max_storage_binding: Some(4096), pretend, ..Default::default() };
    let gpu = Gpu::new(&options).await.unwrap();
    let (i8b, i4b) = (Bits::Int8, Bits::Int4);
    // row passes of 16 rows
    layer_case(&gpu, 50, LayerCase { bias: true, ..case(16, 48, i8b, i8b) }, 1).await;
    // weight and f16 scales in column panels (the last one narrower)
    layer_case(&gpu, 3, LayerCase { f16_scales: true, bias: true, ..case(300, 32, i8b, i8b) }, 2).await;
    layer_case(&gpu, 1, LayerCase { group: Some(64), ..case(200, 128, i4b, i8b) }, 3).await;
    // row passes of 8 rows with a rotation in the scratch
    layer_case(&gpu, 40, LayerCase { group: Some(64), rotate: true, ..case(8, 128, i4b, i8b) }, 4).await;
    // a norm quantizing its output in row chunks of 64 rows (the scales' 256-byte alignment)
    for layout in NormLayout::ALL {
        norm_quantize_case(&gpu, NormShape { rows: 150, d: 8 }, layout, true, i8b).await;
    }
}

/// What the kernels cannot compute is refused with a typed error naming the reason, not run.
async fn check_unsupported(gpu: &Gpu) {
    let unsupported = |r: Result<(), RuntimeError>, what: &str| match r {
        Err(RuntimeError::UnsupportedModel(m)) => assert!(m.contains(what), "{m}"),
        other => panic!("expected UnsupportedModel({what}), got {other:?}"),
    };
    let w = Tensor::upload(gpu, "w", vec![4, 8], Encoding::I4, &[0; 16]).await.unwrap();
    let upload = async |shape: Vec<usize>, encoding, bytes: &[u8], s: &Tensor, group| {
        QuantWeightsGpu::upload(gpu, "w", shape, encoding, bytes, s.clone(), group).await.map(|_| ())
    };
    // per-channel scales given for a grouped layer
    let s = Tensor::from_f32(gpu, "s", vec![4], &[1.0; 4]).await.unwrap();
    unsupported(upload(vec![4, 8], Encoding::I4, &[0; 16], &s, Some(8)).await, "scales");
    // bf16 scales
    let s16 = Tensor::upload(gpu, "s", vec![4], Encoding::BF16, &[0; 8]).await.unwrap();
    unsupported(upload(vec![4, 8], Encoding::I4, &[0; 16], &s16, None).await, "bf16");
    // a float tensor as a packed weight
    unsupported(upload(vec![4, 8], Encoding::F32, &[0; 128], &s, None).await, "i8 or i4");
    // packed bytes that are not the shape's
    match upload(vec![4, 8], Encoding::I4, &[0; 12], &s, None).await {
        Err(RuntimeError::Shape(m)) => assert!(m.contains("12 bytes"), "{m}"),
        other => panic!("expected a Shape error for short weight bytes, got {other:?}"),
    }
    // a lookup table with bf16 scales
    unsupported(EmbedTable::new(w, Some(s16)).map(|_| ()), "embedding table");
}

/// A GPU, as far as kernel choice goes, on whatever adapter runs the tests.
const GPU: Pretend = Pretend { cpu: false, shader_f16: false, subgroups: false };

/// The kernels whose workgroup reductions go through subgroups where the device has them (the
/// quantization's and the rotation's maximum, the norm's sums and maximum), on a GPU with them:
/// the same bits as the reference.
#[cfg(not(target_arch = "wasm32"))]
async fn check_subgroup_reductions() {
    let gpu = common::subgroup_gpu().await;
    check_quantize(&gpu).await;
    check_rotate_quantize(&gpu).await;
    check_norm_quantize(&gpu).await;
}

/// The rotations, the quantization and the product as the adapter kind `pretend` gets them (the
/// adapter's own without), against the reference.
async fn check_variants(pretend: Option<Pretend>) {
    let gpu = Gpu::new(&DeviceOptions { pretend, ..Default::default() }).await.expect("a GPU adapter");
    check_rotations(&gpu).await;
    check_quantize(&gpu).await;
    check_rotate_quantize(&gpu).await;
    check_norm_quantize(&gpu).await;
    check_layers(&gpu).await;
    check_shared_input(&gpu).await;
    check_stacked(&gpu).await;
    check_loads(&gpu).await;
}

/// The products with the weights' words in the storage this adapter does not pick by default
/// (`kernels::quant::TiledWords`: textures on CPU adapters, storage buffers elsewhere; the
/// default runs in [`check_variants`]): the same bits against the reference, and the storage is
/// the one asked for.
async fn check_other_weight_storage() {
    let default = Gpu::new(&DeviceOptions::default()).await.expect("a GPU adapter");
    assert_eq!(default.caps.weight_textures, default.caps.cpu, "textures on CPU adapters only");
    let textures = !default.caps.weight_textures;
    drop(default);
    let gpu = Gpu::new(&DeviceOptions { weight_textures: Some(textures), ..Default::default() })
        .await
        .expect("a GPU adapter");
    let c = case(13, 64, Bits::Int8, Bits::Int8);
    let w = gpu_weights(&gpu, &c, &[1; 13 * 64], &[1.0; 13]).await;
    assert_eq!(w.in_texture(), textures, "the words' storage follows DeviceOptions::weight_textures");
    check_layers(&gpu).await;
    check_stacked(&gpu).await;
    check_loads(&gpu).await;
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn quant_kernels_match_reference() {
    let gpu =
        pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter (lavapipe in CI)");
    pollster::block_on(check_variants(None));
    pollster::block_on(check_unsupported(&gpu));
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn quant_gpu_variants_match_reference() {
    pollster::block_on(check_variants(Some(GPU)));
    pollster::block_on(check_subgroup_reductions());
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn quant_other_weight_storage_matches_reference() {
    pollster::block_on(check_other_weight_storage());
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn quant_split_binding() {
    pollster::block_on(check_split_binding(None));
    pollster::block_on(check_split_binding(Some(GPU)));
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn quant_kernels_match_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_variants(None).await;
    check_unsupported(&gpu).await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn quant_gpu_variants_match_reference_in_browser() {
    check_variants(Some(GPU)).await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn quant_other_weight_storage_matches_reference_in_browser() {
    check_other_weight_storage().await;
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn quant_split_binding_in_browser() {
    check_split_binding(None).await;
    check_split_binding(Some(GPU)).await;
}
