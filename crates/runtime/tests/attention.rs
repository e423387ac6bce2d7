//! Attention (every variant) against an f64 reference: bidirectional multi-tile vision
//! attention, causal grouped-query prefill with an offset, decode against a larger KV cache,
//! many keys (several passes), head dims 32/64/72, and queries and keys rotated by RoPE as they
//! are read (head dims 4/36/64/72); the scores variant reading its operands from textures
//! bit for bit as from storage. Runs natively and in the browser.

mod common;

use common::{EPS, assert_close, encoder, submit, upload, values, zeros};
use pocketvlm_runtime::kernels::attention::{
    Attention, AttentionShape, AttentionVariant, GROUPED_FROM_KEYS, RopeTable, SCORES_MAX_KEYS,
    SPLIT_KEYS_BELOW, ValueKind, Values, attention_reference,
};
use pocketvlm_runtime::kernels::rope::{rope_reference, rope_table};
use pocketvlm_runtime::{DeviceOptions, Gpu, RuntimeError};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// The accuracy target: 1e-5 of the output's scale `A = Σ_j p_j·|v_j|` (an output that cancels to
/// near zero cannot be asked for relative accuracy beyond that).
const TARGET: f64 = 1e-5;

/// Tolerance per output element: the smaller of [`TARGET`]·A and the first-order worst-case bound
/// from the kernel's arithmetic (both variants):
/// * each score `s_j` is a length-`hd` fma chain times the scale: `|δs_j| ≤ (hd + 2)·ε·S_j` with
///   `S_j = scale·Σ|q·k_j|`, moving the output by ≤ 2·max|δs|·A (A = Σ_j p_j |v_j|);
/// * `exp(x)` is good to (3 + 2|x|) ULP (WGSL), for the numerator and the denominator;
/// * the numerator and denominator are blocked sums (≤ 64 terms per block, one block per 16 or
///   256 keys, then ≤ 4 lanes) plus a rescale per block, and the final division.
///
/// With RoPE on load, `q` and `k` are the reference's rotations and `rotated` bounds what each
/// element was rotated from, `|x_i·cos| + |x_j·sin|` (`rope_rows`): the kernel's rotation
/// errs by ≤ 2 ε times that and the reference's f32 rounding by ½ ε, so each product `q·k` by
/// ≤ 5 ε times the product of the bounds, and `S_j` takes the bounds with `hd + 7` in place of
/// `hd + 2`.
fn tolerance(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    rotated: Option<(&[f32], &[f32])>,
) -> Vec<f32> {
    let AttentionShape { batch, queries, heads, kv_heads, head_dim: hd, kv_capacity, .. } = shape;
    let scale = (hd as f64).powf(-0.5);
    let mut tol = vec![0f32; batch * queries * heads * hd];
    for b in 0..batch {
        for i in 0..queries {
            let n = shape.visible_keys(i);
            let blocked = (64 + n.div_ceil(16) + 8) as f64;
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let qrow = &q[((b * queries + i) * heads + h) * hd..][..hd];
                let krow = |j: usize| ((b * kv_capacity + j) * kv_heads + g) * hd;
                let (qm, km, ulps) = match rotated {
                    Some((qm, km)) => (qm, km, hd + 7),
                    None => (q, k, hd + 2),
                };
                let qmrow = &qm[((b * queries + i) * heads + h) * hd..][..hd];
                let mut scores = Vec::with_capacity(n);
                let mut score_err: f64 = 0.0;
                for j in 0..n {
                    let kr = &k[krow(j)..][..hd];
                    let s: f64 = qrow.iter().zip(kr).map(|(&a, &c)| f64::from(a) * f64::from(c)).sum();
                    let kmr = &km[krow(j)..][..hd];
                    let abs: f64 =
                        qmrow.iter().zip(kmr).map(|(&a, &c)| (f64::from(a) * f64::from(c)).abs()).sum();
                    scores.push(s * scale);
                    score_err = score_err.max(ulps as f64 * f64::from(EPS) * abs * scale);
                }
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = w.iter().sum();
                let eps = f64::from(EPS);
                for d in 0..hd {
                    let vd = |j: usize| f64::from(v[krow(j) + d]).abs();
                    let a: f64 = (0..n).map(|j| w[j] / total * vd(j)).sum();
                    let exp_err: f64 =
                        (0..n).map(|j| w[j] / total * (3.0 + 2.0 * (max - scores[j])) * (vd(j) + a)).sum();
                    let bound = a * (2.0 * score_err + (2.0 * blocked + 8.0) * eps) + eps * exp_err;
                    tol[((b * queries + i) * heads + h) * hd + d] = bound.min(TARGET * a) as f32 + 1e-30;
                }
            }
        }
    }
    tol
}

async fn attention_case(gpu: &Gpu, shape: AttentionShape, q_scale: f32, seed: u64) {
    variants_case(gpu, shape, q_scale, seed, &AttentionVariant::ALL, None).await;
}

/// `x` `[batch, rows, heads, hd]` with row `r` of each batch rotated to position `pos0 + r`
/// (the reference's RoPE, rounded to f32), and each element's bound `|x_i·cos| + |x_j·sin|`.
fn rope_rows(x: &[f32], table: &[f32], batch: usize, heads: usize, hd: usize, pos0: usize) -> [Vec<f32>; 2] {
    let per_batch = x.len() / batch;
    let (rows, half) = (per_batch / (heads * hd), hd / 2);
    let mut rotated = Vec::with_capacity(x.len());
    for xb in x.chunks(per_batch) {
        rotated.extend(rope_reference(xb, table, rows, heads, hd, pos0));
    }
    let bound = (0..x.len())
        .map(|e| {
            let (r, i) = ((e / (heads * hd)) % rows, e % hd);
            let at = (pos0 + r) * hd + i % half;
            let partner = if i < half { x[e + half] } else { x[e - half] };
            (x[e] * table[at]).abs() + (partner * table[at + half]).abs()
        })
        .collect();
    [rotated, bound]
}

/// Every variant of `variants` on `shape` against the reference; with `rope_theta`, the queries
/// and keys are uploaded before RoPE and the kernel rotates them as it reads them.
async fn variants_case(
    gpu: &Gpu,
    shape: AttentionShape,
    q_scale: f32,
    seed: u64,
    variants: &[AttentionVariant],
    rope_theta: Option<f32>,
) {
    let AttentionShape { batch, queries, heads, kv_heads, head_dim, kv_capacity, q_offset, .. } = shape;
    let q: Vec<f32> = values(seed, batch * queries * heads * head_dim).iter().map(|x| x * q_scale).collect();
    let k = values(seed + 1, batch * kv_capacity * kv_heads * head_dim);
    let v = values(seed + 2, batch * kv_capacity * kv_heads * head_dim);
    let (qb, kb, vb) = (upload(gpu, &q).await, upload(gpu, &k).await, upload(gpu, &v).await);
    let max_positions = kv_capacity.max(q_offset + queries) + 3;
    let table = rope_theta.map(|theta| rope_table(theta, head_dim, max_positions));
    let (want, tol) = match &table {
        Some(table) => {
            let [qr, qm] = rope_rows(&q, table, batch, heads, head_dim, q_offset);
            let [kr, km] = rope_rows(&k, table, batch, kv_heads, head_dim, 0);
            let tol = tolerance(&qr, &kr, &v, shape, Some((&qm, &km)));
            (attention_reference(&qr, &kr, &v, shape), tol)
        }
        None => (attention_reference(&q, &k, &v, shape), tolerance(&q, &k, &v, shape, None)),
    };
    let table_buffer = match &table {
        Some(t) => Some(upload(gpu, t).await),
        None => None,
    };
    let table = table_buffer.as_ref().map(|table| RopeTable { table, max_positions });
    for &variant in variants {
        let out = zeros(gpu, q.len()).await;
        let mut enc = encoder(gpu);
        let kernel = Attention { head_dim, variant, values: ValueKind::PerHead, rope: table.is_some() };
        let values = Values::PerHead(&vb);
        let result = match table {
            Some(t) => kernel.encode_rotating(gpu, &mut enc, shape, &qb, &kb, t, &values, &out).await,
            None => kernel.encode_values(gpu, &mut enc, shape, &qb, &kb, &values, &out).await,
        };
        if variant == AttentionVariant::Scores && shape.key_count() > SCORES_MAX_KEYS {
            // Beyond its loop bound the scores variant refuses (for_shape never picks it there).
            assert!(matches!(result, Err(RuntimeError::Shape(_))), "{shape:?}: {result:?}");
            continue;
        }
        result.unwrap();
        submit(gpu, enc);
        let got = gpu.read_f32(&out, q.len()).await.unwrap();
        let rope = if table.is_some() { " (RoPE on load)" } else { "" };
        let what = format!("attention {variant:?}{rope} {shape:?}");
        let worst = assert_close(&what, &got, &want, |i| tol[i]);
        eprintln!("{what}: worst error {worst:.3} of tolerance");
    }
}

async fn check_shapes(gpu: &Gpu) {
    // Vision: 3 tiles of 67 tokens, bidirectional, 3 heads.
    attention_case(gpu, AttentionShape::bidirectional(3, 67, 3, 64), 1.0, 1).await;
    // Sharper softmax.
    attention_case(gpu, AttentionShape::bidirectional(2, 33, 2, 64), 6.0, 2).await;
    // Head dim 72 (SigLIP so400m) and 32.
    attention_case(gpu, AttentionShape::bidirectional(2, 50, 2, 72), 2.0, 3).await;
    attention_case(gpu, AttentionShape::causal(70, 4, 1, 32, 0, 80), 2.0, 4).await;
    // Causal GQA prefill after 5 cached tokens, cache larger than its contents.
    attention_case(gpu, AttentionShape::causal(37, 6, 2, 64, 5, 50), 2.0, 5).await;
    // Decode: one query against 300 cached keys (more than one 256-key block).
    attention_case(gpu, AttentionShape::causal(1, 15, 5, 64, 299, 320), 3.0, 6).await;
    attention_case(gpu, AttentionShape::causal(1, 9, 3, 64, 0, 8), 1.0, 7).await;
    // Many keys (several passes): 40 queries over 1100 keys; causal prefill of 70 tokens after
    // 1000; decode against 5000 keys.
    let mut many = AttentionShape::bidirectional(1, 40, 2, 64);
    many.kv_len = 1100;
    many.kv_capacity = 1100;
    attention_case(gpu, many, 3.0, 8).await;
    attention_case(gpu, AttentionShape::causal(70, 2, 1, 64, 1000, 1100), 2.0, 10).await;
    attention_case(gpu, AttentionShape::causal(1, 2, 1, 64, 4999, 5000), 2.0, 11).await;
    // Decode against 10 000 keys: the per-query variant's chunks reach their loop bound, so it
    // takes more than its usual 16 chunks.
    attention_case(gpu, AttentionShape::causal(1, 2, 1, 64, 9999, 10_000), 2.0, 12).await;
    // Batched causal with an offset.
    let mut batched = AttentionShape::causal(3, 4, 2, 64, 20, 30);
    batched.batch = 2;
    attention_case(gpu, batched, 2.0, 9).await;

    // RoPE on load (the decoder's cached keys, key j at position j): decode over 38 and over
    // 300 keys, causal prefill after an offset, batched bidirectional, head dim 72, and head
    // dims whose halves are not whole vec4s (36, and the tiny fixtures' 4), rotated element by
    // element.
    let rope_shapes = [
        AttentionShape::causal(1, 9, 3, 64, 37, 64),
        AttentionShape::causal(1, 15, 5, 64, 299, 320),
        AttentionShape::causal(37, 6, 2, 64, 5, 50),
        AttentionShape::bidirectional(2, 33, 2, 64),
        AttentionShape::causal(6, 4, 2, 72, 100, 200),
        AttentionShape::causal(1, 6, 3, 36, 40, 48),
        AttentionShape::causal(33, 4, 2, 36, 7, 40),
        AttentionShape::causal(5, 3, 3, 4, 10, 16),
        // eight query heads per key/value head, and over enough keys that the per-query
        // variant takes them four to an invocation (GROUPED_FROM_KEYS; the 300-key decode of 15
        // heads above takes three, the no-RoPE shapes of 2/1 heads over 5000 and 10 000 two)
        AttentionShape::causal(2, 8, 1, 64, 30, 40),
        AttentionShape::causal(2, 8, 1, 64, GROUPED_FROM_KEYS + 40, GROUPED_FROM_KEYS + 42),
    ];
    for (i, shape) in rope_shapes.into_iter().enumerate() {
        variants_case(gpu, shape, 2.0, 20 + i as u64, &AttentionVariant::ALL, Some(100000.0)).await;
    }

    // Decode runs barrier-free on CPU adapters.
    let decode = if gpu.caps.cpu { AttentionVariant::PerQuery } else { AttentionVariant::SplitKeys };
    assert_eq!(Attention::for_shape(gpu, &AttentionShape::causal(1, 15, 5, 64, 9, 20)).variant, decode);
    // Many queries: barrier-free materialised scores on CPU adapters up to their key bound.
    let prefill = AttentionShape::causal(SPLIT_KEYS_BELOW, 15, 5, 64, 0, 64);
    let many = if gpu.caps.cpu { AttentionVariant::Scores } else { AttentionVariant::QueryTiled };
    assert_eq!(Attention::for_shape(gpu, &prefill).variant, many);
    let long = AttentionShape::causal(SPLIT_KEYS_BELOW, 15, 5, 64, SCORES_MAX_KEYS, SCORES_MAX_KEYS + 64);
    assert_eq!(Attention::for_shape(gpu, &long).variant, AttentionVariant::QueryTiled);

    // Bad shapes are typed errors.
    let buf = zeros(gpu, 4096).await;
    let out = zeros(gpu, 4096).await;
    let bad = [
        AttentionShape { kv_heads: 4, ..AttentionShape::causal(2, 6, 2, 64, 0, 4) },
        AttentionShape::causal(2, 6, 2, 64, 3, 4),
        AttentionShape { kv_len: 0, ..AttentionShape::bidirectional(1, 2, 1, 64) },
        AttentionShape::bidirectional(1, 2, 1, 200),
        AttentionShape::bidirectional(1, 2, 1, 30),
        AttentionShape::bidirectional(1, 100, 1, 64),
    ];
    for shape in bad {
        let mut enc = encoder(gpu);
        let kernel = Attention {
            head_dim: shape.head_dim,
            variant: AttentionVariant::QueryTiled,
            values: ValueKind::PerHead,
            rope: false,
        };
        let err = kernel.encode(gpu, &mut enc, shape, &buf, &buf, &buf, &out).await.unwrap_err();
        assert!(matches!(err, RuntimeError::Shape(_)), "{shape:?}: {err}");
    }
    // RoPE on load: a table without a kernel built to rotate and the reverse, and positions past
    // the table are typed errors.
    let shape = AttentionShape::causal(1, 2, 1, 64, 3, 8);
    let table = zeros(gpu, 8 * 64).await;
    let rotating = Attention {
        head_dim: 64,
        variant: AttentionVariant::PerQuery,
        values: ValueKind::PerHead,
        rope: true,
    };
    let plain = Attention { rope: false, ..rotating };
    let values = Values::PerHead(&buf);
    let mut enc = encoder(gpu);
    let fits = RopeTable { table: &table, max_positions: 8 };
    let short = RopeTable { table: &table, max_positions: 3 };
    let errors = [
        plain.encode_rotating(gpu, &mut enc, shape, &buf, &buf, fits, &values, &out).await,
        rotating.encode_values(gpu, &mut enc, shape, &buf, &buf, &values, &out).await,
        rotating.encode_rotating(gpu, &mut enc, shape, &buf, &buf, short, &values, &out).await,
    ];
    for (i, result) in errors.into_iter().enumerate() {
        assert!(matches!(result, Err(RuntimeError::Shape(_))), "RoPE error case {i}: {result:?}");
    }
}

/// With bindings limited to 160 KiB, the scores of 3 tiles × 3 heads × 67 queries (176 KiB in
/// blocks of 8 queries) take two calls of the scores variant's three stages.
async fn check_split_scores() {
    let options = DeviceOptions { max_storage_binding: Some(160 << 10), ..Default::default() };
    let gpu = Gpu::new(&options).await.expect("a GPU adapter");
    let shape = AttentionShape::bidirectional(3, 67, 3, 64);
    variants_case(&gpu, shape, 2.0, 13, &[AttentionVariant::Scores], None).await;
}

/// The scores variant's output for `shape` on `gpu`, from the seeded operands: per-head values,
/// or a shared f32 latent `width` wide (batch 1), with or without RoPE on load.
async fn scores_output(
    gpu: &Gpu,
    shape: AttentionShape,
    latent: Option<usize>,
    rope: bool,
    seed: u64,
) -> Vec<u32> {
    let AttentionShape { batch, queries, heads, kv_heads, head_dim, kv_capacity, q_offset, .. } = shape;
    let q: Vec<f32> = values(seed, batch * queries * heads * head_dim).iter().map(|x| x * 2.0).collect();
    let k = values(seed + 1, batch * kv_capacity * kv_heads * head_dim);
    let (values_kind, v) = match latent {
        Some(width) => (ValueKind::LatentF32 { width }, values(seed + 2, kv_capacity * width)),
        None => (ValueKind::PerHead, values(seed + 2, batch * kv_capacity * kv_heads * head_dim)),
    };
    let (qb, kb, vb) = (upload(gpu, &q).await, upload(gpu, &k).await, upload(gpu, &v).await);
    let max_positions = kv_capacity.max(q_offset + queries);
    let table = upload(gpu, &rope_table(100000.0, head_dim, max_positions)).await;
    let out_len = batch * queries * heads * values_kind.out_dim(head_dim);
    let out = zeros(gpu, out_len).await;
    let kernel = Attention { head_dim, variant: AttentionVariant::Scores, values: values_kind, rope };
    let values = match latent {
        Some(width) => Values::LatentF32 { rows: &vb, width },
        None => Values::PerHead(&vb),
    };
    let mut enc = encoder(gpu);
    let result = if rope {
        let table = RopeTable { table: &table, max_positions };
        kernel.encode_rotating(gpu, &mut enc, shape, &qb, &kb, table, &values, &out).await
    } else {
        kernel.encode_values(gpu, &mut enc, shape, &qb, &kb, &values, &out).await
    };
    result.unwrap();
    submit(gpu, enc);
    gpu.read_f32(&out, out_len).await.unwrap().iter().map(|x| x.to_bits()).collect()
}

/// On adapters that prefer textures the scores variant copies its queries, keys and per-head
/// values into textures and reads them there, one batch element at a time; the bits and the
/// arithmetic are storage's, so the output must be identical, bit for bit, to the same kernel
/// reading storage (`DeviceOptions::weight_textures` picks either on any adapter): batched
/// vision tiles (with a 160 KiB binding limit too, where 300 queries take three calls per
/// tile), a causal prefill with
/// RoPE on load over a cache larger than its keys, head dims 36 (rotated element by element)
/// and 72, and a shared latent's values (which stay in storage) beside textured queries and keys.
async fn check_operand_textures() {
    let open = |textures: bool, binding: Option<u64>| {
        let options = DeviceOptions {
            weight_textures: Some(textures),
            max_storage_binding: binding,
            ..Default::default()
        };
        async move { Gpu::new(&options).await.expect("a GPU adapter") }
    };
    let cases = [
        (AttentionShape::bidirectional(3, 67, 3, 64), None, false),
        (AttentionShape::bidirectional(2, 300, 1, 64), None, false),
        (AttentionShape::causal(37, 6, 2, 64, 5, 50), None, true),
        (AttentionShape::causal(33, 4, 2, 36, 7, 40), None, true),
        (AttentionShape::bidirectional(2, 50, 2, 72), None, false),
        (AttentionShape::causal(32, 9, 3, 64, 3, 60), Some(100), true),
    ];
    for binding in [None, Some(160 << 10)] {
        let (storage, textured) = (open(false, binding).await, open(true, binding).await);
        for (i, &(shape, latent, rope)) in cases.iter().enumerate() {
            let want = scores_output(&storage, shape, latent, rope, 40 + i as u64).await;
            let got = scores_output(&textured, shape, latent, rope, 40 + i as u64).await;
            assert!(got == want, "{shape:?} (latent {latent:?}, RoPE {rope}): textures differ from storage");
        }
        let from_textures =
            |gpu: &Gpu| gpu.pipelines.compiled().iter().any(|(_, d)| d.contains_key("OPERAND_TEXTURES"));
        assert!(
            from_textures(&textured) && !from_textures(&storage),
            "the operands' source follows the option"
        );
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn attention_matches_reference() {
    let gpu = pollster::block_on(Gpu::new(&DeviceOptions::default())).expect("a GPU adapter");
    pollster::block_on(check_shapes(&gpu));
    pollster::block_on(check_split_scores());
    pollster::block_on(check_operand_textures());
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen_test::wasm_bindgen_test]
async fn attention_matches_reference_in_browser() {
    let gpu = Gpu::new(&DeviceOptions::default()).await.expect("WebGPU adapter");
    check_shapes(&gpu).await;
    check_split_scores().await;
    check_operand_textures().await;
}
