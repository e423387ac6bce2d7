//! Throughput of single kernels at the 256M model's shapes, in multiply-accumulates per second,
//! to set against what the adapter can do at all (`../shared/ceiling/` beside the project
//! measures the best barrier-free GEMM and GEMV a WebGPU adapter runs). `cargo xtask bench
//! --kernels` runs it natively and in Chromium.
//!
//! Each case records its kernel call into its own command buffer (short ones several times over,
//! so the submission's round trip does not dominate), runs it once to compile and warm up, then
//! [`REPEATS`] times, waiting for the GPU each time; the best time per call counts. Inputs are
//! deterministic small values (their contents do not change the work).

use pocketvlm_format::Encoding;
use pocketvlm_format::quant::{ActivationQuant, Bits, Construction, Rotation};
use serde::{Deserialize, Serialize};

use super::values;
use crate::device::{DeviceOptions, Gpu, Pretend, now_ms};
use crate::encoder::Encoder;
use crate::error::{Result, RuntimeError};
use crate::kernels::argmax::Argmax;
use crate::kernels::attention::{Attention, AttentionShape, AttentionVariant, RopeTable, ValueKind, Values};
use crate::kernels::elementwise::Add;
use crate::kernels::matmul::{MatVec, Matmul, MatmulShape};
use crate::kernels::norm::{LayerNorm, NormLayout, NormShape, QuantizedOutput, RmsNorm};
use crate::kernels::quant::{
    FLOAT_SUM_QUADS, FLOAT_SUM_TOKENS, QMatmul, QuantWeightsGpu, Quantize, QuantizedRows, Rotate,
    RotationTable, activation_words,
};
use crate::kernels::rope::rope_table;
use crate::kernels::rotate_quantize::RotateQuantize;
use crate::memory::DeviceBuffer;
use crate::tensor::Tensor;

/// Prefix of the line the browser bench prints each [`KernelReport`] on.
pub const KERNEL_REPORT_PREFIX: &str = "POCKETVLM_KERNEL_BENCH ";

/// Timed runs per case after the warm-up.
pub const REPEATS: usize = 3;
/// A case of fewer multiply-accumulates is recorded several times per timed run (at most
/// [`MAX_COPIES`]), about this many in all; its time is the run's over the copies.
const COPIES_UP_TO_MACS: f64 = 2e7;
const MAX_COPIES: usize = 32;

/// One kernel at one shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelReport {
    /// What ran, e.g. `matmul tiled f32`.
    pub kernel: String,
    /// The shape, e.g. `[1024, 768] · [768, 768]ᵀ`.
    pub shape: String,
    pub macs: f64,
    /// Best of [`REPEATS`] runs, milliseconds (submission to completion).
    pub best_ms: f64,
    /// Billions of multiply-accumulates per second at the best run.
    pub gmacs: f64,
}

/// The vision tower's square projections (`[1024 patches, 768] · [768, 768]ᵀ`, the ceiling
/// probe's GEMM shape), the decoder's up projection at decode (`[1, 576] · [1536, 576]ᵀ`; the
/// integer product also over [`COLD_BYTES`] of distinct weights, streamed from memory as in a
/// decode step), the 49 152-column GEMV of the ceiling probe, the key rebuild of a latent cache
/// layer at 96 cached tokens (the demo model's `k_up`, `[96, 384] · [192, 384]ᵀ`), and one vision
/// attention head group.
const GEMM: MatmulShape = MatmulShape { m: 1024, n: 768, k: 768 };
const REBUILD: MatmulShape = MatmulShape { m: 96, n: 192, k: 384 };
const DECODE: MatmulShape = MatmulShape { m: 1, n: 1536, k: 576 };
const GEMV: MatmulShape = MatmulShape { m: 1, n: 49_152, k: 576 };

/// Time every case on `gpu`.
pub async fn measure_kernels(gpu: &Gpu) -> Result<Vec<KernelReport>> {
    let mut reports = Vec::new();
    for shape in [GEMM, DECODE, GEMV, REBUILD] {
        let x = values_buffer(gpu, shape.m * shape.k, 1).await?;
        let y = gpu.zeroed_buffer("y", (shape.m * shape.n * 4) as u64).await?;
        let w32 = values_buffer(gpu, shape.n * shape.k, 2).await?;
        let w16 = gpu.zeroed_buffer("w bf16", (shape.n * shape.k * 2) as u64).await?;
        for (name, weights, w) in [("f32", Encoding::F32, &w32), ("bf16", Encoding::BF16, &w16)] {
            let kernel = Matmul { bias: false, weights, f16_storage: false };
            if shape.m > MatVec::MAX_ROWS {
                let label = format!("matmul tiled {name}");
                reports.push(
                    time(gpu, &label, shape, async |gpu: &Gpu, e: &mut Encoder| {
                        kernel.encode_tiled(gpu, e, shape, &x, w, None, &y).await
                    })
                    .await?,
                );
                let label = format!("matmul register-blocked {name}");
                reports.push(
                    time(gpu, &label, shape, async |gpu: &Gpu, e: &mut Encoder| {
                        kernel.encode_blocked(gpu, e, shape, &x, w, None, &y).await
                    })
                    .await?,
                );
            } else {
                for per_column in [false, true] {
                    let mv = MatVec { bias: false, weights, rows: shape.m, per_column, f16_storage: false };
                    let label = format!("matvec {} {name}", if per_column { "per-column" } else { "reduce" });
                    reports.push(
                        time(gpu, &label, shape, async |gpu: &Gpu, e: &mut Encoder| {
                            mv.encode(gpu, e, shape.n, shape.k, &x, w, None, &y).await
                        })
                        .await?,
                    );
                }
            }
        }
        for encoding in [Encoding::I8, Encoding::I4] {
            let weights = quantized_weights(gpu, shape, encoding).await?;
            let (words, scales, stride) = quantized_activations(gpu, shape).await?;
            let rows = QuantizedRows::new(&words, &scales, shape.m, stride);
            // One token also split between 16 invocations per column quad (the GPUs' variant).
            let splits: &[bool] = if shape.m == 1 { &[false, true] } else { &[false] };
            for vec4 in [false, true] {
                for &split_k in splits {
                    let kernel = QMatmul { split_k, ..QMatmul::new(&weights, shape.m, false, vec4) };
                    let loads = if vec4 { "4-word loads" } else { "1-word loads" };
                    let block = match (kernel.gemv, split_k) {
                        (_, true) => "1 token × 4 columns per 16 invocations",
                        (true, false) => "1 token × 4 columns",
                        (false, false) => "4×4 block",
                    };
                    let label = format!("qmatmul {} ({block}, {loads})", encoding.tag());
                    reports.push(
                        time(gpu, &label, shape, async |gpu: &Gpu, e: &mut Encoder| {
                            kernel.encode(gpu, e, &rows, &weights, None, (&y, 0)).await
                        })
                        .await?,
                    );
                }
            }
            if shape.m > 1 && encoding == Encoding::I8 {
                let kernel = QMatmul { float_sums: true, ..QMatmul::new(&weights, shape.m, false, true) };
                let label = format!(
                    "qmatmul i8 ({FLOAT_SUM_TOKENS}×{} block, f32 sums, 4-word loads)",
                    4 * FLOAT_SUM_QUADS
                );
                reports.push(
                    time(gpu, &label, shape, async |gpu: &Gpu, e: &mut Encoder| {
                        kernel.encode(gpu, e, &rows, &weights, None, (&y, 0)).await
                    })
                    .await?,
                );
            }
        }
    }
    reports.extend(cold_decode(gpu).await?);
    if gpu.caps.weight_textures {
        // the same products with the words in storage buffers, as other adapters get them
        let options = DeviceOptions { weight_textures: Some(false), ..Default::default() };
        reports.extend(cold_decode(&Gpu::new(&options).await?).await?);
    }
    reports.extend(attention(gpu).await?);
    reports.extend(rotations(gpu).await?);
    // A GPU's reductions with subgroups where the adapter has them (a CPU adapter does not use
    // them itself), and without, as the browser runs them.
    let has = if gpu.caps.subgroups { &[true, false][..] } else { &[false] };
    for &subgroups in has {
        let pretend = Pretend { cpu: false, shader_f16: gpu.caps.shader_f16, subgroups };
        let options = DeviceOptions { pretend: Some(pretend), ..Default::default() };
        let suffix = if subgroups { ", subgroups" } else { ", no subgroups" };
        reports.extend(reductions(&Gpu::new(&options).await?, suffix).await?);
    }
    reports.push(dispatch_floor(gpu).await?);
    Ok(reports)
}

/// The kernels whose workgroups reduce a row, as `gpu` (a GPU as far as kernel choice goes) runs
/// them, `suffix` naming it:
/// a decode row's RMS norm quantizing its output in the workgroup layout (the GPUs') and the narrow
/// one (lavapipe's for a few rows) and the vision tower's layer norm over a tile in the workgroup
/// layout (CPU adapters run many rows a row per invocation), the greedy argmax of
/// a vocabulary row, and the rotation with quantization of one decode token (`[1, 1536]`). The
/// count is the values each reads.
async fn reductions(gpu: &Gpu, suffix: &str) -> Result<Vec<KernelReport>> {
    let mut reports = Vec::new();
    let act = ActivationQuant::new(Bits::Int8, 1.0)
        .map_err(|e| RuntimeError::UnsupportedModel(format!("bench activation quantization: {e}")))?;
    for (rows, d) in [(1, 576), (1024, 768)] {
        let x = values_buffer(gpu, rows * d, 11).await?;
        let gamma = values_buffer(gpu, d, 12).await?;
        let y = gpu.zeroed_buffer("normalised", (rows * d * 4) as u64).await?;
        let shape = NormShape { rows, d };
        let label = format!("[{rows}, {d}]");
        let values = (rows * d) as f64;
        if rows == 1 {
            let words = gpu.zeroed_buffer("norm integers", (activation_words(d) * 4) as u64).await?;
            let scales = gpu.zeroed_buffer("norm scales", 4).await?;
            let quantized = QuantizedOutput { activation: &act, words: &words, scales: &scales };
            for (layout, name) in
                [(NormLayout::Workgroup, "workgroup"), (NormLayout::NarrowWorkgroup, "narrow workgroup")]
            {
                let kernel = format!("RMS norm + INT8 quantize, {name} layout{suffix} (values)");
                let report =
                    time_macs(gpu, &kernel, label.clone(), values, async |gpu: &Gpu, e: &mut Encoder| {
                        let norm = RmsNorm { eps: 1e-5 };
                        norm.encode(gpu, e, layout, shape, (&x, None), &gamma, (&y, Some(quantized))).await
                    })
                    .await?;
                reports.push(report);
            }
        } else {
            let kernel = format!("layer norm, workgroup layout{suffix} (values)");
            let report = time_macs(gpu, &kernel, label, values, async |gpu: &Gpu, e: &mut Encoder| {
                let norm = LayerNorm { eps: 1e-6 };
                norm.encode(gpu, e, NormLayout::Workgroup, shape, (&x, None), (&gamma, &gamma), &y).await
            })
            .await?;
            reports.push(report);
        }
    }
    let n = GEMV.n;
    let logits = values_buffer(gpu, n, 13).await?;
    let index = gpu.zeroed_buffer("argmax", 4).await?;
    let kernel = format!("argmax{suffix} (values)");
    reports.push(
        time_macs(gpu, &kernel, format!("[1, {n}]"), n as f64, async |gpu: &Gpu, e: &mut Encoder| {
            Argmax.encode(gpu, e, 1, n, &logits, &index).await
        })
        .await?,
    );
    let case = RotationCase::new(gpu, 1, 1536, 14).await?;
    let (n, _, _) = case.table.factors();
    let kernel = format!("rotate + quantize in one dispatch{suffix} (values)");
    reports.push(
        time_macs(gpu, &kernel, format!("[1, {n}]"), n as f64, async |gpu: &Gpu, e: &mut Encoder| {
            case.rotate_quantize(gpu, e, &act).await
        })
        .await?,
    );
    Ok(reports)
}

/// What one dispatch costs whatever it does: the residual add of one decode token's row (576
/// values, one workgroup, 4.5 KiB touched), recorded [`MAX_COPIES`] times in a row. Set against
/// a decode step's dispatch count (`bench` prints it), it is the step's floor; on a CPU adapter
/// each dispatch hands its workgroups to the driver's threads and waits for them.
async fn dispatch_floor(gpu: &Gpu) -> Result<KernelReport> {
    let n = 576;
    let acc = values_buffer(gpu, n, 7).await?;
    let x = values_buffer(gpu, n, 8).await?;
    let label = "add of one decode token's row (the dispatch floor)";
    time_macs(gpu, label, format!("1 token × {n}"), n as f64, async |gpu: &Gpu, e: &mut Encoder| {
        Add.encode(gpu, e, n, n, &acc, &x).await
    })
    .await
}

/// Bytes of distinct weights [`cold_decode`] reads in turn, at least: more than a CPU adapter's
/// last-level cache (32 MiB on this project's machine), as a decode step reads each of a model's
/// weights once.
const COLD_BYTES: usize = 64 << 20;

/// The one-token integer product at the decode shape over many distinct weights in turn, each
/// read once per timed run: the weights come from memory, not from a cache warmed by the runs
/// before (the cases above read one weight again and again).
async fn cold_decode(gpu: &Gpu) -> Result<Vec<KernelReport>> {
    let shape = DECODE;
    let mut reports = Vec::new();
    let y = gpu.zeroed_buffer("y", (shape.n * 4) as u64).await?;
    for encoding in [Encoding::I8, Encoding::I4] {
        let count = COLD_BYTES.div_ceil(encoding.byte_len(&[shape.n, shape.k]));
        let mut all = Vec::with_capacity(count);
        for _ in 0..count {
            all.push(quantized_weights(gpu, shape, encoding).await?);
        }
        let (words, scales, stride) = quantized_activations(gpu, shape).await?;
        let rows = QuantizedRows::new(&words, &scales, 1, stride);
        for vec4 in [false, true] {
            let kernel = QMatmul::new(&all[0], 1, false, vec4);
            let loads = if vec4 { "4-word loads" } else { "1-word loads" };
            let words = if all[0].in_texture() { "texture" } else { "buffer" };
            let label = format!(
                "qmatmul {} (1 token × 4 columns, {loads}, {count} weights in turn, words in a {words})",
                encoding.tag()
            );
            let macs = (count * shape.n * shape.k) as f64;
            reports.push(
                time_macs(gpu, &label, dims(shape), macs, async |gpu: &Gpu, e: &mut Encoder| {
                    for weights in &all {
                        kernel.encode(gpu, e, &rows, weights, None, (&y, 0)).await?;
                    }
                    Ok(())
                })
                .await?,
            );
        }
    }
    Ok(reports)
}

/// Online rotations (Kronecker, with signs) at the 256M model's widths: the vision tower's
/// 768 and 3072 over one tile's 1024 patches, the decoder's 576 and 1536 at decode; the shape
/// column names the factors `m·p` (core order, Walsh–Hadamard block). The count in the G MAC/s
/// column is adds and subtracts: `rows · n · (log₂ p + m)` (butterflies, then the core). At
/// decode, also each rotation with the INT8 activation quantization of a quantized layer's
/// input: in levels (a copy, [`Rotate`]'s dispatches, [`Quantize`]) and in one dispatch
/// ([`RotateQuantize`], the same bits).
async fn rotations(gpu: &Gpu) -> Result<Vec<KernelReport>> {
    let mut reports = Vec::new();
    let act = ActivationQuant::new(Bits::Int8, 1.0)
        .map_err(|e| RuntimeError::UnsupportedModel(format!("bench activation quantization: {e}")))?;
    for (rows, n) in [(1024, 768), (1024, 3072), (1, 576), (1, 1536)] {
        let case = RotationCase::new(gpu, rows, n, 7).await?;
        let RotationCase { ref table, ref x, ref data, ref out, ref q, ref scales, .. } = case;
        let (_, m, p) = table.factors();
        let adds = (rows * n * (p.trailing_zeros() as usize + m)) as f64;
        let label = format!("[{rows}, {n}], {m}·{p}");
        let report =
            time_macs(gpu, "rotate (adds)", label.clone(), adds, async |gpu: &Gpu, e: &mut Encoder| {
                Rotate.encode(gpu, e, table, data, out, rows).await
            })
            .await?;
        reports.push(report);
        if rows > RotateQuantize::MAX_TOKENS {
            continue;
        }
        let bytes = (rows * n * 4) as u64;
        let levels = time_macs(
            gpu,
            "rotate + quantize in levels (adds)",
            label.clone(),
            adds,
            async |gpu: &Gpu, e: &mut Encoder| {
                e.copy_buffer_to_buffer(x, 0, data, 0, bytes);
                Rotate.encode(gpu, e, table, data, out, rows).await?;
                Quantize.encode(gpu, e, &act, (out, 0), rows, n, q, scales).await
            },
        )
        .await?;
        reports.push(levels);
        let fused = time_macs(
            gpu,
            "rotate + quantize in one dispatch (adds)",
            label,
            adds,
            async |gpu: &Gpu, e: &mut Encoder| case.rotate_quantize(gpu, e, &act).await,
        )
        .await?;
        reports.push(fused);
    }
    Ok(reports)
}

/// `rows` rows of `n` values (from `seed`) with the buffers an online rotation of `n` (Kronecker,
/// with signs, `n = m·p`) and the INT8 quantization of its output take.
struct RotationCase {
    rows: usize,
    table: RotationTable,
    x: DeviceBuffer,
    data: DeviceBuffer,
    out: DeviceBuffer,
    words: usize,
    q: DeviceBuffer,
    scales: DeviceBuffer,
}

impl RotationCase {
    async fn new(gpu: &Gpu, rows: usize, n: usize, seed: u64) -> Result<Self> {
        let rotation = Rotation::new(n, Construction::Kronecker, Some(1))
            .map_err(|e| RuntimeError::UnsupportedModel(format!("bench rotation of {n}: {e}")))?;
        let words = activation_words(n);
        let row_bytes = (rows * n * 4) as u64;
        Ok(Self {
            rows,
            table: RotationTable::new(gpu, &rotation).await?,
            x: values_buffer(gpu, rows * n, seed).await?,
            data: gpu.zeroed_buffer("rotating", row_bytes).await?,
            out: gpu.zeroed_buffer("rotated", row_bytes).await?,
            words,
            q: gpu.zeroed_buffer("activation integers", (rows * words * 4) as u64).await?,
            scales: gpu.zeroed_buffer("activation scales", (rows * 4) as u64).await?,
        })
    }

    /// The rows rotated and quantized in one dispatch ([`RotateQuantize`]), as a decode step does.
    async fn rotate_quantize(&self, gpu: &Gpu, e: &mut Encoder, act: &ActivationQuant) -> Result<()> {
        let (x, buffers) = ((&*self.x, 0), (&*self.data, &*self.out));
        RotateQuantize
            .encode(
                gpu,
                e,
                &self.table,
                act,
                x,
                None,
                self.rows,
                buffers,
                (&self.q, self.words),
                &self.scales,
            )
            .await
    }
}

/// Attention at the 256M model's shapes, each variant that suits it: the vision tower's
/// bidirectional attention over one 512-px tile (1024 patches, 12 heads of 64), and one decode
/// step of the decoder (9 query heads sharing 3 key/value heads of 64) over 1024 cached keys,
/// with per-head values and with the demo recipe's shared INT8 latent. On adapters whose scores
/// variant reads its operands from textures, the vision shape's also from storage, as other
/// adapters read them.
async fn attention(gpu: &Gpu) -> Result<Vec<KernelReport>> {
    let vision = AttentionShape::bidirectional(1, 1024, 12, 64);
    let decode = AttentionShape::causal(1, 9, 3, 64, 1023, 1024);
    let mut reports =
        per_head_attention(gpu, vision, &[AttentionVariant::QueryTiled, AttentionVariant::Scores], "")
            .await?;
    if gpu.caps.weight_textures {
        let storage = Gpu::new(&DeviceOptions { weight_textures: Some(false), ..Default::default() }).await?;
        let suffix = ", operands in storage";
        reports.extend(per_head_attention(&storage, vision, &[AttentionVariant::Scores], suffix).await?);
    }
    let decoding = [AttentionVariant::SplitKeys, AttentionVariant::PerQuery];
    reports.extend(per_head_attention(gpu, decode, &decoding, "").await?);
    reports.extend(latent_decode_attention(gpu, decode).await?);
    Ok(reports)
}

/// `variants` over per-head values of `shape`, each labelled with `suffix`.
async fn per_head_attention(
    gpu: &Gpu,
    shape: AttentionShape,
    variants: &[AttentionVariant],
    suffix: &str,
) -> Result<Vec<KernelReport>> {
    let q_len = shape.queries * shape.heads * shape.head_dim;
    let kv_len = shape.kv_capacity * shape.kv_heads * shape.head_dim;
    let q = values_buffer(gpu, q_len, 4).await?;
    let k = values_buffer(gpu, kv_len, 5).await?;
    let v = values_buffer(gpu, kv_len, 6).await?;
    let out = gpu.zeroed_buffer("out", (q_len * 4) as u64).await?;
    // q·k and p·v: two multiply-accumulates per (query, key, head, dim).
    let macs = 2.0 * (shape.queries * shape.kv_len * shape.heads * shape.head_dim) as f64;
    let shape_label = format!(
        "{} queries × {} keys × {} heads × {}",
        shape.queries, shape.kv_len, shape.heads, shape.head_dim
    );
    let mut reports = Vec::new();
    for &variant in variants {
        let kernel = Attention { head_dim: shape.head_dim, variant, values: ValueKind::PerHead, rope: false };
        let label = format!("attention {variant:?}{suffix}");
        let report = time_macs(gpu, &label, shape_label.clone(), macs, async |gpu: &Gpu, e: &mut Encoder| {
            kernel.encode(gpu, e, shape, &q, &k, &v, &out).await
        })
        .await?;
        reports.push(report);
    }
    Ok(reports)
}

/// INT8 latent values per cached token of the demo recipe's decoder (laser, K/V latent at
/// 47.4 % of dense f16 K/V bytes: ~365 values, 92 words, plus one f32 scale).
const DEMO_LATENT_WORDS: usize = 92;

/// The same decode step over the demo recipe's shared INT8 latent instead of per-head values
/// (the absorbed form: every query head sums whole latent rows, `shaders/attention.wgsl`), by
/// the variants a CPU adapter could run it with, with the queries and the keys rebuilt from the
/// latent rotated on load as the model runs it.
async fn latent_decode_attention(gpu: &Gpu, shape: AttentionShape) -> Result<Vec<KernelReport>> {
    let values = ValueKind::LatentI8 { words: DEMO_LATENT_WORDS };
    let width = values.out_dim(shape.head_dim);
    let q = values_buffer(gpu, shape.queries * shape.heads * shape.head_dim, 4).await?;
    let k = values_buffer(gpu, shape.kv_capacity * shape.kv_heads * shape.head_dim, 5).await?;
    let words = gpu.zeroed_buffer("latent words", (shape.kv_capacity * DEMO_LATENT_WORDS * 4) as u64).await?;
    let scales = values_buffer(gpu, shape.kv_capacity, 6).await?;
    let out = gpu.zeroed_buffer("out", (shape.queries * shape.heads * width * 4) as u64).await?;
    let latent = Values::LatentI8 { words: &words, scales: &scales, words_per_row: DEMO_LATENT_WORDS };
    let max_positions = shape.kv_capacity;
    let table = rope_table(100000.0, shape.head_dim, max_positions);
    let table = gpu.storage_buffer("rope table", bytemuck::cast_slice(&table)).await?;
    let table = RopeTable { table: &table, max_positions };
    // q·k over the head dimension, p·latent over the latent's width.
    let macs = (shape.queries * shape.kv_len * shape.heads * (shape.head_dim + width)) as f64;
    let shape_label = format!(
        "{} queries × {} keys × {} heads × {} (INT8 latent, {width})",
        shape.queries, shape.kv_len, shape.heads, shape.head_dim
    );
    let mut reports = Vec::new();
    for variant in [AttentionVariant::PerQuery, AttentionVariant::Scores] {
        let kernel = Attention { head_dim: shape.head_dim, variant, values, rope: true };
        let label = format!("attention {variant:?} INT8 latent, RoPE on load");
        let report = time_macs(gpu, &label, shape_label.clone(), macs, async |gpu: &Gpu, e: &mut Encoder| {
            kernel.encode_rotating(gpu, e, shape, &q, &k, table, &latent, &out).await
        })
        .await?;
        reports.push(report);
    }
    Ok(reports)
}

/// Random-free weights of `shape` in a packed `encoding` with one f32 scale per row.
async fn quantized_weights(gpu: &Gpu, shape: MatmulShape, encoding: Encoding) -> Result<QuantWeightsGpu> {
    let bytes = vec![0x35u8; encoding.byte_len(&[shape.n, shape.k])];
    let scales = Tensor::from_f32(gpu, "qs", vec![shape.n], &vec![1e-3; shape.n]).await?;
    QuantWeightsGpu::upload(gpu, "qw", vec![shape.n, shape.k], encoding, &bytes, scales, None).await
}

/// The quantized activations of `shape`'s `m` rows as the integer product reads them: zero
/// integers (their values do not change the work), scales, and the words per row.
async fn quantized_activations(gpu: &Gpu, shape: MatmulShape) -> Result<(DeviceBuffer, DeviceBuffer, usize)> {
    let stride = activation_words(shape.k);
    let words = gpu.zeroed_buffer("qa", (shape.m * stride * 4) as u64).await?;
    let scales = values_buffer(gpu, shape.m, 3).await?;
    Ok((words, scales, stride))
}

/// `len` values in [-1, 1) from a linear congruential sequence.
async fn values_buffer(gpu: &Gpu, len: usize, seed: u64) -> Result<DeviceBuffer> {
    gpu.storage_buffer("bench values", bytemuck::cast_slice(&values(seed, len.max(1)))).await
}

async fn time<F>(gpu: &Gpu, kernel: &str, shape: MatmulShape, record: F) -> Result<KernelReport>
where
    F: AsyncFnMut(&Gpu, &mut Encoder) -> Result<()>,
{
    let MatmulShape { m, n, k } = shape;
    time_macs(gpu, kernel, dims(shape), (m * n * k) as f64, record).await
}

/// How a product's shape is printed: `[m, k] · [n, k]ᵀ`.
fn dims(MatmulShape { m, n, k }: MatmulShape) -> String {
    format!("[{m}, {k}] · [{n}, {k}]ᵀ")
}

async fn time_macs<F>(
    gpu: &Gpu,
    kernel: &str,
    shape: String,
    macs: f64,
    mut record: F,
) -> Result<KernelReport>
where
    F: AsyncFnMut(&Gpu, &mut Encoder) -> Result<()>,
{
    // Short kernels are recorded several times into the command buffer, so the submission's
    // round trip does not dominate their time.
    let copies = (COPIES_UP_TO_MACS / macs).ceil().clamp(1.0, MAX_COPIES as f64) as usize;
    let mut best = f64::INFINITY;
    for run in 0..=REPEATS {
        let mut encoder = gpu.encoder();
        for _ in 0..copies {
            record(gpu, &mut encoder).await?;
        }
        let start = now_ms();
        gpu.submit(encoder);
        gpu.finish().await?;
        if run > 0 {
            best = best.min((now_ms() - start) / copies as f64);
        }
    }
    Ok(KernelReport {
        kernel: kernel.to_string(),
        shape,
        macs,
        best_ms: best,
        gmacs: macs / best.max(1e-6) / 1e6,
    })
}
