//! The kernels of the shared-latent KV cache against f64 references: attention whose values are
//! a latent shared by all heads (f32 rows, and the contract's INT8 rows with a scale each) giving
//! the softmax-weighted latent sums, also with queries and keys rotated by RoPE as the attention
//! reads them (keys rebuilt from the latent); the absorbed `v_up` applied to those sums (float and
//! packed INT8/INT4 weights, per channel and grouped, with and without bias); and the float
//! latent cache's bf16 rows against `half`'s rounding, bit for bit. Natively and in the browser.

mod common;

use common::{assert_close, assert_exact, encoder, submit, upload, upload_u32, values, zeros};
use pocketvlm_format::Encoding;
use pocketvlm_format::quant::pack::pack;
use pocketvlm_format::quant::{ActivationQuant, Bits};
use pocketvlm_runtime::kernels::attention::{
    Attention, AttentionShape, AttentionVariant, RopeTable, ValueKind, Values,
};
use pocketvlm_runtime::kernels::bf16_rows::Bf16Rows;
use pocketvlm_runtime::kernels::latent::{LatentUp, LatentUpShape, UpWeights};
use pocketvlm_runtime::kernels::quant::{
    PAD_FROM_WORDS, QMatmul, QuantWeightsGpu, Quantize, QuantizedRows, activation_words, rows_words,
};
use pocketvlm_runtime::kernels::rope::{rope_reference, rope_table};
use pocketvlm_runtime::tensor::Tensor;
use pocketvlm_runtime::{DeviceOptions, Gpu};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// Relative accuracy asked of both kernels, against the scale of each output
/// (`Σ_j p_j·|latent_j|` for the sums, `Σ_j |w_j·ĉ_j|` for the projection): f32 chains of a few
/// hundred terms plus WGSL's `exp` (3 + 2|x| ULP) stay well within it.
const TARGET: f64 = 2e-5;

/// Softmax-weighted latent sums `[queries, heads, vd]` in f64 and their scales.
fn latent_sums(
    q: &[f32],
    k: &[f32],
    latent: &[f64],
    shape: AttentionShape,
    rank: usize,
    vd: usize,
) -> (Vec<f32>, Vec<f64>) {
    let AttentionShape { queries, heads, kv_heads, head_dim: hd, .. } = shape;
    let scale = (hd as f64).powf(-0.5);
    let mut out = vec![0f32; queries * heads * vd];
    let mut mag = vec![0f64; queries * heads * vd];
    for i in 0..queries {
        let n = shape.visible_keys(i);
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            let qrow = &q[(i * heads + h) * hd..][..hd];
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    let kr = &k[(j * kv_heads + g) * hd..][..hd];
                    scale * qrow.iter().zip(kr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>()
                })
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let total: f64 = w.iter().sum();
            for e in 0..rank {
                let o = (i * heads + h) * vd + e;
                out[o] = ((0..n).map(|j| w[j] * latent[j * rank + e]).sum::<f64>() / total) as f32;
                mag[o] = (0..n).map(|j| w[j] * latent[j * rank + e].abs()).sum::<f64>() / total;
            }
        }
    }
    (out, mag)
}

/// With `rope`, the queries and keys are uploaded before RoPE and the kernel rotates them as it
/// reads them (query i at position q_offset + i, key j at j: a latent cache's keys).
async fn latent_attention_case(
    gpu: &Gpu,
    shape: AttentionShape,
    rank: usize,
    (int8, rope): (bool, bool),
    seed: u64,
) {
    let AttentionShape { queries, heads, kv_heads, head_dim: hd, kv_len, q_offset, .. } = shape;
    let q: Vec<f32> = values(seed, queries * heads * hd).iter().map(|x| x * 2.0).collect();
    let k = values(seed + 1, kv_len * kv_heads * hd);
    let raw = values(seed + 2, kv_len * rank);
    let kb = upload(gpu, &k).await;
    let qb = upload(gpu, &q).await;
    let table = if rope {
        let table = rope_table(100000.0, hd, kv_len);
        Some((upload(gpu, &table).await, table))
    } else {
        None
    };
    // the scores' queries and keys: the reference's rotation of what the kernel reads
    let (q, k) = match &table {
        Some((_, t)) => (
            rope_reference(&q, t, queries, heads, hd, q_offset),
            rope_reference(&k, t, kv_len, kv_heads, hd, 0),
        ),
        None => (q, k),
    };
    let (kind, latent, out) = if int8 {
        // The contract's quantization of each latent row, packed four i8 per word.
        let act = ActivationQuant::new(Bits::Int8, 1.0).unwrap();
        let words = activation_words(rank);
        let mut packed = vec![0u32; kv_len * words];
        let mut scales = vec![0f32; kv_len];
        let mut latent = vec![0f64; kv_len * rank];
        let mut ints = vec![0i8; rank];
        for j in 0..kv_len {
            scales[j] = act.quantize(&raw[j * rank..][..rank], &mut ints);
            for (e, &v) in ints.iter().enumerate() {
                packed[j * words + e / 4] |= u32::from(v as u8) << (8 * (e % 4));
                latent[j * rank + e] = f64::from(f32::from(v) * scales[j]);
            }
        }
        let kind = ValueKind::LatentI8 { words };
        (kind, latent, (upload_u32(gpu, &packed).await, Some(upload(gpu, &scales).await)))
    } else {
        let latent = raw.iter().map(|&x| f64::from(x)).collect();
        (ValueKind::LatentF32 { width: rank }, latent, (upload(gpu, &raw).await, None))
    };
    let vd = kind.out_dim(hd);
    let (want, mag) = latent_sums(&q, &k, &latent, shape, rank, vd);
    for variant in AttentionVariant::ALL {
        let values = match (&out.1, kind) {
            (Some(scales), ValueKind::LatentI8 { words }) => {
                Values::LatentI8 { words: &out.0, scales, words_per_row: words }
            }
            _ => Values::LatentF32 { rows: &out.0, width: rank },
        };
        let sums = zeros(gpu, queries * heads * vd).await;
        let mut enc = encoder(gpu);
        let kernel = Attention { head_dim: hd, variant, values: kind, rope };
        match &table {
            Some((table, _)) => {
                let table = RopeTable { table, max_positions: kv_len };
                kernel.encode_rotating(gpu, &mut enc, shape, &qb, &kb, table, &values, &sums).await
            }
            None => kernel.encode_values(gpu, &mut enc, shape, &qb, &kb, &values, &sums).await,
        }
        .unwrap();
        submit(gpu, enc);
        let got = gpu.read_f32(&sums, queries * heads * vd).await.unwrap();
        let rope = if rope { " (RoPE on load)" } else { "" };
        let what = format!("latent attention {variant:?}{rope} {kind:?} {shape:?}");
        let worst = assert_close(&what, &got, &want, |i| (TARGET * mag[i]) as f32 + 1e-30);
        eprintln!("{what}: worst error {worst:.3} of tolerance");
    }
}

/// `v_up` `[kv_heads·hd, rank]` as float f32 / 16-bit or packed integers with scales (with
/// `stacked`, uploaded after 128 other rows and read as its view of them,
/// `QuantWeightsGpu::stack`).
#[derive(Clone, Copy)]
enum UpCase {
    Float(Encoding),
    Quant { bits: Bits, group: Option<usize>, f16_scales: bool, stacked: bool },
}

/// [`latent_up_heads_case`] with two, three and four query heads per key/value head (the
/// quantized kernel's invocations take that many heads at once, `head_set`).
async fn latent_up_case(gpu: &Gpu, case: UpCase, rank: usize, bias: bool, seed: u64) {
    for (heads, kv_heads) in [(6, 3), (9, 3), (8, 2)] {
        latent_up_heads_case(gpu, case, rank, bias, seed, (heads, kv_heads)).await;
    }
}

async fn latent_up_heads_case(
    gpu: &Gpu,
    case: UpCase,
    rank: usize,
    bias: bool,
    seed: u64,
    (heads, kv_heads): (usize, usize),
) {
    // with 3 key/value heads 48 rows: 12 quads, one whole tile of the quantized layout and a part
    // of the next
    let (tokens, hd) = (3, 16);
    let rows = kv_heads * hd;
    let vd = rank.next_multiple_of(8) + 4;
    let chat = values(seed, tokens * heads * vd);
    let b = bias.then(|| values(seed + 1, rows));
    // The weights as the kernel sees them (f64), and their upload.
    let (dense, weight, quant): (Vec<f64>, Option<Tensor>, Option<QuantWeightsGpu>) = match case {
        UpCase::Float(encoding) => {
            let w = values(seed + 2, rows * rank);
            let (bytes, dense): (Vec<u8>, Vec<f64>) = match encoding {
                Encoding::F16 => {
                    let h: Vec<half::f16> = w.iter().map(|&x| half::f16::from_f32(x)).collect();
                    (h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f64()).collect())
                }
                Encoding::BF16 => {
                    let h: Vec<half::bf16> = w.iter().map(|&x| half::bf16::from_f32(x)).collect();
                    (h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f64()).collect())
                }
                _ => (bytemuck::cast_slice(&w).to_vec(), w.iter().map(|&x| f64::from(x)).collect()),
            };
            let t = Tensor::upload(gpu, "v_up", vec![rows, rank], encoding, &bytes).await.unwrap();
            (dense, Some(t), None)
        }
        UpCase::Quant { bits, group, f16_scales, stacked } => {
            let before = if stacked { 128 } else { 0 };
            let qmax = bits.qmax() as f32;
            let all_ints: Vec<i8> =
                values(seed + 2, (before + rows) * rank).iter().map(|v| (v * qmax).round() as i8).collect();
            let ints = &all_ints[before * rank..];
            let size = group.unwrap_or(rank);
            let groups = rank / size;
            let mut all_scales: Vec<f32> =
                values(seed + 3, (before + rows) * groups).iter().map(|v| v.abs() * 0.02 + 1e-3).collect();
            if f16_scales {
                all_scales.iter_mut().for_each(|s| *s = half::f16::from_f32(*s).to_f32());
            }
            let scales = &all_scales[before * groups..];
            let dense = (0..rows * rank)
                .map(|i| f64::from(ints[i]) * f64::from(scales[(i / rank) * groups + (i % rank) / size]))
                .collect();
            let encoding = if bits == Bits::Int4 { Encoding::I4 } else { Encoding::I8 };
            let packed = pack(bits, &all_ints, rank).unwrap();
            let all = before + rows;
            let shape = if group.is_some() { vec![all, groups] } else { vec![all] };
            let s = if f16_scales {
                let bytes: Vec<u8> =
                    all_scales.iter().flat_map(|s| half::f16::from_f32(*s).to_le_bytes()).collect();
                Tensor::upload(gpu, "s", shape, Encoding::F16, &bytes).await.unwrap()
            } else {
                Tensor::from_f32(gpu, "s", shape, &all_scales).await.unwrap()
            };
            let q = QuantWeightsGpu::upload(gpu, "v_up", vec![all, rank], encoding, &packed, s, group).await;
            let q = q.unwrap();
            let q = if stacked { q.stack(&[before, rows]).unwrap().pop().unwrap() } else { q };
            (dense, None, Some(q))
        }
    };
    let mut want = vec![0f32; tokens * heads * hd];
    let mut mag = vec![0f64; tokens * heads * hd];
    for t in 0..tokens {
        for h in 0..heads {
            let g = h / (heads / kv_heads);
            for o in 0..hd {
                let row = g * hd + o;
                let c = &chat[(t * heads + h) * vd..][..rank];
                let terms = dense[row * rank..][..rank].iter().zip(c).map(|(&w, &x)| w * f64::from(x));
                let (sum, abs) = terms.fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
                let bias = b.as_ref().map_or(0.0, |b| f64::from(b[row]));
                want[(t * heads + h) * hd + o] = (sum + bias) as f32;
                mag[(t * heads + h) * hd + o] = abs + bias.abs();
            }
        }
    }
    let weights = match (&weight, &quant) {
        (Some(t), _) => UpWeights::Float(t),
        (_, Some(q)) => UpWeights::Quant(q),
        _ => unreachable!(),
    };
    let bias_tensor = match &b {
        Some(b) => Some(Tensor::from_f32(gpu, "b", vec![rows], b).await.unwrap()),
        None => None,
    };
    let chat_buffer = upload(gpu, &chat).await;
    // All tokens, then the first alone (a decode step).
    for tokens in [tokens, 1] {
        let n = tokens * heads * hd;
        let out = zeros(gpu, n).await;
        let shape = LatentUpShape { tokens, heads, kv_heads, head_dim: hd, vd };
        let mut enc = encoder(gpu);
        LatentUp::for_weights(&weights, bias)
            .encode(gpu, &mut enc, shape, &chat_buffer, &weights, bias_tensor.as_ref(), &out)
            .await
            .unwrap();
        submit(gpu, enc);
        let got = gpu.read_f32(&out, n).await.unwrap();
        let what =
            format!("absorbed v_up rank {rank} bias {bias}, {heads}/{kv_heads} heads, {tokens} token(s)");
        assert_close(&what, &got, &want[..n], |i| (TARGET * mag[i]) as f32 + 1e-30);
    }
}

/// The latent cache's rows are `4·⌈r/16⌉` words (not [`activation_words`]`(r)`), and rows as narrow
/// as `⌈r/4⌉` words are allowed: quantizing with those strides and multiplying by INT8 and INT4
/// weights gives the same bits as the unstrided layer, with four-word loads where the stride and
/// the weight's columns (padded to whole groups of four words from [`PAD_FROM_WORDS`] on) allow
/// them ([`QMatmul::for_rows`]).
async fn strided_rows_case(gpu: &Gpu, bits: Bits, rank: usize, seed: u64) {
    let (tokens, out) = (5, 12);
    let act = ActivationQuant::new(Bits::Int8, 1.0).unwrap();
    let x = upload(gpu, &values(seed, tokens * rank)).await;
    let qmax = bits.qmax() as f32;
    let ints: Vec<i8> = values(seed + 1, out * rank).iter().map(|v| (v * qmax).round() as i8).collect();
    let encoding = if bits == Bits::Int4 { Encoding::I4 } else { Encoding::I8 };
    let packed = pack(bits, &ints, rank).unwrap();
    let s = Tensor::from_f32(gpu, "s", vec![out], &values(seed + 2, out)).await.unwrap();
    let weights =
        QuantWeightsGpu::upload(gpu, "w", vec![out, rank], encoding, &packed, s, None).await.unwrap();
    let stored = bits.row_words(rank);
    let ww = if stored >= PAD_FROM_WORDS { stored.next_multiple_of(4) } else { stored };
    assert_eq!(weights.words_per_column(), ww, "rank {rank}: {stored} words per column padded");
    let mut outputs = Vec::new();
    for stride in [activation_words(rank), 4 * rank.div_ceil(16), rank.div_ceil(4)] {
        let words = zeros(gpu, rows_words(tokens, stride, rank)).await;
        let scales = zeros(gpu, tokens).await;
        let y = zeros(gpu, tokens * out).await;
        let mut enc = encoder(gpu);
        Quantize
            .encode_strided(gpu, &mut enc, &act, (&x, 0), tokens, rank, (&words, stride), &scales)
            .await
            .unwrap();
        let a = QuantizedRows::new(&words, &scales, tokens, stride);
        let kernel = QMatmul::for_rows(gpu, &weights, &a, false);
        let narrow = gpu.caps.one_word_int4_blocks && bits == Bits::Int4;
        let wide = weights.words_per_column() % 4 == 0 && stride % 4 == 0 && !narrow;
        assert_eq!(kernel.vec4, wide, "rank {rank}, stride {stride}: four-word loads where they fit");
        kernel.encode(gpu, &mut enc, &a, &weights, None, (&y, 0)).await.unwrap();
        submit(gpu, enc);
        outputs.push(gpu.read_f32(&y, tokens * out).await.unwrap());
    }
    for (stride, got) in [4 * rank.div_ceil(16), rank.div_ceil(4)].iter().zip(&outputs[1..]) {
        let what = format!("latent rows of {stride} words, rank {rank}, {bits:?} weights");
        assert_exact(&what, got, &outputs[0]);
    }
}

/// [`Bf16Rows`]: rows packed at an offset into a larger cache and widened back give exactly
/// `half::bf16::from_f32(x).to_f32()` for every value — ties to even both ways, a carry into the
/// exponent, rounding up to ∞, ∞, NaN, signed zeros, subnormals — with an odd width (the last
/// word's high half zero) and the cache's earlier rows untouched.
async fn bf16_rows_case(gpu: &Gpu, width: usize, seed: u64) {
    let (rows, dst_row, capacity) = (7, 3, 12);
    let mut x = values(seed, rows * width);
    let specials = [
        0x3f80_8000u32, // tie, even: rounds down
        0x3f81_8000,    // tie, odd: rounds up
        0x3f80_8001,    // above the tie
        0x3fff_ffff,    // carries into the exponent
        0x7f7f_ffff,    // f32::MAX rounds to ∞
        0x7f80_0000,    // ∞
        0xff80_0000,    // −∞
        0x7fc0_0001,    // NaN with payload
        0x8000_0000,    // −0
        0x0000_8001,    // subnormal
    ];
    for (v, bits) in x.iter_mut().step_by(3).zip(specials) {
        *v = f32::from_bits(bits);
    }
    let half = Bf16Rows { width };
    let before: Vec<u32> = (0..capacity * half.words()).map(|i| 0x1234_0000 + i as u32).collect();
    let src = upload(gpu, &x).await;
    let packed = upload_u32(gpu, &before).await;
    let widened = zeros(gpu, (dst_row + rows) * width).await;
    let mut enc = encoder(gpu);
    half.pack(gpu, &mut enc, rows, &src, &packed, dst_row).await.unwrap();
    half.widen(gpu, &mut enc, dst_row + rows, &packed, &widened).await.unwrap();
    submit(gpu, enc);
    let got: Vec<u32> =
        gpu.read_f32(&widened, (dst_row + rows) * width).await.unwrap().iter().map(|v| v.to_bits()).collect();
    let widen = |w: u32, c: usize| if c.is_multiple_of(2) { w << 16 } else { w & 0xffff_0000 };
    for t in 0..dst_row + rows {
        for c in 0..width {
            let want = if t < dst_row {
                widen(before[t * half.words() + c / 2], c)
            } else {
                half::bf16::from_f32(x[(t - dst_row) * width + c]).to_f32().to_bits()
            };
            assert_eq!(got[t * width + c], want, "bf16 rows width {width}: row {t} column {c}");
        }
    }
    let words = gpu.read_f32(&packed, capacity * half.words()).await.unwrap();
    let last = (dst_row + rows) * half.words();
    assert!(
        words[last..].iter().zip(&before[last..]).all(|(w, b)| w.to_bits() == *b),
        "rows past the packed ones"
    );
    if width % 2 == 1 {
        let high = (0..rows).map(|t| words[(dst_row + t + 1) * half.words() - 1].to_bits() >> 16);
        assert!(high.clone().all(|h| h == 0), "the odd column's high halves");
    }
}

/// The attention over a latent cache's values against the reference: f32 and INT8 latents, the
/// rebuilt keys before RoPE and rotated on load, prefill and decode.
async fn check_latent_attention(gpu: &Gpu) {
    for int8 in [false, true] {
        // Prefill after 5 cached tokens, GQA 6/2, odd rank; decode over 300 keys; 600 keys.
        latent_attention_case(gpu, AttentionShape::causal(37, 6, 2, 16, 5, 42), 30, (int8, false), 1).await;
        latent_attention_case(gpu, AttentionShape::causal(1, 9, 3, 64, 299, 300), 100, (int8, false), 2)
            .await;
        latent_attention_case(gpu, AttentionShape::causal(40, 3, 1, 16, 560, 600), 24, (int8, false), 3)
            .await;
        // Rebuilt keys rotated on load, decode over 300 keys (per-query chunks merged).
        latent_attention_case(gpu, AttentionShape::causal(1, 9, 3, 64, 299, 300), 100, (int8, true), 5).await;
    }
    // The widest latent the format lets a 64-wide GQA head cache (rank < 2·d_kv = 384), before
    // and after RoPE on load; and a prefill rotating on load.
    latent_attention_case(gpu, AttentionShape::causal(2, 9, 3, 64, 20, 22), 383, (true, false), 4).await;
    latent_attention_case(gpu, AttentionShape::causal(2, 9, 3, 64, 20, 22), 383, (true, true), 6).await;
    latent_attention_case(gpu, AttentionShape::causal(37, 6, 2, 16, 5, 42), 30, (true, true), 7).await;
}

async fn check_all(gpu: &Gpu) {
    bf16_rows_case(gpu, 30, 30).await;
    bf16_rows_case(gpu, 33, 31).await;
    let ranks = [(Bits::Int4, 28), (Bits::Int4, 30), (Bits::Int4, 36), (Bits::Int8, 30), (Bits::Int8, 37)];
    // and ups whose columns are padded to whole groups of four words (83 and 42 words)
    for (bits, rank) in ranks.into_iter().chain([(Bits::Int8, 330), (Bits::Int4, 330)]) {
        strided_rows_case(gpu, bits, rank, 20).await;
    }
    check_latent_attention(gpu).await;
    for encoding in [Encoding::F32, Encoding::F16, Encoding::BF16] {
        latent_up_case(gpu, UpCase::Float(encoding), 30, false, 10).await;
    }
    latent_up_case(gpu, UpCase::Float(Encoding::F32), 31, true, 11).await;
    let quant = |bits, group, f16_scales| UpCase::Quant { bits, group, f16_scales, stacked: false };
    latent_up_case(gpu, quant(Bits::Int8, None, false), 24, false, 12).await;
    latent_up_case(gpu, quant(Bits::Int8, None, true), 40, true, 13).await;
    latent_up_case(gpu, quant(Bits::Int4, None, false), 48, true, 14).await;
    latent_up_case(gpu, quant(Bits::Int4, Some(64), true), 128, false, 15).await;
    // Ranks that end inside a weight word (the demo's first layer has rank 155).
    latent_up_case(gpu, quant(Bits::Int8, None, false), 155, true, 16).await;
    latent_up_case(gpu, quant(Bits::Int4, None, true), 37, false, 17).await;
    // v_up stacked after other rows in one weight: its view's columns and scales
    let stacked = |bits, group, f16_scales| UpCase::Quant { bits, group, f16_scales, stacked: true };
    latent_up_case(gpu, stacked(Bits::Int8, None, true), 40, true, 18).await;
    latent_up_case(gpu, stacked(Bits::Int4, Some(64), false), 128, false, 19).await;
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn latent_cache_kernels_match_references() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_all(&gpu));
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn latent_cache_kernels_match_references_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_all(&gpu).await;
}
